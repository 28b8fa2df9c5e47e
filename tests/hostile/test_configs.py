"""Configs: duplicate keys, non-finite numbers and YAML syntax errors are refused with the file's
name and line (exit 2, nothing written); a resume whose seed, optimizer or data differ from the
checkpoint's is refused unless --allow-resume-changes (then recorded in the lineage); train.jsonl
never holds a step twice after a kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwmkit.runtime.config import load_config
from lwmkit.schemas import ContractError, MixtureConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = (ROOT / "configs" / "train-tiny.yaml").read_text()


@pytest.mark.parametrize(
    "edit, marker, message",
    [
        (
            lambda t: t.replace("seed: 0\n", "seed: 0\nseed: 1\n"),
            "seed: 1",
            "key 'seed' given twice (first on line",
        ),
        (
            lambda t: t.replace("rope_theta: 10000.0", "rope_theta: .inf"),
            ".inf",
            "'.inf' is not a finite number",
        ),
        (lambda t: t.replace("lr: 3.0e-3", "lr: .NaN"), ".NaN", "'.NaN' is not a finite number"),
        (
            lambda t: t.replace("  d_model: 64", "  d_model: 64\n  d_model: 128"),
            "d_model: 128",
            "key 'd_model' given twice",
        ),
        (lambda t: t.replace("seed: 0", "seed: [0"), "log_every", "is not valid YAML: line"),
    ],
    ids=["duplicate_top_key", "inf_rope_theta", "nan_lr", "duplicate_nested_key", "syntax_error"],
)
def test_a_bad_training_config_is_refused_with_file_and_line(hk, tmp_path, edit, marker, message):
    path = tmp_path / "train.yaml"
    text = edit(TINY.replace("runs/tiny/checkpoints", str(tmp_path / "ck")))
    assert text != TINY
    path.write_text(text)
    line = f"line {next(i for i, x in enumerate(text.splitlines(), 1) if marker in x)}, column"
    with pytest.raises(ContractError) as exc:
        load_config(TrainConfig, str(path))
    assert str(exc.value).startswith(f"{path}: ") and line in str(exc.value) and message in str(exc.value), (
        exc.value
    )
    proc = hk.lwmkit("train", str(path), "--dry-run")
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and str(path) in errors[0] and line in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ck").exists(), "a refused config wrote a checkpoint folder"


def test_a_mixture_with_an_infinite_weight_is_refused_before_packing(hk, packed_set, tmp_path):
    text = packed_set["mixture"].read_text()
    weight_line = next(i for i, x in enumerate(text.splitlines(), 1) if "weight:" in x)
    bad = tmp_path / "mix.yaml"
    lines = text.splitlines()
    lines[weight_line - 1] = lines[weight_line - 1].split("weight:")[0] + "weight: .inf"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = hk.lwmkit("pack", "--mixture", str(bad), "--seq-len", "512", "--stage", "s", "--out", str(out))
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and f"{bad}: line {weight_line}" in line and "not a finite number" in line
    assert not out.exists()


def test_non_finite_numbers_from_json_and_overrides_are_refused(tmp_path):
    with pytest.raises(ContractError, match="--set: field 'seed': value '.inf' is not valid YAML"):
        load_config(MixtureConfig, None, ["seed=.inf", "sources=[]"])
    from lwmkit.schemas import from_dict
    from lwmkit.schemas.manifest import TokenCounts

    with pytest.raises(ContractError, match="must be a finite number"):
        from_dict(
            MixtureConfig,
            json.loads('{"seed": 0, "sources": [{"name": "a", "kind": "text", "path": "x", "weight": NaN}]}'),
        )
    assert TokenCounts  # manifests go through the same from_dict


_TRAIN = """
model: {{text_vocab_size: 8000, vision_vocab_size: 8448, d_model: 32, n_layers: 1, n_heads: 2, mlp_dim: 64,
        attention_block: 128, loss_chunk: 512}}
mesh: {{data: 1, fsdp: -1, tensor: 1, sequence: 1}}
optimizer: {{lr: 1.0e-3, warmup_steps: 1, schedule: constant}}
checkpoint: {{dir: {ckpt}, every_steps: 2, keep: 2}}
seed: 0
log_every: 1
peak_flops: 1.0e10
stages:
  - {{name: s512, seq_len: 512, rope_theta: 10000.0, steps: 30, batch_size: 2, data: {data}}}
"""


def _train(config: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", "train", str(config), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_unless_meant_and_steps_never_repeat(packed_set, tmp_path):
    ckpt = tmp_path / "ck"
    config = tmp_path / "train.yaml"
    config.write_text(_TRAIN.format(data=packed_set["shards"], ckpt=ckpt))
    first = _train(config)
    t0 = time.monotonic()
    while not (ckpt / "s512" / "steps" / "6").exists():  # a checkpoint, then more steps logged after it
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 300
        time.sleep(0.1)
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    records = _steps(ckpt)
    assert records and max(records) > 6 and len(records) == len(set(records))

    for args, what in ((["--set", "seed=1"], "seed 0 -> 1"), (["--set", "optimizer.lr=0.002"], "optimizer")):
        proc = _train(config, *args)
        _, err = proc.communicate(timeout=600)
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        assert proc.returncode == 2, err[-3000:]
        assert "resuming stage 's512' at step" in line and what in line and "--allow-resume-changes" in line
    final_dir = ckpt / "s512" / "final"
    assert not any(p.name.isdigit() for p in final_dir.iterdir()) if final_dir.exists() else True

    proc = _train(config, "--set", "seed=1", "--allow-resume-changes")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    steps = _steps(ckpt)
    assert sorted(steps) == list(range(1, 31)), "train.jsonl must hold every step exactly once"
    (final,) = [p for p in (ckpt / "s512" / "final").iterdir() if p.name.isdigit()]
    meta = json.loads((final / "meta" / "metadata").read_text())
    (change,) = meta["lineage"][-1]["resume_changes"]
    assert change["changed"] == {"seed": {"was": 0, "now": 1}} and change["at_step"] % 2 == 0


def _steps(ckpt: Path) -> list[int]:
    lines = (ckpt / "logs" / "train.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("stage") == "s512" and "loss" in r]
