"""The audit recount as a Beam job: one shard per element, tallies merged by a CombineFn.

``ListShards | Spread | RecountShards | Merge | ToJson | Write`` — the same per-shard
function as the local pass (``audit_shards.recount_shard``), so both give the same recount; Beam
adds parallelism across workers and machines. Run it from ``lwmkit audit --runner NAME``
or directly::

    python -m lwmkit.pipelines.audit.recount_job --shards s3://bucket/stage-8k \
        --recount-output s3://bucket/audit/recount.json --runner DirectRunner \
        --direct_running_mode multi_processing --direct_num_workers 0
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.audit.shards import ShardSetRef, open_shard_set, recount_shard, scratch_dir
from lwmkit.pipelines.audit.stats import Recount
from lwmkit.pipelines.runner_compat import adapt
from lwmkit.schemas.flags import parse_job
from lwmkit.schemas.jobs import RecountJob


class RecountShard(beam.DoFn):
    """Streams one shard (by its index in the manifest) into a Recount."""

    def __init__(self, ref: ShardSetRef, cap: int) -> None:
        self._ref, self._cap = ref, cap
        self._sequences = Metrics.counter("audit", "sequences")
        self._tokens = Metrics.counter("audit", "tokens")
        self._bad = Metrics.counter("audit", "bad_shards")

    def process(self, index: int):
        rc = recount_shard(self._ref, self._ref.shards[index], cap=self._cap)
        self._sequences.inc(rc.n_sequences)
        self._tokens.inc(rc.tokens)
        self._bad.inc(sum(s.status != "ok" for s in rc.shards))
        yield rc


class MergeRecounts(beam.CombineFn):
    """Associative merge of per-shard recounts (bounded size: tallies and histograms)."""

    def create_accumulator(self) -> Recount:
        return Recount()

    def add_input(self, acc: Recount, rc: Recount) -> Recount:
        return acc.merge(rc)

    def merge_accumulators(self, accs) -> Recount:
        out = Recount()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: Recount) -> Recount:
        return acc


def build(p: beam.Pipeline, ref: ShardSetRef, output: str, cap: int) -> None:
    """The job's graph: a short chain of named transforms."""
    _ = (
        p
        | "ListShards" >> beam.Create(list(range(len(ref.shards))))
        | "Spread" >> beam.Reshuffle()  # one shard per bundle, so workers share the set
        | "RecountShards" >> beam.ParDo(RecountShard(ref, cap))
        | "Merge" >> beam.CombineGlobally(MergeRecounts())
        | "ToJson" >> beam.Map(lambda rc: json.dumps(rc.to_dict(), sort_keys=True))
        | "Write" >> beam.io.WriteToText(output, shard_name_template="", num_shards=1)
    )


def _read_recount(path: str) -> Recount:
    import fsspec

    with fsspec.open(path, "rt") as f:
        return Recount.from_dict(json.loads(f.read()))


def run(argv: Sequence[str] | None = None, ref: ShardSetRef | None = None) -> Recount:
    """Run the job with Beam flags ``argv``; returns the recount it wrote."""
    job, beam_args = parse_job(RecountJob, list(argv) if argv is not None else sys.argv[1:], "recount")
    options = adapt(PipelineOptions(beam_args))
    ref = ref or open_shard_set(job.shards)
    with beam.Pipeline(options=options) as p:
        build(p, ref, job.recount_output, job.max_problems_per_shard)
    return _read_recount(job.recount_output)


def recount_beam(ref: ShardSetRef, *, runner: str, beam_args: Sequence[str] = (), cap: int = 20) -> Recount:
    """The recount of ``ref`` as a Beam job on ``runner``; extra Beam flags in ``beam_args``
    (``--recount-output`` keeps the recount JSON; otherwise it goes to a scratch folder, removed after)."""
    args = [
        f"--runner={runner}",
        f"--shards={ref.manifest_path}",
        f"--max-problems-per-shard={cap}",
        *beam_args,
    ]
    scratch = None
    if not any(a.startswith(("--recount_output", "--recount-output")) for a in beam_args):
        scratch = scratch_dir()
        args.append(f"--recount-output={os.path.join(scratch, 'recount.json')}")
    if runner == "DirectRunner":  # multi-process by default: one process per core
        if not any(a.startswith("--direct_running_mode") for a in beam_args):
            args.append("--direct_running_mode=multi_processing")
        if not any(a.startswith("--direct_num_workers") for a in beam_args):
            args.append("--direct_num_workers=0")
    try:
        return run(args, ref=ref)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    rc = run()
    print(
        f"{rc.n_sequences} sequences, {rc.tokens} tokens, {sum(s.status != 'ok' for s in rc.shards)} bad shards"
    )
