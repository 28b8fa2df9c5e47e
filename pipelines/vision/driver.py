"""Driving one vision run: check settings, decide what is left to do, run Beam, judge the result."""

from __future__ import annotations

import io
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.bucket_options import beam_s3_for_fsspec
from lwmkit.pipelines.vision.graph import build, decode_config
from lwmkit.pipelines.vision.inputs import MediaInput, read_inputs
from lwmkit.pipelines.vision.output import JOB, JobSettings, check_settings, read_state, record_files
from lwmkit.runtime.dead_letters import dead_letter_path, read_existing
from lwmkit.runtime.lease import lease_output
from lwmkit.runtime.progress import step, warn
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.jobs import VisionJob


class VisionJobFailed(RuntimeError):
    """More inputs failed than ``max_failure_ratio`` allows (the outputs are still written)."""


@dataclass(frozen=True)
class VisionSummary:
    """What a run did, counted from its outputs (so it holds on every runner)."""

    inputs: int  # inputs this run was given
    skipped: int  # already finished by an earlier run
    attempted: int
    failed: int  # of the attempted, dead-lettered
    records: int  # in the whole output
    frames: int  # in the whole output
    shards: tuple[str, ...]
    dead_letters: str
    # The output set: every input an earlier run or this one recorded here (done or dead-lettered),
    # plus this run's. The exit code judges these, so a re-run says what the first run said.
    total: int = 0
    dead_total: int = 0  # inputs of the output set that are dead-lettered now (earlier or this run)

    @property
    def failure_ratio(self) -> float:
        """Dead-lettered inputs over all inputs of the output set (not just this run's)."""
        return self.dead_total / self.total if self.total else 0.0

    @property
    def dead_earlier(self) -> int:
        return self.dead_total - self.failed


def tokenizer_identity(checkpoint: str | None, crop: int) -> str:
    """The VQGAN's id, checked against the crop size before any work starts."""
    from lwmkit.tokenizers.vqgan import default_checkpoint_path
    from lwmkit.tokenizers.vqgan_checkpoint import read_checkpoint

    path = str(checkpoint or default_checkpoint_path())
    ckpt = read_checkpoint(path)
    if ckpt.config.resolution != crop:
        raise ContractError(f"is {crop}, but the VQGAN takes {ckpt.config.resolution}x{ckpt.config.resolution} frames",
                            field="crop", source=path)  # fmt: skip
    return ckpt.id


def plan_inputs(job: VisionJob) -> tuple[list[MediaInput], list[str]]:
    """(all inputs named by this run, keys still to process)."""
    state = read_state(job.output)
    letters = read_existing(dead_letter_path(job.output, JOB))
    failed_keys = {d.detail for d in letters if d.detail}
    if job.retry_dead_letters:
        items = []
        for d in letters:
            try:
                items.append(MediaInput.from_key(d.detail))
            except (TypeError, ValueError):
                warn(f"dead letter for {d.uri} holds no input description; it cannot be retried")
        if job.inputs:  # both given: retry only the failed inputs among --inputs
            named = {i.key for i in read_inputs(job.inputs)}
            items = [i for i in items if i.key in named]
        items = sorted({i.key: i for i in items}.values(), key=lambda i: i.key)
        return items, [i.key for i in items]
    items = read_inputs(job.inputs)
    todo = [i.key for i in items if i.key not in state.done and i.key not in failed_keys]
    return items, todo


def plan_line(job: VisionJob, items: list[MediaInput], todo: list[str]) -> str:
    """What this run will do, with dead letters of earlier runs named as such (not as 'done')."""
    if job.retry_dead_letters:
        return f"{len(items)} dead-lettered inputs to retry"
    done = read_state(job.output).done
    left = set(todo)
    n_done = sum(i.key in done for i in items)
    n_dead = sum(i.key not in done and i.key not in left for i in items)
    dead = f", {n_dead} dead-lettered by an earlier run (--retry-dead-letters retries them)" if n_dead else ""
    return f"{len(items)} inputs: {n_done} already done{dead}, {len(todo)} to process"


def summarise(job: VisionJob, items: list[MediaInput], todo: list[str]) -> VisionSummary:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    given = len(items)
    todo_set = set(todo)
    letters = read_existing(dead_letter_path(job.output, JOB))
    dead_keys = {d.detail or d.uri for d in letters}
    failed = len(dead_keys & todo_set)
    done = read_state(job.output).done
    output_set = done | dead_keys | {i.key for i in items}
    records = frames = 0
    shards = tuple(record_files(job.output))  # buckets have no folders: never ask if it exists
    for path in shards:
        with FileSystems.open(path) as f:
            column = pq.read_table(io.BytesIO(f.read()), columns=["n_frames"]).column("n_frames")
        records += len(column)
        frames += int(sum(column.to_pylist()))
    path = dead_letter_path(job.output, JOB)
    return VisionSummary(given, given - len(todo) if not job.retry_dead_letters else 0, len(todo), failed,
                         records, frames, shards, path, len(output_set), len(dead_keys - done))  # fmt: skip


def execute(job: VisionJob, options: PipelineOptions) -> VisionSummary:
    """Plan, run the job's Beam graph (:func:`~lwmkit.pipelines.vision.graph.build`) on the inputs
    left, then check the failure ratio. One run per output folder at a time (its lease; a second
    run is refused, naming the first)."""
    with beam_s3_for_fsspec(options), lease_output(job.output, "lwmkit vision", note=warn):
        return _execute(job, options)


def _execute(job: VisionJob, options: PipelineOptions) -> VisionSummary:
    tokenizer_id = tokenizer_identity(job.vqgan, job.crop)
    settings = JobSettings(job.num_shards, decode_config(job).to_json(), tokenizer_id, job.source)
    check_settings(job.output, settings)
    items, todo = plan_inputs(job)
    step(f"vision: {plan_line(job, items, todo)} -> {job.output}")
    if todo:
        pipeline = beam.Pipeline(options=options)
        build(pipeline, job, todo, tokenizer_id)
        result = pipeline.run()
        result.wait_until_finish()
    summary = summarise(job, items, todo)
    step(f"vision: {summary.attempted - summary.failed}/{summary.attempted} inputs tokenized, {summary.failed} "
         f"dead-lettered in this run; output holds {summary.records} records, {summary.frames} frames "
         f"in {len(summary.shards)} shards from {summary.total - summary.dead_total} of {summary.total} inputs; "
         f"{summary.dead_total} dead-lettered ({summary.dead_earlier} by earlier runs) -> {summary.dead_letters}")  # fmt: skip
    if job.preview and summary.records:
        from lwmkit.pipelines.vision.preview import update_preview

        png, shown, rebuilt = update_preview(job.output, job.preview, checkpoint=job.vqgan)
        step(f"vision: preview of {shown} records -> {png}{'' if rebuilt else ' (unchanged, not rebuilt)'}")
    if summary.failure_ratio > job.max_failure_ratio:
        raise VisionJobFailed(f"{summary.dead_total} of {summary.total} inputs failed ({summary.failure_ratio:.0%} > "
                              f"max_failure_ratio {job.max_failure_ratio:.0%}; {summary.failed} in this run, "
                              f"{summary.dead_earlier} by earlier runs); see {summary.dead_letters}")  # fmt: skip
    return summary
