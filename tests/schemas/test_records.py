from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lwmkit.schemas import (
    BOOK_CHUNK,
    DEAD_LETTER,
    VISION_RECORD,
    ContractError,
    chunk_id,
    read_table,
    vision_record_id,
    write_table,
)


def vision_row(n_frames: int = 2, kind: str = "video") -> dict:
    uri = "gs://bucket/clip.mp4"
    return {
        "id": vision_record_id(uri, 0.0, 2.0),
        "source": "clips",
        "uri": uri,
        "kind": kind,
        "caption": "a rabbit",
        "fps": 1.0,
        "start_s": 0.0,
        "end_s": 2.0,
        "n_frames": n_frames,
        "tokens": np.arange(n_frames * 256, dtype=np.int16).tolist(),
        "tokenizer_id": "abc",
        "width": 1280,
        "height": 720,
        "decode_settings": '{"fps": 1}',
    }


def book_row(index: int = 0) -> dict:
    text = "It was a dark and stormy night."
    return {
        "book_id": "botchan",
        "chunk_index": index,
        "chunk_id": chunk_id("botchan", index),
        "source": "books",
        "text": text,
        "n_tokens": 9,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "qa": [{"question": "What kind of night?", "answer": "Dark and stormy.", "grounding": 0.75}],
        "model": "smollm2",
        "prompt_version": "qa-v1",
        "tokenizer_id": "abc",
    }


def dead_row() -> dict:
    return {"uri": "x.mp4", "stage": "decode", "error_class": "DecodeError", "message": "truncated", "job": "vision", "detail": None}


@pytest.mark.parametrize(
    "contract,row", [(VISION_RECORD, vision_row()), (BOOK_CHUNK, book_row()), (DEAD_LETTER, dead_row())]
)
def test_round_trip(tmp_path, contract, row):
    path = tmp_path / f"{contract.name}.parquet"
    write_table([row, row], contract, str(path))
    table = read_table(str(path), contract)
    assert table.num_rows == 2
    assert table.to_pylist()[0] == row
    assert table.schema.metadata[b"lwmkit.contract"] == contract.name.encode()


def _write_raw(path, table):
    pq.write_table(table, str(path))
    return str(path)


def test_missing_column_names_the_field(tmp_path):
    table = pa.Table.from_pylist([vision_row()], schema=VISION_RECORD.schema).drop_columns(["caption"])
    table = table.replace_schema_metadata(VISION_RECORD.schema.metadata)
    with pytest.raises(ContractError, match="field 'caption': column is missing"):
        read_table(_write_raw(tmp_path / "v.parquet", table), VISION_RECORD)


def test_wrong_type_names_the_field(tmp_path):
    fields = [pa.field("n_frames", pa.string()) if f.name == "n_frames" else f for f in VISION_RECORD.fields]
    schema = pa.schema(fields, metadata=VISION_RECORD.schema.metadata)
    row = vision_row() | {"n_frames": "2"}
    path = _write_raw(tmp_path / "v.parquet", pa.Table.from_pylist([row], schema=schema))
    with pytest.raises(ContractError, match=r"v.parquet: field 'n_frames': has type string, expected int32"):
        read_table(path, VISION_RECORD)


def test_unknown_column_is_an_error(tmp_path):
    schema = VISION_RECORD.schema.append(pa.field("extra", pa.int32()))
    path = _write_raw(tmp_path / "v.parquet", pa.Table.from_pylist([vision_row() | {"extra": 1}], schema=schema))
    with pytest.raises(ContractError, match="field 'extra': unknown column"):
        read_table(path, VISION_RECORD)
    with pytest.raises(ContractError, match="unknown column"):
        write_table([vision_row() | {"extra": 1}], VISION_RECORD, str(tmp_path / "w.parquet"))


def test_wrong_format_version_is_refused(tmp_path):
    meta = dict(VISION_RECORD.schema.metadata) | {b"lwmkit.format_version": b"99"}
    table = pa.Table.from_pylist([vision_row()], schema=VISION_RECORD.schema.with_metadata(meta))
    with pytest.raises(ContractError, match="format version 99 is not supported"):
        read_table(_write_raw(tmp_path / "v.parquet", table), VISION_RECORD)


def test_wrong_contract_is_refused(tmp_path):
    path = tmp_path / "b.parquet"
    write_table([book_row()], BOOK_CHUNK, str(path))
    with pytest.raises(ContractError, match="is not a vision_record file"):
        read_table(str(path), VISION_RECORD)


def test_not_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ContractError, match="junk.parquet: cannot be read as Parquet"):
        read_table(str(path), VISION_RECORD)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"tokens": [1] * 100}, "tokens"),
        ({"kind": "gif"}, "kind"),
        ({"kind": "image"}, "n_frames"),
        ({"id": "0" * 32}, "id"),
        ({"tokens": [9000] * 512}, "tokens"),
        ({"uri": None}, "uri"),
    ],
)
def test_vision_row_invariants(tmp_path, change, field):
    with pytest.raises(ContractError, match=f"field '{field}'"):
        write_table([vision_row() | change], VISION_RECORD, str(tmp_path / "v.parquet"))


@pytest.mark.parametrize(
    "change,field",
    [
        ({"chunk_id": "botchan/1"}, "chunk_id"),
        ({"text": "changed"}, "text_sha256"),
        ({"qa": [{"question": "", "answer": "x"}]}, r"qa\[0\].question"),
        ({"qa": [{"question": "Why?", "answer": "x", "grounding": 1.5}]}, r"qa\[0\].grounding"),
    ],
)
def test_book_row_invariants(tmp_path, change, field):
    with pytest.raises(ContractError, match=f"row 0.*field '{field}'"):
        write_table([book_row() | change], BOOK_CHUNK, str(tmp_path / "b.parquet"))


def test_ids_are_stable():
    assert vision_record_id("a.mp4", 0, 10) == vision_record_id("a.mp4", 0.0, 10.0)
    assert vision_record_id("a.mp4", 0, 10) != vision_record_id("a.mp4", 10, 20)
    assert chunk_id("b", 7) == "b/000007"


def test_book_chunks_of_format_version_1_are_still_read(tmp_path):
    from lwmkit.schemas.records import QA_PAIR_V1

    v1 = BOOK_CHUNK.upgrades[0][1]
    schema = pa.schema(list(v1), metadata={b"lwmkit.contract": b"book_chunk", b"lwmkit.format_version": b"1"})
    old = book_row() | {"qa": [{"question": "What kind of night?", "answer": "Dark and stormy."}]}
    assert schema.field("qa").type == pa.list_(QA_PAIR_V1)
    path = _write_raw(tmp_path / "v1.parquet", pa.Table.from_pylist([old], schema=schema))
    table = read_table(path, BOOK_CHUNK)  # lifted to the current version: grounding unknown
    assert table.schema.equals(BOOK_CHUNK.schema) and BOOK_CHUNK.version == 2
    assert table.to_pylist()[0]["qa"] == [{"question": "What kind of night?", "answer": "Dark and stormy.", "grounding": None}]
    meta = dict(schema.metadata) | {b"lwmkit.format_version": b"3"}
    with pytest.raises(ContractError, match="format version 3 is not supported .*reads 1, 2"):
        read_table(_write_raw(tmp_path / "v3.parquet", pa.Table.from_pylist([old], schema=schema.with_metadata(meta))), BOOK_CHUNK)
