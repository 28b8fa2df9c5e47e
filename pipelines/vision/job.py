"""The vision job: videos and images -> vision records of 256 VQGAN codes per frame (Apache Beam).

    ReadInputs | Decode | Tokenize | AssembleRecords | WriteRecords      (+ WriteDeadLetters)

Run it as ``lwmkit vision --inputs 'videos/*' --output out/`` or ``python -m
lwmkit.pipelines.vision ...``; Beam's own flags pass through (``--runner``,
``--direct_num_workers=2 --direct_running_mode=multi_processing``, Dataflow/Flink/Spark flags).
Inputs are a glob, a folder or a manifest (:mod:`lwmkit.pipelines.vision.inputs`); outputs and resume
rules are in :mod:`lwmkit.pipelines.vision.output`. A bad input never stops the job: it lands
in ``dead_letters/vision.jsonl``; the job fails (exit 1) only when the share of failed inputs
passes ``--max-failure-ratio``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.entry import job_main
from lwmkit.pipelines.runner_compat import adapt
from lwmkit.pipelines.vision.driver import VisionJobFailed, VisionSummary, execute
from lwmkit.schemas.flags import help_text as flag_help
from lwmkit.schemas.flags import parse_job
from lwmkit.schemas.jobs import BEAM_PASS_THROUGH, VisionJob


def run(argv: Sequence[str] | None = None) -> VisionSummary:
    """Run the job; returns what it did (counted from its outputs).

    Raises ContractError for bad flags or inputs, VisionJobFailed past ``max_failure_ratio``.
    """
    job, beam_args = parse_job(VisionJob, list(argv) if argv is not None else sys.argv[1:], "vision")
    options = adapt(PipelineOptions(beam_args))
    FileSystems.set_options(options)  # bucket credentials/endpoints for the driver's own reads
    return execute(job, options)


def help_text(prog: str = "lwmkit vision") -> str:
    return flag_help(VisionJob, prog, __doc__.split("\n\n")[0], BEAM_PASS_THROUGH)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lwmkit.pipelines.vision``: exit 2 on a contract error, 1 when the job fails."""
    job_main(argv, run, help_text, "vision", (VisionJobFailed,))


if __name__ == "__main__":
    main()
