"""The pack job: a mixture config + a stage's seq_len -> packed webdataset shards + manifest.

::

    ReadSources ─► FitToLength ─► PlanMixture (token totals -> per-source quotas)
                        │                 │ (side input)
                        └──────► SampleByMixture ─► Partition ─► PackAndWrite ─► WriteManifest

The stage is the one source of the sequence length: ``lwmkit pack --mixture M.yaml --train
T.yaml --stage s32k`` takes seq_len (and the expected tokenizer/VQGAN ids, and the output folder:
the stage's ``data``) from stage ``s32k`` of the training config (:func:`stage_target`).
Without a training config: ``lwmkit pack --mixture M.yaml --seq-len 32768 --stage s32k --out DIR``, or
``python -m lwmkit.pipelines.pack --mixture M.yaml --seq-len 32768 --stage s32k --out DIR
[--runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing]``,
or from Python with :func:`run_pack`. Same inputs + seed -> byte-identical shards on any
runner and worker count.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.bucket_options import beam_s3_for_fsspec
from lwmkit.pipelines.entry import job_main
from lwmkit.pipelines.pack.formatting import Example
from lwmkit.pipelines.pack.mixture import MixturePlan, example_key
from lwmkit.pipelines.pack.rejects import plan_or_explain
from lwmkit.pipelines.pack.sequences import fit_example
from lwmkit.pipelines.pack.sources import COUNTS, DEAD, ReadSource, list_files
from lwmkit.pipelines.pack.write import PackPartition, PackSettings, finalize, prepare_output
from lwmkit.pipelines.runner_compat import adapt
from lwmkit.runtime.config import load_config
from lwmkit.runtime.lease import lease_output
from lwmkit.runtime.progress import step, warn
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.flags import help_text as flag_help
from lwmkit.schemas.flags import parse_job
from lwmkit.schemas.jobs import BEAM_PASS_THROUGH, PackJob
from lwmkit.schemas.manifest import Manifest, load_manifest
from lwmkit.schemas.mixture import MixtureConfig
from lwmkit.schemas.training import TrainConfig


@dataclass(frozen=True)
class StageTarget:
    """What a training config's stage fixes for the shards that feed it."""

    stage: str
    seq_len: int
    out: str  # the stage's data folder
    tokenizer_id: str | None  # expected by the run (None: whatever the first manifest says)
    vqgan_id: str | None
    source: str  # the training config, for error messages


def stage_target(train: str | TrainConfig, stage: str, seq_len: int | None = None,
                 overrides: Sequence[str] = ()) -> StageTarget:  # fmt: skip
    """Stage ``stage`` of the training config ``train`` (a YAML path or a config; ``overrides``
    are its ``--set``). A ``seq_len`` given as well must agree with the stage's."""

    source = train if isinstance(train, str) else "training config"
    cfg = load_config(TrainConfig, train, overrides) if isinstance(train, str) else train
    found = [s for s in cfg.stages if s.name == stage]
    if not found:
        names = ", ".join(s.name for s in cfg.stages)
        raise ContractError(f"has no stage {stage!r} (its stages: {names})", field="stages", source=source)
    s = found[0]
    if seq_len is not None and seq_len != s.seq_len:
        raise ContractError(f"--seq-len {seq_len} differs from stage {stage!r}'s seq_len {s.seq_len} in {source}; "
                            "the stage is the one source of seq_len: drop --seq-len", field="seq_len", source="pack")  # fmt: skip
    data = s.data.rstrip("/")
    out = data.rsplit("/", 1)[0] if data.endswith(".json") and "/" in data else data
    return StageTarget(s.name, s.seq_len, out, cfg.tokenizer_id, cfg.vqgan_id, source)


@dataclass(frozen=True)
class PackPlan:
    """What one run resolved from its :class:`~lwmkit.schemas.jobs.PackJob`: the loaded mixture,
    the tokenizer's id and the packer's settings, validated before Beam starts."""

    mixture: MixtureConfig
    seq_len: int
    stage: str
    out: str
    tokenizer_path: str | None
    tokenizer_id: str
    settings: PackSettings

    @classmethod
    def create(
        cls,
        mixture: MixtureConfig,
        seq_len: int,
        stage: str,
        out: str,
        tokenizer: str | None,
        target: StageTarget | None = None,
    ) -> PackPlan:
        from lwmkit.tokenizers.text import TextTokenizer

        if not isinstance(seq_len, int) or seq_len < 2:
            raise ContractError(f"must be an integer >= 2, got {seq_len!r}", field="seq_len")
        if not stage or not stage.strip():
            raise ContractError("must not be empty", field="stage")
        tok = TextTokenizer.load(tokenizer)
        expected = target.tokenizer_id if target else None
        if expected is not None and tok.id != expected:
            raise ContractError(f"tokenizer {tok.id} differs from the training config's {expected} "
                                "(pass the tokenizer the run trains with: --tokenizer)",
                                field="tokenizer_id", source=target.source)  # fmt: skip
        out = out.rstrip("/")
        settings = PackSettings(out=out, seq_len=seq_len, mixture=mixture, layout=tok.vocab_layout(),
                                vqgan_id=target.vqgan_id if target else None)  # fmt: skip
        return cls(mixture, seq_len, stage, out, tokenizer, tok.id, settings)


