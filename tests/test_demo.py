"""End to end: ``lwmkit demo --size smallest`` runs every real job through its CLI, and every
artefact it reports is checked against its contract; a re-run resumes (skips everything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lwmkit.schemas.records import BOOK_CHUNK, VISION_RECORD, read_table

PNG = b"\x89PNG\r\n\x1a\n"
STAGES = {"s512": 512, "s1k": 1024}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, "-m", "lwmkit.cli", "demo", "--out", str(out), "--size", "smallest"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path


@pytest.mark.slow
def test_demo_vision_and_book_records(demo: Path):
    records = [r for f in sorted((demo / "vision").glob("vision-*.parquet"))
               for r in read_table(str(f), VISION_RECORD).to_pylist()]
    assert len(records) >= 3  # four sample clips; a broken one would be dead-lettered, not lost
    dead = demo / "vision" / "dead_letters" / "vision.jsonl"
    n_dead = len(dead.read_text().splitlines()) if dead.exists() else 0
    assert len(records) + n_dead == 4
    for r in records:
        assert 1 <= r["n_frames"] <= 2 and len(r["tokens"]) == 256 * r["n_frames"] and r["caption"]
    _png(demo / "vision" / "preview.png")
    chunks = [r for f in sorted((demo / "books").glob("chunks-*.parquet"))
              for r in read_table(str(f), BOOK_CHUNK).to_pylist()]
    assert chunks and all("SmolLM2" in c["model"] for c in chunks)
    assert sum(len(c["qa"]) for c in chunks) >= 1
    for stage in STAGES:
        needles = read_table(str(demo / "needles" / stage / "needles.parquet"), BOOK_CHUNK).to_pylist()
        for row in needles:
            for qa in row["qa"]:
                assert qa["answer"] in row["text"] and "special magic" in qa["question"]


@pytest.mark.slow
def test_demo_shards_and_audits(demo: Path):
    from lwmkit.schemas import ShardSet

    for stage, seq_len in STAGES.items():
        shards = ShardSet.open(str(demo / "shards" / stage / "manifest.json"))
        m = shards.manifest
        assert m.stage == stage and m.seq_len == seq_len
        assert {"clips", "book-qa", "needles", "text"} <= set(m.per_source)
        n = 0
        for arrays, _meta in shards:  # reads every shard, verifying its sha256
            assert arrays["input_ids"].shape == (seq_len,)
            n += 1
        assert n == m.n_sequences
        audit = json.loads((demo / "audit" / f"{stage}.json").read_text())
        assert audit["verdict"] == "pass" and audit["exit_code"] == 0
        assert (demo / "audit" / f"{stage}.html").stat().st_size > 1000
        _png(demo / "audit" / f"{stage}.png")


@pytest.mark.slow
def test_demo_training_and_needle_eval(demo: Path):
    from lwmkit.trainer.checkpoint import StageCheckpoints

    for stage in STAGES:
        ck = StageCheckpoints(str(demo / "checkpoints"), stage, keep=1, async_save=False)
        assert ck.is_final()
        ck.close()
    rows = [json.loads(x) for x in (demo / "checkpoints" / "logs" / "train.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(np.isfinite(losses))
    assert {r["stage"] for r in rows if "loss" in r} == set(STAGES)
    _png(demo / "loss_curves.png")
    for stage in ("s512", "s1k"):
        summary = json.loads((demo / "needle" / stage / "needle.json").read_text())
        assert summary["lengths"] == [256, 512, 1024] and summary["depths"] == [0, 50, 100]
        acc = np.asarray(summary["accuracy"])
        assert acc.shape == (3, 3) and np.all((acc >= 0) & (acc <= 1))
        assert len((demo / "needle" / stage / "cases.jsonl").read_text().splitlines()) == summary["cases"] == 18
        _png(demo / "needle" / stage / "needle_heatmap.png")


@pytest.mark.slow
def test_demo_summary_names_every_artefact_and_rerun_resumes(demo: Path):
    result = json.loads((demo / "summary.json").read_text())
    for name, rel in result["artefacts"].items():
        assert (demo / rel).exists(), name
    assert (demo / "SUMMARY.md").read_text().count("|") > 20
    assert all((demo / "logs" / f"{s}.log").exists() for s in ("vision", "books", "train", "pack-s512"))
    proc = subprocess.run([sys.executable, "-m", "lwmkit.cli", "demo", "--out", str(demo), "--size", "smallest"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((demo / "summary.json").read_text())
    assert set(again["steps"]) == set(result["steps"]) and all(v == 0 for v in again["steps"].values())
    assert again["ran_in"] == pytest.approx(result["ran_in"], abs=0.06)  # the first run's times are kept
    assert "done earlier, skipped" in proc.stderr and "| done earlier |" in (demo / "SUMMARY.md").read_text()


def test_demo_refuses_unknown_size(tmp_path: Path):
    from lwmkit.cli import main

    with pytest.raises(SystemExit) as err:
        main(["demo", "--out", str(tmp_path), "--size", "huge"])
    assert err.value.code == 2


def test_runner_skips_finished_steps_and_reruns_stale_ones(tmp_path: Path):
    from lwmkit.demo import Runner, config_key

    runs: list[str] = []
    cfg = tmp_path / "train.yaml"
    cfg.write_text("steps: 10\n")
    r = Runner(tmp_path)
    r.step("train", lambda: runs.append("a"), key=config_key(cfg))
    r.step("train", lambda: runs.append("b"), key=config_key(cfg))  # done: skipped
    assert runs == ["a"] and r.result.steps["train"] == 0.0
    cfg.write_text("steps: 20\n")  # the recipe changed: the mark is stale
    r.step("train", lambda: runs.append("c"), key=config_key(cfg))
    r.step("plot", lambda: runs.append("d"))
    r.step("plot", lambda: runs.append("e"))
    assert runs == ["a", "c", "d"]
    assert json.loads((tmp_path / ".demo" / "train.done").read_text())["key"] == config_key(cfg)
    # a command step: the same arguments skip, other arguments run again
    slow_a = [sys.executable, "-c", "import time; time.sleep(0.2); print('a')"]
    assert r.step("hello", slow_a)
    ran_in = r.result.ran_in["hello"]
    assert not r.step("hello", slow_a)
    assert r.result.steps["hello"] == 0.0 and r.result.ran_in["hello"] == round(ran_in, 1) > 0  # time kept
    assert r.step("hello", [sys.executable, "-c", "print('b')"])
    assert r.result.steps["hello"] > 0.0
    assert r.step("hello", [sys.executable, "-c", "print('b')"], again=True)  # its input was remade
    assert (tmp_path / "logs" / "hello.log").read_text().splitlines()[-1] == "b"
