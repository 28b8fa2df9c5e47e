"""Parquet contracts: vision records, book chunks (with QA pairs) and dead letters.

Each contract is a pyarrow schema whose metadata names the contract and its format
version; :func:`read_table` refuses a file whose metadata, columns or types do not match,
naming the file and the field. A contract may still read files of its earlier versions
(``ParquetContract.upgrades``): their own columns are checked, then the rows are lifted to the
current version (``BOOK_CHUNK`` v1 files, whose QA pairs carry no ``grounding``, read as v2). Row validators check what a schema cannot (code ranges,
lengths). Beam writers pass ``contract.schema`` to ``WriteToParquet`` so the metadata lands
in every shard.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.vocab import CODES_PER_FRAME

META_CONTRACT = b"lwmkit.contract"
META_VERSION = b"lwmkit.format_version"


@dataclass(frozen=True)
class ParquetContract:
    """A named, versioned pyarrow schema."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    # Earlier versions this lwmkit still reads: (version, its fields, rows -> rows of this version).
    upgrades: tuple[tuple[int, tuple[pa.Field, ...], Callable[[list[dict]], list[dict]]], ...] = ()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            list(self.fields),
            metadata={META_CONTRACT: self.name.encode(), META_VERSION: str(self.version).encode()},
        )

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]


VISION_RECORD = ParquetContract(
    "vision_record",
    1,
    (
        pa.field("id", pa.string(), nullable=False),  # sha256(uri, clip range)[:32]
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "image" | "video"
        pa.field("caption", pa.string(), nullable=True),
        pa.field("fps", pa.float32(), nullable=False),  # sampled frames per second (0 for images)
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("tokens", pa.list_(pa.int16()), nullable=False),  # n_frames * 256, row-major 16x16
        pa.field("tokenizer_id", pa.string(), nullable=False),  # VQGAN checkpoint hash
        pa.field("width", pa.int32(), nullable=False),  # source width/height in pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("decode_settings", pa.string(), nullable=False),  # canonical JSON
    ),
)

QA_PAIR_V1 = pa.struct([pa.field("question", pa.string()), pa.field("answer", pa.string())])
# v2: each pair carries its grounding in the chunk (share of the answer's content words found
# there, from the books job's QA gate; null when no gate graded it).
QA_PAIR = pa.struct(
    [pa.field("question", pa.string()), pa.field("answer", pa.string()), pa.field("grounding", pa.float32())]
)


