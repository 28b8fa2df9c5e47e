"""Where a vision job's records go, and what an earlier run into the same folder already did.

Layout under ``--output``::

    vision_job.json                     settings every shard was made with (checked on re-runs)
    vision-00003-of-00016.parquet       records of the inputs whose key hashes to bucket 3
    dead_letters/vision.jsonl           failed inputs (uri, stage, reason; input in ``detail``)

An input's records always land in the same shard (its bucket), and each shard lists the
inputs it holds in its Parquet metadata. A re-run skips those inputs (and dead-lettered ones,
unless retrying), processes the rest, and rewrites only the shards that got new records, as
old ∪ new sorted by id: the same inputs give the same bytes whatever the order of runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from lwmkit.runtime.files import BEAM, write_atomic
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import VISION_RECORD, read_table, table_bytes

JOB = "vision"
SETTINGS_FILE = "vision_job.json"
INPUTS_META = b"lwmkit.vision.inputs"


def shard_path(output: str, bucket: int, num_shards: int) -> str:
    return FileSystems.join(output, f"{JOB}-{bucket:05d}-of-{num_shards:05d}.parquet")


def record_files(output: str) -> list[str]:
    """The record shards under ``output``, sorted."""
    pattern = FileSystems.join(output, f"{JOB}-*-of-*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


@dataclass(frozen=True)
class JobSettings:
    """What every record under one output was made with; a re-run must match it."""

    num_shards: int
    decode_settings: str
    tokenizer_id: str
    source: str
    format_version: int = 1

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, indent=2) + "\n"


def check_settings(output: str, settings: JobSettings) -> None:
    """Write ``vision_job.json`` on the first run; refuse a re-run with other settings."""
    path = FileSystems.join(output, SETTINGS_FILE)
    if FileSystems.exists(path):
        with FileSystems.open(path) as f:
            old = json.loads(f.read().decode("utf-8"))
        for key, value in settings.__dict__.items():
            if old.get(key) != value:
                why = (f"this output was made with {key}={old.get(key)!r}, this run has {value!r}; "
                       "use a new --output (records made with different settings must not mix)")  # fmt: skip
                if key == "tokenizer_id":
                    from lwmkit.tokenizers.vqgan_history import earlier_default_hint

                    why += f", or pass the VQGAN it was made with (--vqgan){earlier_default_hint(old.get(key))}"
                raise ContractError(why, field=key, source=path)
        return
    write_atomic(path, settings.to_json().encode(), BEAM)


def _shard_inputs(path: str) -> list[str]:
    with FileSystems.open(path) as f:
        meta = pq.read_schema(io.BytesIO(f.read())).metadata or {}
    return json.loads(meta.get(INPUTS_META, b"[]"))


@dataclass(frozen=True)
class OutputState:
    """Inputs already turned into records by earlier runs (their keys)."""

    done: frozenset[str] = field(default_factory=frozenset)
    shards: tuple[str, ...] = ()


def read_state(output: str) -> OutputState:
    shards = record_files(output)
    done = frozenset(key for path in shards for key in _shard_inputs(path))
    return OutputState(done, tuple(shards))


def shard_bytes(rows: list[dict], input_keys: Iterable[str]) -> bytes:
    """One shard: rows sorted by id, the inputs it holds in its metadata; deterministic bytes."""
    rows = sorted(rows, key=lambda r: r["id"])
    return table_bytes(rows, VISION_RECORD, metadata={INPUTS_META: json.dumps(sorted(set(input_keys))).encode()})


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, num_shards: int) -> None:
        self.output, self.num_shards = output, num_shards

    def process(self, element: tuple[int, Iterable[tuple[str, dict]]]) -> Iterable[str]:
        bucket, items = element
        path = shard_path(self.output, bucket, self.num_shards)
        rows: dict[str, dict] = {}
        keys: set[str] = set()
        if FileSystems.exists(path):
            with FileSystems.open(path) as f:
                data = io.BytesIO(f.read())
            rows = {r["id"]: r for r in read_table(data, VISION_RECORD).to_pylist()}
            keys = set(_shard_inputs(path))
        for key, row in items:
            rows[row["id"]] = row  # a re-processed input replaces its old records
            keys.add(key)
        write_atomic(path, shard_bytes(list(rows.values()), keys), BEAM)
        beam.metrics.Metrics.counter(JOB, "shards_written").inc()
        yield path


class WriteRecords(beam.PTransform):
    """PCollection[(bucket, (input key, record row))] -> merged, atomically replaced shards."""

    def __init__(self, output: str, num_shards: int) -> None:
        super().__init__()
        self.output, self.num_shards = output, num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self.output, self.num_shards))
        )
