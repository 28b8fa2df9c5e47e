"""I/O failures as one line: a full disk (a tiny tmpfs), a read-only folder (a read-only tmpfs)
and a file where a folder should be. ``pack`` and ``train`` exit 1 with one ``error:`` line
naming the operation and the path, no traceback on the terminal, the whole trace in the job's
log, and no torn file left behind. Mounting needs root; those cases skip without it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (``size``, ``ro``) under tmp_path; skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size_kb: int, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        opts = f"size={size_kb}k" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or proc.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    log = re.search(r"full trace in (\S+)$", errors[0])
    assert log and "Traceback (most recent call last)" in Path(log.group(1)).read_text()
    return errors[0]


def _pack(hk, mixture: Path, out: Path) -> subprocess.CompletedProcess:
    return hk.lwmkit(
        "pack", "--mixture", str(mixture), "--seq-len", "512", "--stage", "s512", "--out", str(out)
    )


def test_pack_on_a_full_disk(hk, packed_set, tmpfs):
    disk = tmpfs(96)
    line = _one_error(_pack(hk, packed_set["mixture"], disk / "out"))
    assert re.match(rf"error: writing {disk}/out/\S+\.tar: No space left on device; full trace in ", line), (
        line
    )
    left = sorted(p.name for p in (disk / "out").iterdir())
    assert not [n for n in left if ".tmp-" in n], f"a torn file was left: {left}"
    assert "manifest.json" not in left


def test_pack_into_a_read_only_folder(hk, packed_set, tmpfs):
    ro = tmpfs(64, read_only=True)
    line = _one_error(_pack(hk, packed_set["mixture"], ro / "out"))
    assert f"taking the lease on the output folder {ro}/out: Read-only file system" in line
    assert not os.listdir(ro)


def test_pack_where_a_file_blocks_the_folder(hk, packed_set, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    line = _one_error(_pack(hk, packed_set["mixture"], blocker / "out"))
    assert f"taking the lease on the output folder {blocker}/out: Not a directory" in line
    assert blocker.read_text() == "a file, not a folder"


def test_a_shard_path_blocked_by_a_folder(hk, packed_set, tmp_path):
    out = tmp_path / "out"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(packed_set["shards"], out)
    names = [p.name for p in out.glob("*.tar")]
    for name in names:  # every shard name the run will write is a folder now
        (out / name).unlink()
        (out / name).mkdir()
    line = _one_error(_pack(hk, packed_set["mixture"], out))
    assert re.match(rf"error: writing {out}/\S+\.tar: ", line), line


_TRAIN = """
model: {{text_vocab_size: 8000, vision_vocab_size: 8448, d_model: 32, n_layers: 1, n_heads: 2, mlp_dim: 64,
        attention_block: 128, loss_chunk: 512}}
mesh: {{data: 1, fsdp: -1, tensor: 1, sequence: 1}}
optimizer: {{lr: 1.0e-3, warmup_steps: 1, schedule: constant}}
checkpoint: {{dir: {ckpt}, every_steps: 2, keep: 1}}
seed: 0
log_every: 1
peak_flops: 1.0e10
stages:
  - {{name: s512, seq_len: 512, rope_theta: 10000.0, steps: 12, batch_size: 2, data: {data}}}
"""


@pytest.mark.slow
def test_train_on_a_full_disk_stops_with_one_line(hk, packed_set, tmpfs, tmp_path):
    disk = tmpfs(200)
    config = tmp_path / "train.yaml"
    config.write_text(_TRAIN.format(ckpt=disk / "ck", data=packed_set["shards"]))
    proc = hk.lwmkit("train", str(config), env={**os.environ, "JAX_PLATFORMS": "cpu"})
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    # the checkpoint or the step log, whichever meets the full disk first
    assert re.match(rf"error: (checkpoint save to {disk}/ck/\S+ failed: )?writing {disk}/ck/\S+: "
                    r"No space left on device; full trace in ", errors[0]), (
        errors
    )
    assert not (disk / "ck" / "s512" / "final").exists() or not any(
        (disk / "ck" / "s512" / "final").iterdir()
    )
