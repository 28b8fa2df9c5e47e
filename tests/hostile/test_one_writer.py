"""One writer per output: two real processes on one output folder. The second is refused with
one line naming the holder (host, pid, start time); a lease left by a killed run is taken over;
the set the first run wrote is intact (the audit passes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwmkit.runtime.lease import LEASE_NAME, LeaseHeld, OutputLease

HOLD = """
import sys, time
from lwmkit.runtime.lease import OutputLease
with OutputLease(sys.argv[1], sys.argv[2], heartbeat_s=0.2):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(folder: Path, seconds: float = 60.0, job: str = "holder") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), job, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    first = _holder(tmp_path / "out")
    try:
        with pytest.raises(LeaseHeld) as exc:
            OutputLease(str(tmp_path / "out"), "second").acquire()
        msg = str(exc.value)
        assert f"holder on host {socket.gethostname()} pid {first.pid}, started 20" in msg
        assert msg.startswith(f"{tmp_path / 'out'}: output folder is in use by") and "\n" not in msg
    finally:
        _stop(first)


def test_a_lease_left_by_a_killed_run_is_taken_over(tmp_path):
    first = _holder(tmp_path / "out")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (tmp_path / "out" / LEASE_NAME).exists()  # left behind, with the dead pid in it
    with OutputLease(str(tmp_path / "out"), "second") as lease:
        assert lease.took_over and f"pid {first.pid}" in lease.took_over
        info = json.loads((tmp_path / "out" / LEASE_NAME).read_text())
        assert info["pid"] == os.getpid() and info["job"] == "second"
    assert not (tmp_path / "out" / LEASE_NAME).exists()  # released


@pytest.mark.parametrize("age_s, refused", [(5.0, True), (600.0, False)])
def test_another_hosts_lease_is_judged_by_its_heartbeat(tmp_path, age_s, refused):
    folder = tmp_path / "out"
    folder.mkdir()
    other = {"host": "other-host", "pid": 1, "job": "pack", "started": "2026-01-01T00:00:00Z",
             "heartbeat": time.time() - age_s}  # fmt: skip
    (folder / LEASE_NAME).write_text(json.dumps(other))
    lease = OutputLease(str(folder), "me", stale_after_s=120)
    if refused:
        with pytest.raises(LeaseHeld, match="on host other-host pid 1, started 2026-01-01T00:00:00Z"):
            lease.acquire()
    else:
        with lease:
            assert "other-host" in lease.took_over


def test_only_one_of_many_racing_processes_wins(tmp_path):
    race = (
        "import sys, time\nfrom lwmkit.runtime.lease import OutputLease, LeaseHeld\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "try:\n    l = OutputLease(sys.argv[1], 'r'); l.acquire(); print('won', flush=True); time.sleep(2)\n"
        "except LeaseHeld:\n    print('refused', flush=True)\n"
    )
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", race, str(tmp_path / "out"), str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]  # fmt: skip
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["refused"] * 5 + ["won"]


def _pack(hk, mixture: Path, out: Path, seed: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", "pack", "--mixture", str(mixture),
           "--seq-len", "512", "--stage", "s512", "--out", str(out), "--set", f"seed={seed}"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not (path.exists() and path.read_text().strip()):  # the holder has written who it is
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.slow
def test_two_pack_runs_on_one_folder_one_is_refused_and_the_set_is_intact(hk, packed_set, tmp_path):
    out = tmp_path / "set"
    first = _pack(hk, packed_set["mixture"], out, seed=1)
    _wait_for(out / LEASE_NAME, first)
    second = _pack(hk, packed_set["mixture"], out, seed=2)
    _, err2 = second.communicate(timeout=300)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 2, err2[-2000:]
    (line,) = [x for x in err2.splitlines() if x.startswith("error:")]
    assert (
        f"output folder is in use by lwmkit pack on host {socket.gethostname()} pid {first.pid}, started"
        in line
    )
    assert "Traceback" not in err2
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1  # the first run's set, whole
    audit = hk.lwmkit("audit", str(out), "-q")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert not (out / LEASE_NAME).exists()


@pytest.mark.slow
def test_pack_after_a_killed_pack_takes_the_lease_over(hk, packed_set, tmp_path):
    out = tmp_path / "set"
    first = _pack(hk, packed_set["mixture"], out, seed=1)
    _wait_for(out / LEASE_NAME, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    proc = hk.lwmkit("pack", "--mixture", str(packed_set["mixture"]), "--seq-len", "512", "--stage", "s512",
                     "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        f"took over the lease left by lwmkit pack on host {socket.gethostname()} pid {first.pid}"
        in proc.stderr
    )
    assert hk.lwmkit("audit", str(out), "-q").returncode == 0


def test_train_refuses_a_checkpoint_folder_another_run_holds(hk, packed_set, tmp_path):
    ckpt = tmp_path / "ck"
    holder = _holder(ckpt, job="lwmkit train")
    config = tmp_path / "train.yaml"
    config.write_text(_TRAIN.format(data=packed_set["shards"], ckpt=ckpt))
    try:
        before = sorted(p.name for p in ckpt.iterdir())
        proc = hk.lwmkit("train", str(config), env={**os.environ, "JAX_PLATFORMS": "cpu"})
        after = sorted(p.name for p in ckpt.iterdir())
    finally:
        _stop(holder)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert (
        f"{ckpt}: output folder is in use by lwmkit train on host {socket.gethostname()} pid {holder.pid}"
        in line
    )
    assert before == after == [LEASE_NAME], "the refused run wrote into the checkpoint folder"
    shutil.rmtree(ckpt, ignore_errors=True)


_TRAIN = """
model: {{text_vocab_size: 8000, vision_vocab_size: 8448, d_model: 32, n_layers: 1, n_heads: 2, mlp_dim: 64,
        attention_block: 128, loss_chunk: 512}}
mesh: {{data: 1, fsdp: -1, tensor: 1, sequence: 1}}
optimizer: {{lr: 1.0e-3, warmup_steps: 1, schedule: constant}}
checkpoint: {{dir: {ckpt}, every_steps: 100, keep: 1}}
seed: 0
stages:
  - {{name: s512, seq_len: 512, rope_theta: 10000.0, steps: 2, batch_size: 2, data: {data}}}
"""


def test_books_refuses_an_output_folder_another_run_holds(hk, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out, job="lwmkit books")
    book = tmp_path / "b.txt"
    book.write_text("One sentence here. Another sentence there.")
    try:
        proc = hk.lwmkit("books", f"--input={book}", f"--output={out}", "--qa-endpoint=http://127.0.0.1:9/v1",
                         "--qa-model=m")  # fmt: skip
        after = sorted(p.name for p in out.iterdir())
    finally:
        _stop(holder)
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert (
        proc.returncode == 2
        and f"output folder is in use by lwmkit books on host {socket.gethostname()}" in line
    )
    assert after == [LEASE_NAME], "the refused run wrote into the folder"
