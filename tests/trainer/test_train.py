"""End to end: `lwmkit pack` shards -> `lwmkit train`, two stages, kill and resume, refusals.

Training runs in subprocesses through the CLI: the 8 emulated devices need XLA_FLAGS set
before JAX starts, and a SIGKILL needs a process to kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "train-tiny.yaml")


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _lwmkit(*args: str, devices: int = 1, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(devices), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory, botchan) -> dict[int, str]:
    """Shards at 512 and 2048 tokens, made by `lwmkit pack` from the sample data."""
    from lwmkit.pack_demo import write_demo_mixture

    root = tmp_path_factory.mktemp("packed")
    mixture = write_demo_mixture(root / "demo", botchan)
    out = {}
    for seq_len in (512, 2048):
        out[seq_len] = str(root / f"shards-{seq_len}")
        _lwmkit("pack", "--mixture", str(mixture), "--seq-len", str(seq_len), "--stage", f"s{seq_len}", "--out", out[seq_len])
    return out


def _records(ckpt_dir: Path) -> list[dict]:
    path = ckpt_dir / "logs" / "train.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(records: list[dict], stage: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r.get("stage") == stage and "loss" in r}


def _final_meta(ckpt_dir: Path, stage: str) -> dict:
    final = ckpt_dir / stage / "final"
    (step,) = [p for p in final.iterdir() if p.name.isdigit()]
    return json.loads((step / "meta" / "metadata").read_text())


@pytest.mark.slow
def test_two_stages_grow_the_context(shards, tmp_path):
    ck = tmp_path / "ck"
    common = ["--set", f"stages.0.data={shards[512]}", "--set", f"stages.1.data={shards[2048]}",
              "--set", f"checkpoint.dir={ck}", "--set", "peak_flops=2e10", "--set", "stages.0.steps=10",
              "--set", "stages.1.steps=10"]
    _lwmkit("train", TINY, *common, devices=8)
    records = _records(ck)
    s1, s2 = _losses(records, "s512"), _losses(records, "s2048")
    assert sorted(s1) == list(range(1, 11)) and sorted(s2) == list(range(1, 11))
    # the text loss falls in each stage (by 0.6-0.9 over training seeds 0-3). Not the total:
    # with 2 sequences a step its vision share swings from batch to batch, and the vision
    # loss (8448 codes, ~9.0) barely moves in 10 steps, so the total can stay flat.
    for stage in ("s512", "s2048"):
        text = {r["step"]: r["text_loss"] for r in records if r.get("stage") == stage and "text_loss" in r}
        first, last = [text[i] for i in (1, 2, 3)], [text[i] for i in (8, 9, 10)]
        assert sum(last) / 3 < sum(first) / 3 - 0.2, (stage, text)
    # stage 2 starts from stage 1's final weights: named in its start event, and its first loss is
    # far below a fresh model's ln(8000) ~ 9.0 text loss
    start = [r for r in records if r.get("stage") == "s2048" and r.get("init")]
    assert start and str(ck / "s512" / "final") in start[0]["init"]
    first_text = [r["text_loss"] for r in records if r.get("stage") == "s2048" and r.get("step") == 1][0]
    assert first_text < 8.5
    # the final checkpoint records the manifests it was trained on, the config and the code version
    meta = _final_meta(ck, "s2048")
    from lwmkit.schemas import load_manifest

    assert [e["stage"] for e in meta["lineage"]] == ["s512", "s2048"]
    for entry, seq_len in zip(meta["lineage"], (512, 2048), strict=True):
        assert entry["manifest_sha256"] == load_manifest(f"{shards[seq_len]}/manifest.json").sha256
        assert entry["seq_len"] == seq_len
    assert meta["config"]["stages"][1]["layout"] == "zigzag" and meta["code_version"].startswith("lwmkit")
    assert (ck / "logs" / "tensorboard").is_dir() and any((ck / "logs" / "tensorboard").iterdir())
    # re-running finds both stages final and trains nothing
    again = _lwmkit("train", TINY, *common, devices=8)
    assert again.stdout.count("skipped (already final)") == 2


def _one_stage(data: str, ck: Path | str, steps: int = 10) -> list[str]:
    return [TINY, "--set", f"stages=[{{name: k, seq_len: 512, rope_theta: 10000.0, steps: {steps}, batch_size: 4, data: '{data}'}}]",
            "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every_steps=2", "--set", "peak_flops=2e10",
            "--set", "model.vision_vocab_size=8448"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_losses(shards, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    _lwmkit("train", *_one_stage(shards[512], ref_dir))
    reference = _losses(_records(ref_dir), "k")
    assert sorted(reference) == list(range(1, 11))

    cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", "train", *_one_stage(shards[512], run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 300
        while max(_losses(_records(run_dir), "k"), default=0) < 5:  # mid-stage, past two checkpoints
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(_records(run_dir), "k"))
    assert killed_at < 10
    _lwmkit("train", *_one_stage(shards[512], run_dir))
    records = _records(run_dir)
    resumed = [r for r in records if r.get("init", "").startswith("resumed from step")]
    assert resumed, "the second run did not resume from a checkpoint"
    for r in records:  # every step, before the kill and after the resume, equals the reference
        if r.get("stage") == "k" and "loss" in r:
            assert r["loss"] == reference[r["step"]], (r["step"], r["loss"], reference[r["step"]])
    assert sorted(_losses(records, "k")) == list(range(1, 11))


def test_mismatched_manifest_is_refused(shards, tmp_path):
    base = ["--set", f"stages.0.data={shards[512]}", "--set", f"stages.1.data={shards[2048]}",
            "--set", f"checkpoint.dir={tmp_path}", "--set", "peak_flops=1e10"]
    wrong_len = _lwmkit("train", TINY, *base, "--set", f"stages.1.data={shards[512]}", check=False)
    assert wrong_len.returncode == 2
    assert "field 'seq_len': shards are packed to 512 tokens, the stage trains at 2048 (stage 's2048')" in wrong_len.stderr
    wrong_tok = _lwmkit("train", TINY, *base, "--set", "tokenizer_id=" + "ab" * 32, check=False)
    assert wrong_tok.returncode == 2
    assert "field 'tokenizer_id': tokenizer" in wrong_tok.stderr and "differs from the run's abababababababab" in wrong_tok.stderr
    small = _lwmkit("train", TINY, *base, "--set", "model.vision_vocab_size=0", check=False)
    assert small.returncode == 2 and "shards hold vision tokens but the model has no vision vocabulary" in small.stderr
    assert not (tmp_path / "s512").exists()  # refused before anything was written


@pytest.fixture
def s3_bucket(s3_server):
    """Bucket ``train-bucket`` on the shared S3 server (the CLI subprocesses reach it too)."""
    s3_server.fs.mkdir("train-bucket")
    return s3_server.fs


@pytest.mark.slow
def test_training_from_a_bucket_reads_the_same_batches(shards, s3_bucket, tmp_path):
    """Shards in an S3 bucket train exactly as the same shards on disk (checksums verified
    on read); a checkpoint dir on s3:// is refused up front (orbax cannot write there)."""
    s3_bucket.put(shards[512], "train-bucket/shards-512", recursive=True)
    _lwmkit("train", *_one_stage(shards[512], tmp_path / "local", steps=3))
    _lwmkit("train", *_one_stage("s3://train-bucket/shards-512", tmp_path / "s3", steps=3))
    local, remote = _losses(_records(tmp_path / "local"), "k"), _losses(_records(tmp_path / "s3"), "k")
    assert sorted(remote) == [1, 2, 3] and remote == local
    assert _final_meta(tmp_path / "s3", "k")["lineage"][0]["manifest"] == "s3://train-bucket/shards-512/manifest.json"

    refused = _lwmkit("train", *_one_stage("s3://train-bucket/shards-512", "s3://train-bucket/ck"), check=False)
    assert refused.returncode == 2 and "field 'checkpoint.dir': must be a local path" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_a_failed_background_save_stops_the_run_with_one_line(shards, tmp_path):
    """A real write failure: files may not grow past 1 MB in the training process (EFBIG, as a
    full disk gives ENOSPC), so the first step checkpoint (8 MB of params) fails in orbax's
    background thread. The run stops before its next save with one line naming the path."""
    ck = tmp_path / "ck"
    limit = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20)); from lwmkit.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", limit, "train", *_one_stage(shards[512], ck)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"checkpoint save to {ck / 'k' / 'steps' / '2'} failed" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert max(_losses(_records(ck), "k")) < 4  # stopped at once, not at the next save (step 4) or the end
