"""Where the book QA job's records go: ``chunks-SSSSS-of-NNNNN.parquet`` under ``--output``.

A chunk's shard is a hash of its id, and each shard is written whole by one worker, its rows
sorted by (book, chunk index), with the one ``write_atomic``: the same chunks give the same
bytes on every runner and worker count (Beam's ``WriteToParquet`` starts its round-robin at a
random shard, so its shards differed between runs). Every shard is written, empty or not, and
shards of an earlier run with another ``--num-shards`` are removed, so a glob over the folder
reads exactly this run's records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from lwmkit.runtime.files import BEAM, write_atomic
from lwmkit.schemas.records import BOOK_CHUNK, table_bytes

PREFIX = "chunks"


def shard_of(chunk_id: str, num_shards: int) -> int:
    """The shard a chunk lands in: stable across processes, machines and Python versions."""
    return int(hashlib.sha256(chunk_id.encode("utf-8")).hexdigest()[:16], 16) % num_shards


def shard_path(output: str, shard: int, num_shards: int) -> str:
    return FileSystems.join(output, f"{PREFIX}-{shard:05d}-of-{num_shards:05d}.parquet")


def remove_stale_shards(output: str, num_shards: int) -> list[str]:
    """Delete record shards of an earlier run with another shard count; returns their paths."""
    pattern = FileSystems.join(output, f"{PREFIX}-*-of-*.parquet")
    stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list
             if not m.path.endswith(f"-of-{num_shards:05d}.parquet")]  # fmt: skip
    if stale:
        FileSystems.delete(stale)
    return sorted(stale)


class _WriteShard(beam.DoFn):
    def __init__(self, output: str, num_shards: int) -> None:
        self.output, self.num_shards = output, num_shards

    def process(self, element: tuple[int, Iterable[dict | None]]) -> Iterator[str]:
        shard, items = element
        rows = sorted((r for r in items if r is not None), key=lambda r: (r["book_id"], r["chunk_index"]))
        path = shard_path(self.output, shard, self.num_shards)
        write_atomic(path, table_bytes(rows, BOOK_CHUNK), BEAM)
        yield path


class WriteChunks(beam.PTransform):
    """PCollection[BOOK_CHUNK row] -> ``num_shards`` Parquet shards; yields their paths."""

    def __init__(self, output: str, num_shards: int) -> None:
        super().__init__()
        self.output, self.num_shards = output, num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        n = self.num_shards
        keyed = rows | "KeyByShard" >> beam.Map(lambda r: (shard_of(r["chunk_id"], n), r))
        every = rows.pipeline | "EveryShard" >> beam.Create([(s, None) for s in range(n)])
        return (
            (keyed, every)
            | "AllShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self.output, n))
        )
