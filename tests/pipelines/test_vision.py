"""The vision job end to end on the DirectRunner: records, resume, bad input, retries, preview, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lwmkit.pipelines.vision.decode import DecodeConfig, iter_frames, plan_media
from lwmkit.pipelines.vision.driver import VisionJobFailed
from lwmkit.pipelines.vision.job import run
from lwmkit.schemas.dead_letters import read_dead_letters
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import VISION_RECORD, read_table, vision_record_id


def _records(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("vision-*.parquet")):
        rows += read_table(str(path), VISION_RECORD).to_pylist()
    return sorted(rows, key=lambda r: (r["uri"], r["start_s"]))


def _digest(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("vision-*.parquet"), *out.glob("dead_letters/*.jsonl")])
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _args(inputs: str, out: Path, ckpt: str, *extra: str) -> list[str]:
    return ["--inputs", inputs, "--output", str(out), "--vqgan", ckpt, "--num-shards", "3", *extra]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, vision_media, vision_names, vqgan_checkpoint):
    """One run over every good edge-case file plus a real sample clip, at 2 fps, max 4 frames."""
    media = tmp_path_factory.mktemp("good")
    for name in vision_names[0]:
        shutil.copy(vision_media[name], media / name)
    out = tmp_path_factory.mktemp("out") / "records"
    summary = run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "2", "--max-frames", "4"))
    return media, out, summary


def test_every_good_input_becomes_records_with_frames_per_fps(good_run, vqgan_checkpoint):
    media, out, summary = good_run
    assert summary.attempted == 7 and summary.failed == 0 and summary.skipped == 0
    rows = {Path(r["uri"]).name: r for r in _records(out)}
    assert set(rows) == {
        "image.png",
        "tall.jpg",
        "one_frame.mp4",
        "wide.mp4",
        "vfr.mp4",
        "image_named.mp4",
        "video_named.jpg",
    }
    # 2 fps: wide.mp4 (2 s) has 4 buckets; vfr.mp4 (3 s) has 6 -> capped at max_frames 4
    expected = {"image.png": 1, "tall.jpg": 1, "image_named.mp4": 1, "one_frame.mp4": 1, "wide.mp4": 4,
                "video_named.jpg": 4, "vfr.mp4": 4}  # fmt: skip
    from lwmkit.tokenizers.vqgan_checkpoint import read_checkpoint

    ckpt_id = read_checkpoint(vqgan_checkpoint).id
    for name, row in rows.items():
        assert row["n_frames"] == expected[name], name
        assert len(row["tokens"]) == 256 * row["n_frames"]
        assert row["kind"] == ("image" if name in ("image.png", "tall.jpg", "image_named.mp4") else "video")
        assert row["fps"] == (0.0 if row["kind"] == "image" else 2.0)
        assert row["tokenizer_id"] == ckpt_id and row["source"] == "vision"
        assert json.loads(row["decode_settings"])["max_frames"] == 4
        assert row["id"] == vision_record_id(row["uri"], row["start_s"], row["end_s"])
    assert (rows["wide.mp4"]["width"], rows["wide.mp4"]["height"]) == (400, 120)
    assert rows["tall.jpg"]["width"] == 90 and rows["vfr.mp4"]["end_s"] == pytest.approx(3.0)
    assert summary.records == 7 and summary.frames == sum(expected.values())


def test_codes_are_the_vqgan_codes_of_the_decoded_frames(good_run, vqgan_checkpoint):
    from lwmkit.tokenizers import vqgan

    media, out, _ = good_run
    row = next(r for r in _records(out) if r["uri"].endswith("wide.mp4"))
    cfg = DecodeConfig(**json.loads(row["decode_settings"]))
    frames = np.stack([f for _, _, f in iter_frames(plan_media(row["uri"], cfg), cfg)])
    codes = vqgan.load(vqgan_checkpoint).encode(frames)
    assert np.array_equal(np.asarray(row["tokens"]).reshape(-1, 256), codes)


def test_rerun_skips_finished_inputs_and_keeps_the_bytes(good_run, vqgan_checkpoint):
    media, out, _ = good_run
    before = _digest(out)
    summary = run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "2", "--max-frames", "4"))
    assert summary.attempted == 0 and summary.skipped == 7
    assert _digest(out) == before
    with pytest.raises(ContractError, match="fps"):  # other settings must not mix into this output
        run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "1", "--max-frames", "4"))


def test_manifest_with_captions_and_clip_ranges(tmp_path, sample_dir, vision_media, vqgan_checkpoint):
    bikes = str(sample_dir / "videos" / "bikes.mp4")
    manifest = tmp_path / "inputs.jsonl"
    lines = [{"uri": bikes, "caption": "people on bikes", "start_s": 2.0, "end_s": 5.0},
             {"uri": vision_media["image.png"], "caption": "a test card"}]  # fmt: skip
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    run(_args(str(manifest), out, vqgan_checkpoint, "--fps", "1", "--clip-seconds", "2"))
    rows = _records(out)
    clips = [r for r in rows if r["uri"] == bikes]
    assert [(r["start_s"], r["end_s"], r["n_frames"]) for r in clips] == [(2.0, 4.0, 2), (4.0, 5.0, 1)]
    assert {r["caption"] for r in rows} == {"people on bikes", "a test card"}
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,caption,speed\nx.mp4,hi,3\n")
    with pytest.raises(ContractError, match="speed"):
        run(_args(str(bad), tmp_path / "out2", vqgan_checkpoint))


def test_faulty_files_are_dead_lettered_and_good_ones_tokenized(
    tmp_path, vision_media, vision_names, vqgan_checkpoint
):
    good, bad = ("image.png", "one_frame.mp4", "wide.mp4"), vision_names[1]
    media = tmp_path / "mixed"
    media.mkdir()
    for name in (*good, *bad):
        shutil.copy(vision_media[name], media / name)
    os.mkfifo(media / "stuck.mp4")  # opening it blocks forever: a decoder that hangs
    out = tmp_path / "out"
    with pytest.raises(VisionJobFailed, match="6 of 9"):  # 67% > the default 10%
        run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "1", "--decode-timeout-s", "3"))
    assert {Path(r["uri"]).name for r in _records(out)} == set(good)
    letters = read_dead_letters(str(out / "dead_letters" / "vision.jsonl"))
    assert sorted(Path(d.uri).name for d in letters) == sorted([*bad, "stuck.mp4"])
    assert all(d.stage == "decode" and d.job == "vision" and d.message for d in letters)
    kinds = {Path(d.uri).name: d.error_class for d in letters}
    assert kinds["audio.m4a"] == "NoFrames" and kinds["truncated.mp4"] == "TruncatedMedia"
    assert kinds["random.mp4"] == kinds["empty.mp4"] == kinds["notes.txt"] == "UnreadableMedia"
    assert kinds["stuck.mp4"] == "DecodeTimeout"
    # the same command again: nothing left to try, but the output still holds 6 failed of 9, so
    # it fails again and says the failures are from the earlier run
    with pytest.raises(VisionJobFailed, match="6 of 9 inputs failed .*0 in this run, 6 by earlier runs"):
        run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "1", "--decode-timeout-s", "3"))
    (media / "stuck.mp4").unlink()
    # below the threshold the same run succeeds; dead letters do not change on a re-run
    before = _digest(out)
    summary = run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "1", "--max-failure-ratio", "0.7"))
    assert summary.attempted == 0 and _digest(out) == before
    # fix one bad file, retry only the dead letters: it is tokenized and leaves the dead letters
    shutil.copy(vision_media["vfr.mp4"], media / "random.mp4")
    summary = run(["--output", str(out), "--vqgan", vqgan_checkpoint, "--num-shards", "3", "--fps", "1",
                   "--retry-dead-letters", "--max-failure-ratio", "1"])  # fmt: skip
    assert summary.attempted == 6 and summary.failed == 5  # stuck.mp4 is gone now: a read error
    names = {Path(r["uri"]).name for r in _records(out)}
    assert names == {*good, "random.mp4"}
    assert "random.mp4" not in {
        Path(d.uri).name for d in read_dead_letters(str(out / "dead_letters" / "vision.jsonl"))
    }


def test_preview_is_rebuilt_only_when_what_it_shows_changes(good_run, vqgan_checkpoint):
    from lwmkit.pipelines.vision.preview import update_preview

    _, out, _ = good_run
    png, shown, rebuilt = update_preview(str(out), 2, checkpoint=vqgan_checkpoint, frames=1)
    before = Path(png).read_bytes()
    assert (shown, rebuilt) == (2, True)
    assert update_preview(str(out), 2, checkpoint=vqgan_checkpoint, frames=1) == (png, 2, False)
    assert Path(png).read_bytes() == before
    # other records shown: rebuilt
    assert update_preview(str(out), 1, checkpoint=vqgan_checkpoint, frames=1)[1:] == (1, True)


def test_preview_grid(good_run, vqgan_checkpoint, tmp_path):
    from PIL import Image

    from lwmkit.pipelines.vision.preview import write_preview

    _, out, _ = good_run
    # every record (7): which 3 come first goes by id, a hash of the uri, which holds this run's tmp path --
    # and 4 of the 7 records have 1 frame, so 3 of them could make a 2-column grid
    png = write_preview(str(out), 7, checkpoint=vqgan_checkpoint, dest=str(tmp_path / "p.png"), frames=2)
    image = Image.open(png)
    assert image.size == (4 * 256, 7 * (256 + 24))
    pixels = np.asarray(image.convert("RGB"))
    assert pixels[:256, :256].std() > 10 and pixels[:256, 256:512].std() > 10  # original and reconstruction
    # a budget above the records' frame counts: as many columns as the longest record, none left blank
    from lwmkit.pipelines.vision.preview import first_records

    longest = max(r["n_frames"] for r in first_records(str(out), 3))
    wide = Image.open(write_preview(str(out), 3, checkpoint=vqgan_checkpoint, dest=str(tmp_path / "w.png"), frames=64))
    assert wide.size[0] == 2 * min(64, longest) * 256
    assert np.asarray(wide.convert("RGB"))[:, -256:].std() > 10  # the last column is drawn


@pytest.mark.slow
def test_cli_and_module_entry_points(tmp_path, vision_media, vqgan_checkpoint, capsys):
    from lwmkit.cli import main

    main(["vision", "--help"])
    help_text = capsys.readouterr().out
    assert "--retry-dead-letters" in help_text and "--max-failure-ratio" in help_text
    bad = subprocess.run([sys.executable, "-m", "lwmkit.pipelines.vision.job", "--inputs", str(tmp_path / "nothing*"),
                          "--output", str(tmp_path / "o"), "--vqgan", vqgan_checkpoint], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "matches no files" in bad.stderr
    media = tmp_path / "m"
    media.mkdir()
    shutil.copy(vision_media["random.mp4"], media / "random.mp4")
    shutil.copy(vision_media["image.png"], media / "image.png")
    failed = subprocess.run(["lwmkit", "vision", "--inputs", str(media), "--output", str(tmp_path / "o"),
                             "--vqgan", vqgan_checkpoint, "--max-failure-ratio", "0.4"], capture_output=True, text=True)  # fmt: skip
    assert failed.returncode == 1 and "1 of 2 inputs failed" in failed.stderr
    assert len(pq.read_table(next((tmp_path / "o").glob("vision-*.parquet")))) == 1


def test_two_fresh_runs_write_the_same_dead_letters(tmp_path, vision_media, damaged_media, vqgan_checkpoint):
    from lwmkit.schemas.dead_letters import ERROR_CLASSES

    media = tmp_path / "bad"
    media.mkdir()
    for name in ("truncated.mp4", "random.mp4", "audio.m4a"):
        shutil.copy(vision_media[name], media / name)
    shutil.copy(damaged_media["broken_packet.mp4"], media / "broken_packet.mp4")  # decord fails mid-stream
    files = []
    for out in (tmp_path / "a", tmp_path / "b"):
        with pytest.raises(VisionJobFailed, match="4 of 4"):
            run(_args(str(media / "*"), out, vqgan_checkpoint, "--fps", "4"))
        files.append((out / "dead_letters" / "vision.jsonl").read_bytes())
    assert files[0] == files[1]
    letters = read_dead_letters(str(tmp_path / "a" / "dead_letters" / "vision.jsonl"))
    letters = {Path(d.uri).name: d for d in letters}
    assert all(d.error_class in ERROR_CLASSES for d in letters.values())
    broken = letters["broken_packet.mp4"]
    assert broken.error_class == "CorruptMedia" and "mid-stream" in broken.message
    assert not any(s in broken.message for s in ("/github", ".cc:", " @ 0x", "[1", "[0", "[2"))
