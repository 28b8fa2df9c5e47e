"""The vision job's Beam graph (:func:`build`) over its typed config
(:class:`lwmkit.schemas.jobs.VisionJob`, which also generates its flags); one run is driven by
:mod:`lwmkit.pipelines.vision.driver`.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from lwmkit.pipelines.vision.decode import DecodeConfig
from lwmkit.pipelines.vision.inputs import MediaInput
from lwmkit.pipelines.vision.output import JOB, WriteRecords
from lwmkit.pipelines.vision.steps import (
    CLIPS,
    DEAD,
    FRAMES,
    ROWS,
    AssembleRecords,
    DecodeMedia,
    DecodeOptions,
    TokenizeFrames,
)
from lwmkit.runtime.dead_letters import WriteDeadLetters
from lwmkit.schemas.jobs import VisionJob


def decode_config(job: VisionJob) -> DecodeConfig:
    """What frames the job takes and how they are shaped (written into every record)."""
    return DecodeConfig(fps=job.fps or None, max_frames=job.max_frames, clip_seconds=job.clip_seconds,
                        size=job.frame_size, crop=job.crop, max_pixels=job.max_pixels)  # fmt: skip


def decode_options(job: VisionJob) -> DecodeOptions:
    """How files are decoded (no effect on the output)."""
    return DecodeOptions(job.decoder, not job.no_fallback, not job.no_isolation, job.decode_timeout_s,
                         job.file_timeout_s)  # fmt: skip


def build(p: beam.Pipeline, job: VisionJob, keys: Sequence[str], tokenizer_id: str) -> None:
    """The job's graph over the input ``keys`` (:attr:`MediaInput.key`) still to do."""
    decoded = (
        p
        | "ReadInputs" >> beam.Create(list(keys))
        | "SpreadInputs" >> beam.Reshuffle()
        | "Decode" >> DecodeMedia(decode_config(job), decode_options(job), job.num_shards)
    )
    codes = decoded[FRAMES] | "Tokenize" >> TokenizeFrames(job.vqgan, job.vqgan_batch, job.vqgan_dtype)
    records = {"codes": codes, CLIPS: decoded[CLIPS]} | "AssembleRecords" >> AssembleRecords(
        job.source, tokenizer_id, decode_config(job).to_json()
    )
    _ = records[ROWS] | "WriteRecords" >> WriteRecords(job.output, job.num_shards)
    retried = {MediaInput.from_key(k).uri for k in keys}
    _ = (
        (decoded[DEAD], records[DEAD])
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(job.output, JOB, replace_uris=retried)
    )