class FitToLength(beam.DoFn):
    """Apply the over-long policy; pieces go on, what it did is counted."""

    def __init__(self, job: PackPlan) -> None:
        self.seq_len, self.policy, self.layout = job.seq_len, job.mixture.overlong, job.settings.layout

    def process(self, ex: Example) -> Iterator:
        pieces, counts = fit_example(ex, self.seq_len, self.policy, self.layout)
        yield from pieces
        for name, n in counts.items():
            yield beam.pvalue.TaggedOutput(COUNTS, (f"{name}.{ex.source}", n))


class PlanMixture(beam.PTransform):
    """Examples -> the one :class:`MixturePlan` (token totals per source -> quotas).

    ``explain``: (dead letters, counts so far, files per source, output folder) -- side inputs
    that name the reasons when a source has no usable examples (``pipelines/pack/rejects.py``).
    """

    def __init__(self, mixture: MixtureConfig, explain: tuple) -> None:
        super().__init__()
        self.mixture, self.explain = mixture, explain

    def expand(self, examples):
        return (
            examples
            | "Lengths" >> beam.Map(lambda ex: (ex.source, (ex.example_id, ex.n_tokens)))
            | "BySource" >> beam.GroupByKey()
            | "AsLists" >> beam.MapTuple(lambda name, rows: (name, list(rows)))
            | "ToDict" >> beam.combiners.ToDict()
            | "Plan" >> beam.Map(plan_or_explain, self.mixture, *self.explain)
        )


def buckets(plan: MixturePlan, mixture: MixtureConfig) -> dict[str, int]:
    """Partitions per packing group: enough that each holds ~``bucket_tokens`` tokens."""
    tokens: Counter = Counter()
    for s in mixture.sources:
        tokens[s.group] += plan.sources[s.name].planned_tokens
    return {g: max(1, math.ceil(n / mixture.bucket_tokens)) for g, n in tokens.items()}


def sample_and_partition(ex: Example, plan: MixturePlan, mixture: MixtureConfig) -> Iterator:
    """Each copy the plan takes of ``ex`` -> ``((group, bucket), (key, example))``."""
    from dataclasses import replace

    n_buckets = buckets(plan, mixture)[ex.group]
    for epoch in plan.sources[ex.source].copies(mixture.seed, ex.example_id):
        copy = ex if epoch == 0 else replace(ex, example_id=f"{ex.example_id}@{epoch}")
        key = example_key(mixture.seed, "pack", ex.source, epoch, ex.example_id)
        yield (ex.group, key % n_buckets), (key, copy)


