"""The vision job declared: its typed config (:class:`VisionJobConfig`) and its Beam graph
(:func:`build`). The flags that make the config are in :mod:`lwmkit.pipelines.vision`; one run
is driven by :mod:`lwmkit.pipelines.vision_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam

from lwmkit.pipelines.decode import DecodeConfig
from lwmkit.pipelines.inputs import MediaInput
from lwmkit.pipelines.vision_output import JOB, WriteRecords
from lwmkit.pipelines.vision_steps import (
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
from lwmkit.schemas.strict import require


@dataclass(frozen=True)
class VisionJobConfig:
    """One run of the vision job, validated before anything is read."""

    inputs: str | None
    output: str
    source: str = "vision"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    decoding: DecodeOptions = field(default_factory=DecodeOptions)
    vqgan: str | None = None
    vqgan_batch: int = 8
    vqgan_dtype: str = "float32"
    num_shards: int = 16
    max_failure_ratio: float = 0.1
    retry_dead_letters: bool = False
    preview: int = 0

    def __post_init__(self) -> None:
        require(bool(self.output), "output", "is required (--output)")
        require(
            bool(self.inputs) or self.retry_dead_letters,
            "inputs",
            "is required (--inputs) unless --retry_dead_letters",
        )
        require(bool(self.source), "source", "must not be empty")
        require(self.vqgan_batch >= 1, "vqgan_batch", "must be >= 1")
        require(1 <= self.num_shards <= 99999, "num_shards", "must be in [1, 99999]")
        require(0.0 <= self.max_failure_ratio <= 1.0, "max_failure_ratio", "must be in [0, 1]")
        require(self.preview >= 0, "preview", "must be >= 0")
        require(
            self.decoding.timeout_s > 0 and self.decoding.file_timeout_s > 0,
            "decode_timeout_s",
            "must be > 0",
        )



def build(p: beam.Pipeline, job: VisionJobConfig, keys: Sequence[str], tokenizer_id: str) -> None:
    """The job's graph over the input ``keys`` (:attr:`MediaInput.key`) still to do."""
    decoded = (
        p
        | "ReadInputs" >> beam.Create(list(keys))
        | "SpreadInputs" >> beam.Reshuffle()
        | "Decode" >> DecodeMedia(job.decode, job.decoding, job.num_shards)
    )
    codes = decoded[FRAMES] | "Tokenize" >> TokenizeFrames(job.vqgan, job.vqgan_batch, job.vqgan_dtype)
    records = {"codes": codes, CLIPS: decoded[CLIPS]} | "AssembleRecords" >> AssembleRecords(
        job.source, tokenizer_id, job.decode.to_json()
    )
    _ = records[ROWS] | "WriteRecords" >> WriteRecords(job.output, job.num_shards)
    retried = {MediaInput.from_key(k).uri for k in keys}
    _ = (
        (decoded[DEAD], records[DEAD])
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(job.output, JOB, replace_uris=retried)
    )
