from __future__ import annotations

import json
import subprocess
import sys

import yaml

from lwmkit.cli import main


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lwmkit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands(tmp_path):
    proc = run("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("sample-data", "tokenizer", "validate"):
        assert name in proc.stdout
    # jobs listed in the order the data flows through them
    listed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    jobs = [n for n in listed if n in ("vision", "books", "pack", "audit", "train")]
    assert jobs == ["vision", "books", "pack", "audit", "train"], listed


def test_help_shows_conventional_metavars_and_no_beam_noise(tmp_path):
    train = run("train", "--help", cwd=tmp_path)
    assert train.returncode == 0
    assert "train [OPTIONS] CONFIG" in train.stdout
    for typed in ("<bool>", "<str>", "<int>", "<list[str]>", "{config}"):
        assert typed not in train.stdout, typed
    assert "TEXT ..." in train.stdout and "INTEGER" in train.stdout
    books = run("books", "--help", cwd=tmp_path)
    assert books.returncode == 0
    assert "apitools" not in books.stderr and "Resource module" not in books.stderr
    assert "--size" not in run("demo", "--help", cwd=tmp_path).stdout  # one size: not an option to offer


def test_validate_reports_a_config_typo_with_exit_2(tmp_path):
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"name": "a", "kind": "text", "path": "x", "weigth": 1}]}))
    proc = run("validate", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert "mix.yaml" in proc.stderr and "sources[0].weigth" in proc.stderr and "did you mean 'weight'" in proc.stderr
    cfg.write_text(yaml.safe_dump({"sources": [{"name": "a", "kind": "text", "path": "x", "weight": 1}]}))
    proc = run("validate", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0 and "valid mixture config" in proc.stdout


def test_tokenizer_info_in_process(capsys):
    try:
        main(["tokenizer", "info"])
    except SystemExit as ex:
        assert ex.code in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_layout"]["end_of_frame_id"] == 8192


def test_sample_data_is_idempotent(tmp_path, sample_dir):
    dest = tmp_path / "s"
    for _ in range(2):
        proc = run("sample-data", str(dest), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    listed = json.loads((dest / "SAMPLES.json").read_text())
    assert {f["path"] for f in listed} >= {"videos/bigbuckbunny.mp4", "books/botchan.txt"}
    assert all(len(f["sha256"]) == 64 for f in listed)


def test_usage_errors_are_one_line_not_a_traceback(tmp_path):
    proc = run("validate", "a", "b", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unexpected extra argument" in proc.stderr
