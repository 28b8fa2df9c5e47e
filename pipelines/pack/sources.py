"""Reading a mixture's sources for the pack job: files -> rows -> formatted examples.

Files are listed with fsspec at pipeline construction (sorted, so the job's input is fixed
before it starts; local paths and bucket URLs alike). Each file is read by one worker;
its rows are formatted on any worker. Bad files and bad rows become dead letters, never
silent drops.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from lwmkit.pipelines.pack.formatting import Example, book_chat_examples, text_example, vision_example
from lwmkit.schemas.dead_letters import DeadLetter
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.mixture import SourceConfig
from lwmkit.schemas.records import BOOK_CHUNK, VISION_RECORD, read_table, stable_id, validate_rows

JOB = "pack"
DEAD = "dead_letters"
COUNTS = "counts"
_WILDCARDS = "*?["


def list_files(source: SourceConfig) -> list[tuple[str, str]]:
    """``(url, relative name)`` of every file the source's globs match, sorted.

    The relative name (the path below the glob's fixed prefix) goes into example ids, so
    moving a dataset to another folder or a bucket does not change the shards.
    """
    import fsspec

    found: dict[str, str] = {}
    for pattern in source.paths:
        fs, fs_pattern = fsspec.core.url_to_fs(pattern)
        cut = min((i for i, ch in enumerate(fs_pattern) if ch in _WILDCARDS), default=len(fs_pattern))
        base = posixpath.dirname(fs_pattern[:cut]) if cut < len(fs_pattern) else posixpath.dirname(fs_pattern)
        matches = (
            fs.glob(fs_pattern) if cut < len(fs_pattern) else ([fs_pattern] if fs.isfile(fs_pattern) else [])
        )
        for m in sorted(matches):
            if fs.isdir(m):
                continue
            url = fs.unstrip_protocol(m) if "://" in pattern else m
            found[url] = posixpath.relpath(m, base) if base else m
    if not found:
        raise ContractError(f"no files match {source.path!r}", field=f"sources.{source.name}.path")
    return sorted(found.items())


def _read_bytes(url: str) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


def _dead(uri: str, stage: str, err: BaseException, detail: str | None = None) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(DEAD, DeadLetter.from_exception(uri, stage, JOB, err, detail).to_json())


def _count(name: str, n: int = 1) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(COUNTS, (name, n))


def read_contract_rows(url: str, data: bytes, contract) -> tuple[list[dict], list[tuple[int, ContractError]]]:
    """Rows of a contract Parquet file; a bad row is returned as an error, the rest are kept.

    A file-level problem (not Parquet, wrong contract or columns) raises ContractError.
    """
    import pyarrow.parquet as pq

    try:
        return read_table(io.BytesIO(data), contract).to_pylist(), []
    except ContractError as err:
        if "[row " not in str(err.source or ""):
            raise err.located(source=url) from None
    good, bad = [], []
    for i, row in enumerate(pq.read_table(io.BytesIO(data)).to_pylist()):
        try:
            validate_rows([row], contract, source=f"{url}[row {i}]")
            good.append(row)
        except ContractError as err:
            bad.append((i, err))
    return good, bad


class ReadTextFile(beam.DoFn):
    """One text file -> ``(example_id, document)``: JSONL lines, Parquet rows or a whole .txt."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source

    def process(self, item: tuple[str, str]) -> Iterator[Any]:
        url, rel = item
        try:
            data = _read_bytes(url)
            docs = list(self._documents(url, data))
        except Exception as err:  # a file we cannot read at all: dead-letter it, go on
            yield _dead(url, "read", err)
            return
        for index, doc in docs:
            if isinstance(doc, BaseException):
                yield _dead(f"{url}:{index + 1}", "read", doc)
            elif not doc.strip():
                yield _count(f"skipped_empty.{self.source.name}")
            else:
                yield stable_id(self.source.name, rel, index), doc

    def _documents(self, url: str, data: bytes) -> Iterator[tuple[int, Any]]:
        field = self.source.text_field
        if url.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            if field not in table.column_names:
                raise ContractError(
                    f"has no column '{field}' (columns: {table.column_names})", field="text_field", source=url
                )
            for i, doc in enumerate(table.column(field).to_pylist()):
                yield (
                    i,
                    doc if isinstance(doc, str) else ContractError(f"row {i} is not a string", field=field),
                )
        elif url.endswith((".jsonl", ".ndjson")):
            for i, line in enumerate(data.decode("utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    doc = obj[field] if isinstance(obj, dict) else None
                    yield (
                        i,
                        doc
                        if isinstance(doc, str)
                        else ContractError(f"line has no string '{field}'", field=field),
                    )
                except json.JSONDecodeError as err:
                    yield i, err
        else:
            yield 0, data.decode("utf-8")


class ReadRecordFile(beam.DoFn):
    """One vision-record or book-chunk Parquet file -> its valid rows (bad rows: dead letters).

    Book chunks come out keyed by ``(source, book_id)`` so one book's chunks meet in one place.
    """

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self.contract = BOOK_CHUNK if source.kind == "book_qa_chat" else VISION_RECORD

    def process(self, item: tuple[str, str]) -> Iterator[Any]:
        url, _ = item
        try:
            rows, bad = read_contract_rows(url, _read_bytes(url), self.contract)
        except Exception as err:
            yield _dead(url, "read", err)
            return
        for i, err in bad:
            yield _dead(f"{url}[row {i}]", "read", err)
        for row in rows:
            if self.source.kind == "book_qa_chat":
                yield (row["book_id"], row)
            else:
                row["tokens"] = np.asarray(row["tokens"], dtype=np.int16)  # compact between workers
                yield row


class FormatExamples(beam.DoFn):
    """Rows of one source -> formatted :class:`Example`s (tokenizer loaded once per worker)."""

    def __init__(
        self,
        source: SourceConfig,
        tokenizer_path: str | None,
        seq_len: int,
        seed: int,
        overlong: str = "split",
    ) -> None:
        self.source, self.tokenizer_path, self.seq_len, self.seed = source, tokenizer_path, seq_len, seed
        # truncate/drop keep at most seq_len tokens of a document: tokenize no further than that
        self.text_limit = seq_len if overlong in ("truncate", "drop") else None

    def setup(self) -> None:
        from lwmkit.tokenizers.text import TextTokenizer

        self.tok = TextTokenizer.load(self.tokenizer_path)
        self.layout = self.tok.vocab_layout()

    def process(self, element: Any) -> Iterator[Example | beam.pvalue.TaggedOutput]:
        kind = self.source.kind
        try:
            if kind == "text":
                example_id, doc = element
                yield text_example(self.source, example_id, doc, self.tok, self.text_limit)
            elif kind == "book_qa_chat":
                book_id, chunks = element
                yield from book_chat_examples(self.source, list(chunks), self.tok, self.seq_len)
            else:
                yield vision_example(self.source, element, self.tok, self.layout, self.seed)
        except Exception as err:  # one bad example never stops the job
            uri = element[0] if kind != "image_text" and kind != "video_text" else element.get("uri", "?")
            yield _dead(f"{self.source.name}:{uri}", "format", err)


class ReadSource(beam.PTransform):
    """``ListFiles | ReadFiles | (GroupBooks) | Format`` for one source; tagged outputs
    ``examples``, ``dead_letters`` (JSON lines) and ``counts`` ((name, n))."""

    def __init__(
        self,
        source: SourceConfig,
        files: list[tuple[str, str]],
        tokenizer_path: str | None,
        seq_len: int,
        seed: int,
        overlong: str = "split",
    ):
        super().__init__()
        self.source, self.files = source, files
        self.fmt = FormatExamples(source, tokenizer_path, seq_len, seed, overlong)

    def expand(self, pbegin):
        reader = ReadTextFile(self.source) if self.source.kind == "text" else ReadRecordFile(self.source)
        read = (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(reader).with_outputs(DEAD, COUNTS, main="rows")
        )
        rows = read.rows
        if self.source.kind == "book_qa_chat":
            rows = rows | "GroupBooks" >> beam.GroupByKey()
        else:
            rows = rows | "SpreadRows" >> beam.Reshuffle()
        fmt = rows | "Format" >> beam.ParDo(self.fmt).with_outputs(DEAD, COUNTS, main="examples")
        dead = (read[DEAD], fmt[DEAD]) | "Dead" >> beam.Flatten()
        counts = (read[COUNTS], fmt[COUNTS]) | "Counts" >> beam.Flatten()
        return {"examples": fmt.examples, DEAD: dead, COUNTS: counts}
