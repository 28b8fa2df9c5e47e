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


# A mid-stream decord error as decord 0.6 raises it: log times and the build machine's paths.
DECORD_RAW = (
    "[14:40:15] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [14:40:15] "
    "/github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: "
    "avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet."
)


def test_messages_are_normalised_to_stable_text():
    from lwmkit.schemas.dead_letters import normalise_message

    later = DECORD_RAW.replace("14:40:15", "09:01:59").replace("/github/workspace", "/build/x86_64")
    assert normalise_message(DECORD_RAW) == normalise_message(later)
    clean = normalise_message(DECORD_RAW)
    assert clean.startswith("Check failed:") and clean.endswith("Error sending packet.")
    assert normalise_message("[h264 @ 0x55d1a2b3c4d5] Invalid NAL size") == "[h264] Invalid NAL size"
    assert normalise_message("<obj at 0x7f3a2b1c0d9e> gone") == "<obj at 0x?> gone"
    # what stays: the input's own path, file offsets, numbers
    kept = "/data/clip.mp4: Element at 0x2394f ending at 0x3d53598ec exceeds its parent"
    assert normalise_message(kept) == kept


def test_error_classes_come_from_the_one_documented_list():
    from lwmkit.schemas.dead_letters import ERROR_CLASSES, Rejected, error_class_of

    cases = {
        json.JSONDecodeError("Expecting value", "x", 0): "MalformedInput",
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"): "MalformedInput",
        FileNotFoundError(2, "No such file"): "ReadError",
        ContractError("bad", field="x"): "ContractError",
        Rejected("record has no caption"): "Rejected",
        KeyError("boom"): "InternalError",
        type("DECORDError", (RuntimeError,), {})("x"): "InternalError",
    }
    for err, expected in cases.items():
        assert error_class_of(err) == expected, err
        letter = DeadLetter.from_exception("u", "read", "job", err)
        assert letter.error_class in ERROR_CLASSES and letter.message
    assert DeadLetter.from_exception("u", "read", "job", KeyError("boom")).message == "KeyError: 'boom'"
    assert all(isinstance(v, str) and v for v in ERROR_CLASSES.values())
