"""Kill test: SIGKILL the pack job while it writes shards, re-run it, get the same bytes.

Shards are written to a temporary name and renamed, and the manifest is written last: a
killed run leaves whole shards or temporary files, never a torn shard, and no manifest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwmkit.pack_demo import write_demo_mixture
from lwmkit.pipelines.pack.job import run_pack
from lwmkit.schemas import ShardSet

pytestmark = pytest.mark.slow
SETTINGS = ["shard_tokens=4096", "bucket_tokens=8192"]  # many small shards and partitions


def _cmd(mixture: Path, out: Path) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "lwmkit.pipelines.pack.job",
        "--mixture",
        str(mixture),
        "--seq-len",
        "1024",
        "--stage",
        "kill",
        "--out",
        str(out),
        *sets,
    ]


def test_killed_mid_write_then_rerun_gives_the_same_bytes(tmp_path, botchan):
    mixture = write_demo_mixture(tmp_path / "in", botchan, seed=3)
    clean = run_pack(str(mixture), 1024, "kill", str(tmp_path / "clean"), overrides=SETTINGS)
    assert len(clean.shards) >= 6

    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cmd(mixture, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(list(out.glob("*.tar"))) >= 2:  # mid-way through writing shards
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the job finished before it could be killed"
    expected = {e.name: (tmp_path / "clean" / e.name).read_bytes() for e in clean.shards}
    survivors = sorted(out.glob("*.tar"))
    assert survivors, "no shard was written before the kill"
    for shard in survivors:  # renamed into place only when whole: never torn
        assert shard.read_bytes() == expected[shard.name]

    (out / "dense-b0099-00000.tar").write_bytes(b"left by a run with other settings")
    again = run_pack(str(mixture), 1024, "kill", str(out), overrides=SETTINGS)
    assert not (out / "dense-b0099-00000.tar").exists()  # not in the manifest: removed
    assert again.to_json() == clean.to_json()
    assert {e.name: (out / e.name).read_bytes() for e in again.shards} == expected
    assert not list(out.glob("*.tmp-*"))
    assert sum(1 for _ in ShardSet.open(str(out))) == clean.n_sequences