def _book_chunk_fields(qa_pair: pa.DataType) -> tuple[pa.Field, ...]:
    return (
        pa.field("book_id", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),  # f"{book_id}/{chunk_index:06d}"
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("text_sha256", pa.string(), nullable=False),
        pa.field("qa", pa.list_(qa_pair), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("tokenizer_id", pa.string(), nullable=False),
    )


def _book_chunk_v1_to_v2(rows: list[dict]) -> list[dict]:
    return [{**r, "qa": [{**p, "grounding": None} for p in r["qa"]]} for r in rows]


BOOK_CHUNK = ParquetContract(
    "book_chunk",
    2,
    _book_chunk_fields(QA_PAIR),
    upgrades=((1, _book_chunk_fields(QA_PAIR_V1), _book_chunk_v1_to_v2),),
)

DEAD_LETTER = ParquetContract(
    "dead_letter",
    1,
    (
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # e.g. "decode", "tokenize", "qa"
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("job", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),  # e.g. a model's raw unparsable reply
    ),
)

CONTRACTS = {c.name: c for c in (VISION_RECORD, BOOK_CHUNK, DEAD_LETTER)}
VISION_KINDS = ("image", "video")


def stable_id(*parts: Any, length: int = 32) -> str:
    """A deterministic id: sha256 over the parts joined by NUL bytes, hex, truncated."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8"))
    return digest.hexdigest()[:length]


def vision_record_id(uri: str, start_s: float, end_s: float) -> str:
    return stable_id(uri, f"{start_s:.6f}", f"{end_s:.6f}")


def chunk_id(book_id: str, chunk_index: int) -> str:
    return f"{book_id}/{chunk_index:06d}"


def _check_schema(schema: pa.Schema, contract: ParquetContract, source: str) -> Callable | None:
    """Check ``schema`` against ``contract``; returns the upgrade for an older readable version."""
    meta = schema.metadata or {}
    name = meta.get(META_CONTRACT, b"").decode() or None
    if name != contract.name:
        raise ContractError(
            f"is not a {contract.name} file (its contract is {name!r})", field=META_CONTRACT.decode(), source=source
        )
    try:
        version = int(meta.get(META_VERSION, b"-1"))
    except ValueError:
        version = -1
    fields, upgrade = contract.fields, None
    for old, old_fields, lift in contract.upgrades:
        if version == old:
            fields, upgrade = old_fields, lift
    if version != contract.version and upgrade is None:
        readable = sorted([contract.version, *(u[0] for u in contract.upgrades)])
        raise ContractError(
            f"format version {version} is not supported (this lwmkit reads {', '.join(map(str, readable))})",
            field="format_version",
            source=source,
        )
    for f in fields:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            raise ContractError("column is missing", field=f.name, source=source)
        if not schema.field(idx).type.equals(f.type):
            raise ContractError(
                f"has type {schema.field(idx).type}, expected {f.type}", field=f.name, source=source
            )
    extra = [n for n in schema.names if n not in {f.name for f in fields}]
    if extra:
        raise ContractError("unknown column", field=extra[0], source=source)
    return upgrade


def read_table(path: str, contract: ParquetContract, *, filesystem: Any = None) -> pa.Table:
    """Read one Parquet file and check it against ``contract`` (metadata, columns, types)."""
    try:
        pf = pq.ParquetFile(path, filesystem=filesystem) if filesystem else pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ContractError(f"cannot be read as Parquet ({err})", source=str(path)) from None
    upgrade = _check_schema(pf.schema_arrow, contract, str(path))
    table = pf.read()
    if upgrade is not None:
        table = pa.Table.from_pylist(upgrade(table.to_pylist()), schema=contract.schema)
    validate_rows(table.to_pylist(), contract, source=str(path))
    return table


def write_table(rows: Iterable[Mapping[str, Any]], contract: ParquetContract, path: str) -> None:
    """Validate ``rows`` and write them as one Parquet file carrying the contract metadata."""
    rows = list(rows)
    validate_rows(rows, contract, source=str(path))
    table = pa.Table.from_pylist(rows, schema=contract.schema)
    pq.write_table(table, path)


def table_bytes(rows: Iterable[Mapping[str, Any]], contract: ParquetContract, *,
                metadata: Mapping[bytes, bytes] | None = None) -> bytes:
    """Validate ``rows`` and return one Parquet file (zstd) carrying the contract metadata plus
    ``metadata``: the same rows in the same order give the same bytes."""
    rows = list(rows)
    validate_rows(rows, contract)
    schema = contract.schema
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def validate_rows(rows: Iterable[Mapping[str, Any]], contract: ParquetContract, *, source: str = "") -> None:
    """Check each row's keys and the invariants a schema cannot express."""
    check = _ROW_CHECKS.get(contract.name)
    columns = set(contract.columns)
    for i, row in enumerate(rows):
        where = f"{source}[row {i}]" if source else f"row {i}"
        unknown = set(row) - columns
        if unknown:
            raise ContractError("unknown column", field=sorted(unknown)[0], source=where)
        for f in contract.fields:
            if row.get(f.name) is None and not f.nullable:
                raise ContractError("is required but missing or null", field=f.name, source=where)
        if check:
            try:
                check(row)
            except ContractError as err:
                raise err.located(source=where) from None


def _check_vision_row(row: Mapping[str, Any]) -> None:
    if row["kind"] not in VISION_KINDS:
        raise ContractError(f"must be one of {list(VISION_KINDS)}, got {row['kind']!r}", field="kind")
    n = row["n_frames"]
    if n < 1 or (row["kind"] == "image" and n != 1):
        raise ContractError(f"invalid frame count {n} for kind {row['kind']}", field="n_frames")
    tokens = np.asarray(row["tokens"])
    if tokens.size != n * CODES_PER_FRAME:
        raise ContractError(f"has {tokens.size} codes, expected n_frames*{CODES_PER_FRAME}={n * CODES_PER_FRAME}", field="tokens")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 8192):
        raise ContractError("codes must lie in [0, 8192)", field="tokens")
    if row["end_s"] < row["start_s"]:
        raise ContractError("end_s is before start_s", field="end_s")
    if row["id"] != vision_record_id(row["uri"], row["start_s"], row["end_s"]):
        raise ContractError("does not match hash(uri, start_s, end_s)", field="id")


def _check_book_row(row: Mapping[str, Any]) -> None:
    if row["chunk_id"] != chunk_id(row["book_id"], row["chunk_index"]):
        raise ContractError("must be '{book_id}/{chunk_index:06d}'", field="chunk_id")
    if row["n_tokens"] < 0:
        raise ContractError("must be >= 0", field="n_tokens")
    if hashlib.sha256(row["text"].encode("utf-8")).hexdigest() != row["text_sha256"]:
        raise ContractError("does not match sha256(text)", field="text_sha256")
    for j, pair in enumerate(row["qa"]):
        for key in ("question", "answer"):
            if not isinstance(pair.get(key), str) or not pair[key].strip():
                raise ContractError("must be a non-empty string", field=f"qa[{j}].{key}")
        grounding = pair.get("grounding")
        if grounding is not None and not 0.0 <= grounding <= 1.0:
            raise ContractError(f"must lie in [0, 1], got {grounding}", field=f"qa[{j}].grounding")


_ROW_CHECKS = {VISION_RECORD.name: _check_vision_row, BOOK_CHUNK.name: _check_book_row}