def build(p: beam.Pipeline, job: PackPlan) -> None:
    """The job's graph on pipeline ``p``."""
    m = job.mixture
    files = {s.name: list_files(s) for s in m.sources}
    reads = [
        p | f"Read[{s.name}]" >> ReadSource(s, files[s.name], job.tokenizer_path, job.seq_len, m.seed, m.overlong)  # fmt: skip
        for s in m.sources
    ]
    examples = [r["examples"] for r in reads] | "AllExamples" >> beam.Flatten()
    fitted = examples | "FitToLength" >> beam.ParDo(FitToLength(job)).with_outputs(COUNTS, main="pieces")
    dead = [r[DEAD] for r in reads] | "AllDead" >> beam.Flatten()
    early = [r[COUNTS] for r in reads] + [fitted[COUNTS]] | "EarlyCounts" >> beam.Flatten()
    explain = (beam.pvalue.AsList(dead), beam.pvalue.AsDict(early | "SumEarly" >> beam.CombinePerKey(sum)),
               {name: [url for url, _ in found] for name, found in files.items()}, job.out)  # fmt: skip
    plan = fitted.pieces | "PlanMixture" >> PlanMixture(m, explain)
    results = (
        fitted.pieces
        | "SampleByMixture" >> beam.FlatMap(sample_and_partition, beam.pvalue.AsSingleton(plan), m)
        | "Partition" >> beam.GroupByKey()
        | "PackAndWrite" >> beam.ParDo(PackPartition(job.settings))
        | "AllResults" >> beam.combiners.ToList()
    )
    counts = (
        [r[COUNTS] for r in reads]
        + [fitted[COUNTS], plan | "PlanCounts" >> beam.FlatMap(lambda pl: pl.counts().items())]
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    _ = results | "WriteManifest" >> beam.Map(
        finalize,
        beam.pvalue.AsDict(counts),
        beam.pvalue.AsList(dead),
        stage=job.stage,
        settings=job.settings,
        tokenizer_id=job.tokenizer_id,
        created_by="lwmkit pack",
    )


def _unwrap(err: BaseException) -> ContractError | None:
    """The ContractError inside a runner's wrapped exception, if any (its message, at least)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ContractError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def run_pack(
    mixture: str | MixtureConfig,
    seq_len: int | None,
    stage: str,
    out: str | None,
    *,
    tokenizer: str | None = None,
    overrides: Sequence[str] = (),
    pipeline_args: Sequence[str] = (),
    target: StageTarget | None = None,
) -> Manifest:
    """Pack ``mixture`` (a YAML path or a config) for one stage into ``out``; returns the manifest.

    With ``target`` (a training config's stage: :func:`stage_target`), ``seq_len`` and ``out``
    may be None: they come from the stage, whose tokenizer/VQGAN ids are then checked too.
    ``pipeline_args`` are Beam flags (``--runner``, ``--direct_num_workers``, ...).
    Raises ContractError for a bad config or input before any shard is written.
    """

    if target is not None:
        if (seq_len is not None and seq_len != target.seq_len) or stage != target.stage:
            raise ContractError(f"stage {stage!r} / seq_len {seq_len} differ from the target's", field="seq_len")
        seq_len, out = target.seq_len, out or target.out
    if seq_len is None:
        raise ContractError("is required: give --seq-len, or --train with the stage's config", field="seq_len")
    if not out:
        raise ContractError("is required: give --out, or --train (the stage's data folder)", field="out")
    if isinstance(mixture, str):
        mixture = load_config(MixtureConfig, mixture, overrides)
    elif overrides:
        raise ContractError("overrides apply to a mixture file, not a config object", source="--set")
    options = adapt(PipelineOptions(list(pipeline_args)))
    with beam_s3_for_fsspec(options):  # pack lists its inputs, leases and writes through fsspec too
        job = PackPlan.create(mixture, seq_len, stage, out, tokenizer, target)
        step(f"pack: stage {stage}, seq_len {seq_len}, {len(mixture.sources)} sources -> {job.out}")
        # One writer per set: two runs in one folder would delete each other's shards.
        with lease_output(job.out, "lwmkit pack", note=warn):
            prepare_output(job.out)
            try:
                with beam.Pipeline(options=options) as p:
                    build(p, job)
            except Exception as err:
                found = _unwrap(err)
                if found is not None:
                    raise found from None
                raise
        manifest = load_manifest(f"{job.out}/manifest.json")
    step(
        f"pack: {manifest.n_sequences} sequences in {len(manifest.shards)} shards, "
        f"efficiency {manifest.packing_efficiency:.4f}, padding {manifest.padding_tokens} tokens"
    )
    return manifest


def run(argv: Sequence[str] | None = None) -> Manifest:
    """``lwmkit pack`` / ``python -m lwmkit.pipelines.pack``: the flags of
    :class:`~lwmkit.schemas.jobs.PackJob`; the rest goes to Beam."""
    job, rest = parse_job(PackJob, list(argv) if argv is not None else sys.argv[1:], "pack")
    target = stage_target(job.train, job.stage, job.seq_len, job.train_set) if job.train else None
    beam_args = [f"--runner={job.runner}", *rest]
    if job.workers:
        beam_args += [f"--direct_num_workers={job.workers}", "--direct_running_mode=multi_processing"]
    return run_pack(job.mixture, job.seq_len, job.stage, job.out, tokenizer=job.tokenizer, overrides=job.set,
                    pipeline_args=beam_args, target=target)  # fmt: skip


def help_text(prog: str = "lwmkit pack") -> str:
    return flag_help(PackJob, prog, __doc__.split("\n\n")[0], BEAM_PASS_THROUGH)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lwmkit.pipelines.pack``: exit 2 on a contract error."""
    job_main(argv, run, help_text, "pack")


if __name__ == "__main__":
    main()
