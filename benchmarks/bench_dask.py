"""Beam jobs on a dask.distributed cluster of 1 vs 2 worker processes, against DirectRunner's
multi-process mode with 1 vs 2 workers, every figure measured in this one run.

* vision: the sample videos (each twice, under two names) at ``--fps``; frames tokenized per second.
* pack: a larger copy of the demo mixture (``--scale`` times its documents and records).

Each Dask cluster is a ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` on
loopback, warmed (imports and the VQGAN compile in every worker, one small run of each job),
then timed; the
DirectRunner starts fresh worker processes in every run, which is part of what it costs. Every
run's output must be byte-identical to the first one's.

    python benchmarks/bench_dask.py            # ~4 min on the shared 2-core box (load ~12)
    python benchmarks/bench_dask.py --fps 4 --scale 20 --copies 4   # bigger
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


@contextlib.contextmanager
def dask_cluster(workers: int, logs: Path) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded worker processes; yields the address."""
    import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                               "--idle-timeout", "600"], stderr=open(logs / f"scheduler-{workers}.log", "wb"))]  # fmt: skip
    procs.append(subprocess.Popen([*dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                                   "--no-dashboard", "--death-timeout", "30", "--host", "127.0.0.1",
                                   "--local-directory", str(logs)], stderr=open(logs / f"workers-{workers}.log", "wb")))  # fmt: skip
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            client.run(warm_worker)  # every worker, not just those a small run happens to use
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def warm_worker() -> None:
    """Imports and the VQGAN compile, in a worker process, before anything is timed."""
    import numpy as np

    import lwmkit.pipelines.pack.job  # noqa: F401
    from lwmkit.pipelines.vision.vqgan_handler import VQGANModelHandler

    handler = VQGANModelHandler()
    handler.run_inference([np.zeros((256, 256, 3), np.uint8)], handler.load_model())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


FRAMES: dict[str, int] = {}


def run_vision(inputs: str, out: Path, fps: str, runner: list[str]) -> float:
    from lwmkit.pipelines.vision.job import run

    t = time.perf_counter()
    summary = run(["--inputs", inputs, "--output", str(out), "--fps", fps, "--num-shards", "2", *runner])
    FRAMES[inputs] = summary.frames
    return time.perf_counter() - t


def run_pack(mixture: Path, out: Path, runner: list[str]) -> float:
    from lwmkit.pipelines.pack.job import run_pack as pack

    t = time.perf_counter()
    pack(str(mixture), 2048, "s2k", str(out), pipeline_args=runner)
    return time.perf_counter() - t


def make_inputs(root: Path, copies: int, scale: int) -> tuple[Path, Path, Path]:
    """(video folder, a folder of one video, a larger demo mixture); the demo mixture too, in small/."""
    from lwmkit.pack_demo import (
        write_book_chunks,
        write_demo_mixture,
        write_text_sources,
        write_vision_records,
    )
    from lwmkit.runtime.sample_data import book_source, video_sources

    videos, one = root / "videos", root / "one"
    videos.mkdir()
    one.mkdir()
    for src in video_sources():
        for c in range(copies):  # same frames under another name: another input, another record
            (videos / f"{c}-{src.name}").symlink_to(src)
    (one / "clip.mp4").symlink_to(video_sources()[0])
    text = book_source().read_text(encoding="utf-8")
    write_demo_mixture(root / "small", text, seed=3)
    mixture = write_demo_mixture(root / "mix", text, seed=3)
    d = root / "mix"
    write_text_sources(d / "text", text, n_docs=60 * scale)
    write_vision_records(d / "images" / "part-0.parquet", text, kind="image", n=40 * scale, seed=3)
    write_vision_records(
        d / "videos" / "part-0.parquet", text, kind="video", n=16 * scale, frames=(2, 3, 5), seed=4
    )
    write_book_chunks(d / "books" / "botchan.parquet", text, n_chunks=40 * scale)
    return videos, one, mixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", default="2", help="Vision frames sampled per second.")
    parser.add_argument("--copies", type=int, default=1, help="Copies of each sample video.")
    parser.add_argument("--scale", type=int, default=4, help="Pack mixture size, in demo mixtures.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    videos, one, mixture = make_inputs(root, args.copies, args.scale)
    small_mixture = root / "small" / "mixture.yaml"
    logs = root / "logs"
    logs.mkdir()
    times: dict[tuple[str, str], float] = {}
    outputs: dict[str, dict[str, bytes]] = {}

    def record(job: str, label: str, seconds: float, out: Path) -> None:
        times[job, label] = seconds
        files = _files(out)
        assert outputs.setdefault(job, files) == files, f"{job} on {label}: output differs from the first run"
        rate = f"  {FRAMES[str(videos / '*')] / seconds:6.1f} frames/s" if job == "vision" else ""
        print(f"{job:6} {label:10} {seconds:7.1f} s{rate}", flush=True)

    for n in (1, 2):
        with dask_cluster(n, logs) as address:
            runner = ["--runner", DASK, f"--dask_client_address={address}"]
            run_vision(str(one / "*"), root / f"warm-v{n}", "1", runner)  # imports + VQGAN compile
            run_pack(small_mixture, root / f"warm-p{n}", runner)
            record("vision", f"dask-{n}", run_vision(str(videos / "*"), root / f"v-dask{n}", args.fps, runner),
                   root / f"v-dask{n}")  # fmt: skip
            record("pack", f"dask-{n}", run_pack(mixture, root / f"p-dask{n}", runner), root / f"p-dask{n}")
    for n in (1, 2):
        runner = [f"--direct_num_workers={n}", "--direct_running_mode=multi_processing"]
        record("vision", f"direct-{n}", run_vision(str(videos / "*"), root / f"v-direct{n}", args.fps, runner),
               root / f"v-direct{n}")  # fmt: skip
        record("pack", f"direct-{n}", run_pack(mixture, root / f"p-direct{n}", runner), root / f"p-direct{n}")
    print("\nratios (wall time; >1 = the second is faster):")
    for job in ("vision", "pack"):
        t = {label: s for (j, label), s in times.items() if j == job}
        print(f"  {job:6} dask 1->2 workers {t['dask-1'] / t['dask-2']:.2f}x; "
              f"direct 1->2 workers {t['direct-1'] / t['direct-2']:.2f}x; "
              f"dask-2 vs direct-2 {t['direct-2'] / t['dask-2']:.2f}x; dask-1 vs direct-1 {t['direct-1'] / t['dask-1']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
