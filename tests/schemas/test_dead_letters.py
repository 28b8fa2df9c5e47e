from __future__ import annotations

import json

import pytest

from lwmkit.schemas import DEAD_LETTER, ContractError, DeadLetter, read_dead_letters, write_table


def test_jsonl_and_parquet_round_trip(tmp_path):
    letters = [
        DeadLetter.from_exception("a.mp4", "decode", "vision", ValueError("truncated moov atom")),
        DeadLetter("b.txt", "qa", "UnparsableReply", "no JSON", "books", detail="raw reply"),
    ]
    jsonl = tmp_path / "dead.jsonl"
    jsonl.write_text("".join(d.to_json() + "\n" for d in letters))
    assert read_dead_letters(str(jsonl)) == letters
    pq_path = tmp_path / "dead.parquet"
    write_table([{k: v for k, v in json.loads(d.to_json()).items() if k != "format_version"} for d in letters],
                DEAD_LETTER, str(pq_path))  # fmt: skip
    assert read_dead_letters(str(pq_path)) == letters


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"uri": "a", "stage": "decode", "error_class": "E", "message": "m"}', "field 'job': is required"),
        ('{"uri": "a", "stage": "decode", "error_class": "E", "message": "m", "job": "v", "format_version": 3}',
         "dead letter format version 3"),
        ('{"uri": "a", "stage": 5, "error_class": "E", "message": "m", "job": "v"}', "field 'stage': must be a string"),
        ('{"uri": "a", "stage": "d", "error_class": "E", "message": "m", "job": "v", "why": 1}', "field 'why': unknown key"),
        ("not json", "is not JSON"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "dead.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ContractError, match=message) as info:
        read_dead_letters(str(path))
    assert "dead.jsonl:1" in str(info.value)
