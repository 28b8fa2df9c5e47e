"""Vision job inputs (glob, folder, CSV/JSONL/Parquet manifests) and the shared dead-letter writer."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lwmkit.pipelines.vision.inputs import MediaInput, read_inputs
from lwmkit.runtime.dead_letters import (
    WriteDeadLetters,
    dead_letter_path,
    letter,
    merge_letters,
    read_existing,
)
from lwmkit.schemas.dead_letters import DeadLetter
from lwmkit.schemas.errors import ContractError


def test_glob_and_folder_list_files_sorted_and_absolute(tmp_path, monkeypatch):
    for name in ("b.mp4", "a.png", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    by_glob = [i.uri for i in read_inputs("*")]
    by_folder = [i.uri for i in read_inputs(str(tmp_path))]
    assert by_glob == by_folder == [str(tmp_path / "a.png"), str(tmp_path / "b.mp4")]
    assert [i.uri for i in read_inputs("b.mp4")] == [str(tmp_path / "b.mp4")]
    with pytest.raises(ContractError, match="matches no files"):
        read_inputs(str(tmp_path / "*.mkv"))
    with pytest.raises(ContractError, match="no such file"):
        read_inputs(str(tmp_path / "missing.mp4"))


def test_csv_jsonl_and_parquet_manifests_agree(tmp_path):
    rows = [{"uri": "v/a.mp4", "caption": "a cat", "start_s": 1.5, "end_s": 4.0},
            {"uri": "/abs/b.png", "caption": None, "start_s": None, "end_s": None}]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.csv").write_text('uri,caption,start_s,end_s\nv/a.mp4,"a cat",1.5,4.0\n/abs/b.png,,,\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    expected = sorted(
        [MediaInput(str(tmp_path / "v" / "a.mp4"), "a cat", 1.5, 4.0), MediaInput("/abs/b.png")],
        key=lambda i: i.key,
    )
    for name in ("m.jsonl", "m.csv", "m.parquet"):
        assert read_inputs(str(tmp_path / name)) == expected, name


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"caption": "no uri"}\n', "uri"),
        ('{"uri": "a.mp4", "start_s": 5, "end_s": 2}\n', "end_s"),
        ('{"uri": "a.mp4", "start_s": -1}\n', "start_s"),
        ('{"uri": "a.mp4", "fps": 3}\n', "fps"),
        ("not json\n", "JSON"),
        ("", "lists no inputs"),
    ],
)
def test_bad_manifests_fail_fast_naming_row_and_field(tmp_path, text, match):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    with pytest.raises(ContractError, match=match):
        read_inputs(str(path))


def test_input_keys_and_buckets_are_stable():
    item = MediaInput("s3://b/x.mp4", "cap", 1.0, 2.0)
    assert MediaInput.from_key(item.key) == item
    assert item.bucket(16) == MediaInput("s3://b/x.mp4", "cap", 1.0, 2.0).bucket(16)
    assert 0 <= item.bucket(7) < 7


def test_merge_letters_is_sorted_deduplicated_and_replaces_retried_uris():
    old = [DeadLetter("a", "decode", "E", "old", "vision"), DeadLetter("b", "decode", "E", "kept", "vision")]
    new = [
        letter("a", "decode", "vision", ValueError("again")),
        letter("c", "read", "vision", OSError("gone")),
    ]
    text = merge_letters(old, new + new, frozenset({"a"})).decode()
    lines = [DeadLetter.from_json(line) for line in text.splitlines()]
    # undocumented exception types lead the message; their class is a documented one
    assert [(d.uri, d.message) for d in lines] == [
        ("a", "ValueError: again"),
        ("b", "kept"),
        ("c", "OSError: gone"),
    ]
    assert [d.error_class for d in lines] == ["InternalError", "E", "ReadError"]
    assert merge_letters(old, new, frozenset({"a"})) == merge_letters(
        list(reversed(old)), list(reversed(new)), frozenset({"a"})
    )


def test_write_dead_letters_transform(tmp_path):
    out = str(tmp_path / "job")
    for batch in (["x", "y"], []):  # a second run with no failures keeps the first run's letters
        with beam.Pipeline() as p:
            _ = (
                p
                | beam.Create([letter(u, "decode", "demo", RuntimeError(u)) for u in batch])
                | WriteDeadLetters(out, "demo")
            )
        assert [d.uri for d in read_existing(dead_letter_path(out, "demo"))] == ["x", "y"]
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create([], reshuffle=False).with_output_types(str)
            | WriteDeadLetters(out, "demo", replace_uris=["x"])
        )
    assert [d.uri for d in read_existing(dead_letter_path(out, "demo"))] == ["y"]


def test_captions_come_from_sidecars_beside_the_media(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.txt").write_text("A red car turns left.\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"caption": "Bikes on a road.", "source": "x"}))
    by_name = {i.uri.rsplit("/", 1)[1]: i.caption for i in read_inputs(str(tmp_path))}
    # sidecars are captions, not inputs; a .txt without media of its stem stays an input
    expected = {
        "a.mp4": "A red car turns left.",
        "b.mp4": "Bikes on a road.",
        "c.png": None,
        "notes.txt": None,
    }
    assert by_name == expected
    # the glob does not match the sidecars: they are still found beside the media
    assert read_inputs(str(tmp_path / "*.mp4"))[0].caption == "A red car turns left."
    (tmp_path / "b.json").write_text('["no object"]')
    with pytest.raises(ContractError, match=r"b.json: caption sidecar must be an object"):
        read_inputs(str(tmp_path / "*.mp4"))


def test_inputs_take_a_comma_separated_list(tmp_path):
    for folder, name in (("a", "x.mp4"), ("a", "y.png"), ("b", "z.mp4")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    listed = [i.uri for i in read_inputs(f"{tmp_path / 'a' / '*.mp4'}, {tmp_path / 'b'}")]
    assert listed == [str(tmp_path / "a" / "x.mp4"), str(tmp_path / "b" / "z.mp4")]
    odd = tmp_path / "c,d.mp4"  # a file whose own name holds a comma is not split
    odd.write_bytes(b"x")
    assert [i.uri for i in read_inputs(str(odd))] == [str(odd)]


def test_a_rerun_with_another_vqgan_is_refused_naming_where_an_earlier_default_lives(tmp_path):
    from lwmkit.pipelines.vision.output import JobSettings, check_settings
    from lwmkit.tokenizers.vqgan_history import EARLIER_DEFAULTS

    old_id, (rev, _) = next(iter(EARLIER_DEFAULTS.items()))
    made = JobSettings(num_shards=2, decode_settings="{}", tokenizer_id=old_id, source="media")
    check_settings(str(tmp_path), made)  # the first run writes vision_job.json
    check_settings(str(tmp_path), made)  # the same settings again: fine
    now = JobSettings(num_shards=2, decode_settings="{}", tokenizer_id="f" * 64, source="media")
    with pytest.raises(ContractError, match=f"--vqgan.*git show {rev}:tokenizers/data/vqgan-lwmkit-small.msgpack"):
        check_settings(str(tmp_path), now)
    with pytest.raises(ContractError, match="num_shards=2") as err:
        check_settings(str(tmp_path), JobSettings(3, "{}", old_id, "media"))
    assert "--vqgan" not in str(err.value)
