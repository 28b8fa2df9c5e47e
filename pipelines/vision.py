"""The vision job: videos and images -> vision records of 256 VQGAN codes per frame (Apache Beam).

    ReadInputs | Decode | Tokenize | AssembleRecords | WriteRecords      (+ WriteDeadLetters)

Run it as ``lwmkit vision --inputs 'videos/*' --output out/`` or ``python -m
lwmkit.pipelines.vision ...``; Beam's own flags pass through (``--runner``,
``--direct_num_workers=2 --direct_running_mode=multi_processing``, Dataflow/Flink/Spark flags).
Inputs are a glob, a folder or a manifest (:mod:`lwmkit.pipelines.inputs`); outputs and resume
rules are in :mod:`lwmkit.pipelines.vision_output`. A bad input never stops the job: it lands
in ``dead_letters/vision.jsonl``; the job fails (exit 1) only when the share of failed inputs
passes ``--max_failure_ratio``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.decode import DECODERS, DecodeConfig
from lwmkit.pipelines.options import add_flag
from lwmkit.pipelines.runner_compat import adapt
from lwmkit.pipelines.vision_job import VisionJobConfig
from lwmkit.pipelines.vision_run import VisionJobFailed, VisionSummary, execute
from lwmkit.pipelines.vision_steps import DecodeOptions
from lwmkit.runtime.progress import error
from lwmkit.schemas.errors import ContractError


class VisionOptions(PipelineOptions):
    """Flags of the vision job (``--flag_name`` or ``--flag-name``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_flag(
            parser,
            "--inputs",
            help="Glob, folder, or manifest (.csv/.jsonl/.parquet: uri, caption, start_s, end_s); "
            "several, comma-separated. Captions also come from sidecars (clip.txt / clip.json).",
        )
        add_flag(parser, "--output", help="Output folder (local, gs://, s3://).")
        add_flag(
            parser,
            "--source_name",
            "--source-name",
            dest="source_name",
            default=None,
            help="Source name in every record (default: vision).",
        )
        add_flag(
            parser,
            "--fps",
            type=float,
            default=None,
            help="Frames sampled per second (default 4, LWM's; 0 = every frame).",
        )
        add_flag(
            parser,
            "--max_frames",
            "--max-frames",
            dest="max_frames",
            type=int,
            default=None,
            help="Most frames per clip, chosen uniformly.",
        )
        add_flag(
            parser,
            "--clip_seconds",
            "--clip-seconds",
            dest="clip_seconds",
            type=float,
            default=None,
            help="Split videos into clips of this length.",
        )
        add_flag(
            parser,
            "--frame_size",
            "--frame-size",
            dest="frame_size",
            type=int,
            default=256,
            help="Shorter side after resize (bicubic).",
        )
        add_flag(
            parser,
            "--crop",
            type=int,
            default=256,
            help="Centre crop side (must equal the VQGAN's resolution).",
        )
        add_flag(
            parser,
            "--max_pixels",
            "--max-pixels",
            dest="max_pixels",
            type=int,
            default=DecodeConfig.max_pixels,
            help="Refuse (dead-letter) sources with larger frames.",
        )
        add_flag(
            parser,
            "--decoder",
            choices=DECODERS,
            default="decord",
            help="Video decoder (ffmpeg is also the automatic fallback).",
        )
        add_flag(
            parser,
            "--no_fallback",
            "--no-fallback",
            dest="no_fallback",
            action="store_true",
            help="Do not retry with ffmpeg when decord cannot open a file.",
        )
        add_flag(
            parser,
            "--decode_timeout_s",
            "--decode-timeout-s",
            dest="decode_timeout_s",
            type=float,
            default=60.0,
            help="Kill a decoder that makes no progress for this long.",
        )
        add_flag(
            parser,
            "--file_timeout_s",
            "--file-timeout-s",
            dest="file_timeout_s",
            type=float,
            default=3600.0,
            help="Most decoder seconds per file.",
        )
        add_flag(
            parser,
            "--no_isolation",
            "--no-isolation",
            dest="no_isolation",
            action="store_true",
            help="Decode in the worker process (faster start, no crash isolation).",
        )
        add_flag(parser, "--vqgan", default=None, help="VQGAN checkpoint (default: the shipped one).")
        add_flag(
            parser,
            "--vqgan_batch",
            "--vqgan-batch",
            dest="vqgan_batch",
            type=int,
            default=8,
            help="Frames per VQGAN call (one compiled shape).",
        )
        add_flag(
            parser,
            "--vqgan_dtype",
            "--vqgan-dtype",
            dest="vqgan_dtype",
            choices=("float32", "bfloat16"),
            default="float32",
            help="VQGAN compute dtype.",
        )
        add_flag(
            parser,
            "--record_shards",
            "--record-shards",
            dest="record_shards",
            type=int,
            default=16,
            help="Parquet shards (fixed per output).",
        )
        add_flag(
            parser,
            "--max_failure_ratio",
            "--max-failure-ratio",
            dest="max_failure_ratio",
            type=float,
            default=0.1,
            help="Exit 1 when more inputs fail.",
        )
        add_flag(
            parser,
            "--retry_dead_letters",
            "--retry-dead-letters",
            dest="retry_dead_letters",
            action="store_true",
            help="Reprocess only the inputs an earlier run dead-lettered.",
        )
        add_flag(parser, "--preview", type=int, default=0, help="Write OUTPUT/preview.png: originals beside reconstructions for N records.")  # fmt: skip


def config_from_options(o: VisionOptions) -> VisionJobConfig:
    fps = 4.0 if o.fps is None else (None if o.fps == 0 else o.fps)
    decode = DecodeConfig(
        fps=fps, max_frames=o.max_frames, clip_seconds=o.clip_seconds, size=o.frame_size, crop=o.crop
    )
    decoding = DecodeOptions(
        o.decoder, not o.no_fallback, not o.no_isolation, o.decode_timeout_s, o.file_timeout_s
    )
    return VisionJobConfig(o.inputs, (o.output or "").rstrip("/"), o.source_name or "vision", decode, decoding, o.vqgan,
                           o.vqgan_batch, o.vqgan_dtype, o.record_shards, o.max_failure_ratio,
                           o.retry_dead_letters, o.preview)  # fmt: skip


def run(argv: Sequence[str] | None = None) -> VisionSummary:
    """Run the job; returns what it did (counted from its outputs).

    Raises ContractError for bad flags or inputs, VisionJobFailed past ``max_failure_ratio``.
    """
    options = adapt(PipelineOptions(list(argv) if argv is not None else sys.argv[1:]))
    job = config_from_options(options.view_as(VisionOptions))
    FileSystems.set_options(options)  # bucket credentials/endpoints for the driver's own reads
    return execute(job, options)


def help_text(prog: str = "lwmkit vision") -> str:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], add_help=False)
    VisionOptions._add_argparse_args(parser)
    return parser.format_help() + "\nBeam's own flags (--runner, --direct_num_workers, ...) pass through.\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lwmkit.pipelines.vision``: exit 2 on a contract error, 1 when the job fails."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text("python -m lwmkit.pipelines.vision"))
        return
    try:
        run(argv)
    except ContractError as err:
        error(str(err))
        sys.exit(2)
    except VisionJobFailed as err:
        error(str(err))
        sys.exit(1)


if __name__ == "__main__":
    main()
