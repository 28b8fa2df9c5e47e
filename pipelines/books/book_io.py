"""Reading books into a Beam pipeline, and the dead-letter plumbing shared by its steps.

Inputs are file patterns on any Beam filesystem (local, gs://, s3://), ``.gz``/``.bz2``
decompressed by extension:

* ``.txt`` / ``.text`` / ``.md``: one book per file; its id is the file name's stem;
* ``.jsonl`` / ``.json``: one book per line, id and text in ``id_field`` / ``text_field``;
* ``.parquet``: one book per row, same columns (read one row group at a time).

Anything else, a pattern that matches nothing, a row without an id or text, and a book id
seen twice (all but the first by uri are dropped) become dead letters with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from lwmkit.schemas.dead_letters import DeadLetter

JOB = "books"
DEAD = "dead"
NAMESPACE = "lwmkit.books"
TEXT_EXTS = (".txt", ".text", ".md")
JSONL_EXTS = (".jsonl", ".json", ".ndjson")
PARQUET_EXTS = (".parquet",)
_COMPRESSED = (".gz", ".bz2", ".zst", ".deflate")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RawBook:
    """A book as read: its id, where it came from (``uri``, ``uri#L12``, ``uri#row3``) and its
    content — bytes for text files (decoded by the read policy later), str from JSONL/Parquet."""

    book_id: str
    uri: str
    content: bytes | str


def dead_letter(
    uri: str, stage: str, err: BaseException | str, detail: str | None = None, error_class: str = "Rejected"
) -> beam.pvalue.TaggedOutput:
    """A tagged dead-letter line (JSONL) for ``uri`` at ``stage``; ``error_class`` names a str reason."""
    if isinstance(err, BaseException):
        letter = DeadLetter.from_exception(uri, stage, JOB, err, detail)
    else:
        letter = DeadLetter(
            uri=uri, stage=stage, error_class=error_class, message=err, job=JOB, detail=detail
        )
    Metrics.counter(NAMESPACE, f"dead_letters_{stage}").inc()
    return beam.pvalue.TaggedOutput(DEAD, letter.to_json())


def dead_letter_counts(output: str) -> dict[str, int]:
    """Dead letters of the whole output (``OUTPUT/dead_letters.jsonl``) by stage, sorted; ``{}`` if none.

    Read back from the file rather than from this run's counters, so the summary of a re-run
    (whose replies came from the cache) still names every book and chunk that failed.
    """
    path = FileSystems.join(output, "dead_letters.jsonl")
    if not FileSystems.exists(path):
        return {}
    counts: dict[str, int] = {}
    with FileSystems.open(path) as f:
        for i, line in enumerate(f.read().decode("utf-8").splitlines()):
            if line.strip():
                stage = DeadLetter.from_json(line, source=f"{path}:{i + 1}").stage
                counts[stage] = counts.get(stage, 0) + 1
    return dict(sorted(counts.items()))


def book_id_from_path(path: str) -> str:
    """``/data/Botchan (1906).txt.gz`` → ``Botchan-1906``: the stem with unsafe characters folded."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _UNSAFE.sub("-", stem).strip("-._") or "book"


def _kind(path: str) -> str | None:
    name = path.lower()
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    for kind, exts in (("text", TEXT_EXTS), ("jsonl", JSONL_EXTS), ("parquet", PARQUET_EXTS)):
        if name.endswith(exts):
            return kind
    return None


class MatchInputs(beam.DoFn):
    """pattern → matched paths (sorted); an empty match is a dead letter, not a silent no-op."""

    def process(self, pattern: str) -> Iterator[Any]:
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # noqa: BLE001 - any filesystem failure is reported, not fatal
            yield dead_letter(pattern, "match", err)
            return
        if not found:
            yield dead_letter(pattern, "match", "no file matches this pattern")
        for meta in sorted(found, key=lambda m: m.path):
            yield meta.path


class ReadBookFile(beam.DoFn):
    """path → RawBook per book in the file; unreadable files and bad rows → dead letters."""

    def __init__(self, id_field: str = "id", text_field: str = "text"):
        self.id_field = id_field
        self.text_field = text_field

    def process(self, path: str) -> Iterator[Any]:
        kind = _kind(path)
        if kind is None:
            yield dead_letter(
                path, "read", f"unsupported file type (use {TEXT_EXTS + JSONL_EXTS + PARQUET_EXTS})"
            )
            return
        try:
            if kind == "text":
                with FileSystems.open(path) as f:
                    yield RawBook(book_id_from_path(path), path, f.read())
            elif kind == "jsonl":
                yield from self._jsonl(path)
            else:
                yield from self._parquet(path)
        except Exception as err:  # noqa: BLE001 - a broken file must not stop the job
            yield dead_letter(path, "read", err)

    def _row(self, uri: str, row: Any) -> Any:
        if not isinstance(row, dict):
            return dead_letter(
                uri, "read", f"a row must be an object with '{self.id_field}' and '{self.text_field}'"
            )
        book_id, text = row.get(self.id_field), row.get(self.text_field)
        if book_id is None or str(book_id).strip() == "":
            return dead_letter(uri, "read", f"row has no '{self.id_field}'")
        if not isinstance(text, str):
            return dead_letter(uri, "read", f"row has no text in '{self.text_field}'")
        return RawBook(_UNSAFE.sub("-", str(book_id)).strip("-") or "book", uri, text)

    def _jsonl(self, path: str) -> Iterator[Any]:
        with FileSystems.open(path) as f:
            for lineno, line in enumerate(f, start=1):
                uri = f"{path}#L{lineno}"
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8", errors="strict"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    yield dead_letter(uri, "read", err)
                    continue
                yield self._row(uri, row)

    def _parquet(self, path: str) -> Iterator[Any]:
        import pyarrow.parquet as pq

        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in (self.id_field, self.text_field) if c not in pf.schema_arrow.names]
            if missing:
                yield dead_letter(path, "read", f"Parquet file lacks column(s) {missing}")
                return
            n = 0
            for group in range(pf.num_row_groups):
                for row in pf.read_row_group(group, columns=[self.id_field, self.text_field]).to_pylist():
                    yield self._row(f"{path}#row{n}", row)
                    n += 1


class DropDuplicateIds(beam.DoFn):
    """(book_id, [RawBook]) → the first by uri; the others are dead-lettered (ids must be unique)."""

    def process(self, item: tuple[str, Any]) -> Iterator[Any]:
        book_id, books = item
        books = sorted(books, key=lambda b: b.uri)
        yield books[0]
        for dup in books[1:]:
            yield dead_letter(dup.uri, "read", f"duplicate book id {book_id!r} (kept {books[0].uri})")


class ReadBooks(beam.PTransform):
    """patterns → PCollection[RawBook] (main) and dead-letter JSON lines (``DEAD``)."""

    def __init__(self, patterns: list[str], id_field: str = "id", text_field: str = "text"):
        super().__init__()
        self.patterns = patterns
        self.id_field = id_field
        self.text_field = text_field

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        matched = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> beam.ParDo(MatchInputs()).with_outputs(DEAD, main="paths")
        )
        read = (
            matched.paths
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(ReadBookFile(self.id_field, self.text_field)).with_outputs(DEAD, main="books")
        )
        unique = (
            read.books
            | "ById" >> beam.Map(lambda b: (b.book_id, b))
            | "Group" >> beam.GroupByKey()
            | "Dedup" >> beam.ParDo(DropDuplicateIds()).with_outputs(DEAD, main="books")
        )
        dead = (matched[DEAD], read[DEAD], unique[DEAD]) | "DeadLetters" >> beam.Flatten()
        return unique.books, dead
