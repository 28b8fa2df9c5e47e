"""Driving one vision run: check settings, decide what is left to do, run Beam, judge the result."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from lwmkit.pipelines.dead_letters import dead_letter_path, read_existing
from lwmkit.pipelines.inputs import MediaInput, read_inputs
from lwmkit.pipelines.vision_output import JOB, JobSettings, check_settings, read_state, record_files
from lwmkit.progress import step, warn
from lwmkit.schemas.errors import ContractError


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

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0


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


def plan_inputs(job: Any) -> tuple[list[MediaInput], list[str]]:
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


def summarise(job: Any, given: int, todo: list[str]) -> VisionSummary:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    todo_set = set(todo)
    letters = read_existing(dead_letter_path(job.output, JOB))
    failed = len({d.detail for d in letters if d.detail in todo_set})
    records = frames = 0
    shards = tuple(record_files(job.output))  # buckets have no folders: never ask if it exists
    for path in shards:
        with FileSystems.open(path) as f:
            column = pq.read_table(io.BytesIO(f.read()), columns=["n_frames"]).column("n_frames")
        records += len(column)
        frames += int(sum(column.to_pylist()))
    path = dead_letter_path(job.output, JOB)
    return VisionSummary(given, given - len(todo) if not job.retry_dead_letters else 0, len(todo), failed,
                         records, frames, shards, path)  # fmt: skip


def execute(job: Any, options: Any, build: Callable[..., None]) -> VisionSummary:
    """Plan, run the Beam graph made by ``build`` on the inputs left, then check the failure ratio.
    One run per output folder at a time (its lease; a second run is refused, naming the first)."""
    from lwmkit.runtime.lease import lease_output

    with lease_output(job.output, "lwmkit vision", note=warn):
        return _execute(job, options, build)


def _execute(job: Any, options: Any, build: Callable[..., None]) -> VisionSummary:
    tokenizer_id = tokenizer_identity(job.vqgan, job.decode.crop)
    settings = JobSettings(job.num_shards, job.decode.to_json(), tokenizer_id, job.source)
    check_settings(job.output, settings)
    items, todo = plan_inputs(job)
    step(f"vision: {len(items)} inputs, {len(items) - len(todo) if not job.retry_dead_letters else 0} already done, "
         f"{len(todo)} to process -> {job.output}")  # fmt: skip
    if todo:
        pipeline = beam.Pipeline(options=options)
        build(pipeline, job, todo, tokenizer_id)
        result = pipeline.run()
        result.wait_until_finish()
        if getattr(result, "client", None) is not None:  # the Dask runner's own client: close it
            result.client.close()
    summary = summarise(job, len(items), todo)
    step(f"vision: {summary.attempted - summary.failed}/{summary.attempted} inputs tokenized, {summary.failed} "
         f"dead-lettered ({summary.dead_letters}); output holds {summary.records} records, {summary.frames} frames "
         f"in {len(summary.shards)} shards")  # fmt: skip
    if job.preview:
        from lwmkit.pipelines.preview import write_preview

        png = write_preview(job.output, job.preview, checkpoint=job.vqgan)
        step(f"vision: preview of {job.preview} records -> {png}")
    if summary.failure_ratio > job.max_failure_ratio:
        raise VisionJobFailed(f"{summary.failed} of {summary.attempted} inputs failed ({summary.failure_ratio:.0%} > "
                              f"max_failure_ratio {job.max_failure_ratio:.0%}); see {summary.dead_letters}")  # fmt: skip
    return summary
