"""Vision job throughput, measured in one run against baselines measured in the same run.

1. decode only: source frames/s of lwmkit's decoders (decord, ffmpeg; in-process and isolated
   in a child process) at the job's default sampling (4 fps) and at every frame, vs the ffmpeg
   CLI decoding the same file to nothing (``ffmpeg -i X -f null -``). Goal >= 0.8.
2. VQGAN encoder only: frames/s of ``tokenizer.encode`` on 256x256 frames (batch 8, compiled).
3. the whole job (DirectRunner, in process): frames tokenized per second of job wall time,
   cold (first run in the process: includes start-up and compile) and warm. Goal >= 0.7 of (2).
4. per-file isolation cost: decoding N files in a Beam ParDo in-process, with lwmkit's
   IsolatedDecoder, and with Beam's ``with_exception_handling(use_subprocess=True, timeout=...)``.

    python benchmarks/bench_vision.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_decode(path: str, n_source: int, repeat: int) -> None:
    from lwmkit.pipelines.vision.decode import DecodeConfig
    from lwmkit.pipelines.vision.decode_worker import IsolatedDecoder, decode_local

    null = _median_time(
        lambda: subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], check=True), repeat
    )
    base = n_source / null
    print(
        f"decode {Path(path).name} ({n_source} frames): ffmpeg -f null {base:7.1f} source frames/s (baseline)"
    )
    for fps in (4.0, None):
        cfg = DecodeConfig(fps=fps)
        for decoder in ("decord", "ffmpeg"):
            wall = _median_time(
                lambda c=cfg, d=decoder: list(decode_local(path, c, d, False, None, None)), repeat
            )
            kept = len(list(decode_local(path, cfg, decoder, False, None, None))) - 1
            print(f"  {decoder:6s} fps={fps!s:4s} in-process {n_source / wall:7.1f} source frames/s "
                  f"({kept} kept)  ratio {n_source / wall / base:.2f}")  # fmt: skip
        with IsolatedDecoder(cfg) as dec:
            list(dec.decode(path))  # start the child
            wall = _median_time(lambda: list(dec.decode(path)), repeat)
        print(f"  decord fps={fps!s:4s} isolated   {n_source / wall:7.1f} source frames/s           "
              f"ratio {n_source / wall / base:.2f}")  # fmt: skip


def bench_encoder(n: int) -> float:
    from lwmkit.tokenizers import vqgan

    tok = vqgan.load(chunk=8)
    frames = np.random.default_rng(0).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    tok.encode(frames[:8])  # compile
    wall = _median_time(lambda: tok.encode(frames), 3)
    print(f"VQGAN encoder only (shipped checkpoint, batch 8): {n / wall:.1f} frames/s")
    return n / wall


def bench_job(media: list[str], encoder_fps: float, fps: str) -> None:
    from lwmkit.pipelines.vision.job import run

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for m in media:
            (folder / Path(m).name).symlink_to(m)
        for label in ("cold", "warm"):
            t = time.perf_counter()
            summary = run(["--inputs", str(folder), "--output", f"{tmp}/out-{label}", "--fps", fps])
            wall = time.perf_counter() - t
            rate = summary.frames / wall
            print(f"whole job ({label}, DirectRunner in-process, fps={fps}): {summary.frames} frames in {wall:.1f} s = "
                  f"{rate:.1f} frames/s  ratio to encoder-only {rate / encoder_fps:.2f}")  # fmt: skip


class _Decode:
    """A DoFn body decoding one file at 1 fps and yielding its frame count."""

    def __init__(self, isolated: bool) -> None:
        self.isolated = isolated

    def __call__(self, path: str):
        from lwmkit.pipelines.vision.decode import DecodeConfig
        from lwmkit.pipelines.vision.decode_worker import IsolatedDecoder, decode_local

        cfg = DecodeConfig(fps=1.0)
        if self.isolated:
            if not hasattr(self, "_dec"):
                self._dec = IsolatedDecoder(cfg)
            return [len(list(self._dec.decode(path))) - 1]
        return [len(list(decode_local(path, cfg, "decord", True, None, None))) - 1]


def bench_isolation(files: list[str]) -> None:
    import apache_beam as beam

    def pipeline(kind: str) -> float:
        t = time.perf_counter()
        with beam.Pipeline() as p:
            paths = p | beam.Create(files)
            if kind == "beam-subprocess":
                fn = beam.FlatMap(_Decode(False)).with_exception_handling(use_subprocess=True, timeout=60)
                _ = paths | fn
            else:
                _ = paths | beam.FlatMap(_Decode(kind == "isolated"))
        return time.perf_counter() - t

    base = pipeline("in-process")
    print(
        f"isolation, {len(files)} files decoded at 1 fps in a Beam ParDo: in-process {base:.2f} s (baseline)"
    )
    for kind in ("isolated", "beam-subprocess"):
        wall = pipeline(kind)
        print(
            f"  {kind:16s} {wall:.2f} s = {(wall - base) / len(files) * 1000:+.0f} ms per file  ratio {wall / base:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and frames")
    args = parser.parse_args()
    from lwmkit.runtime.sample_data import video_sources

    clips = {p.name: str(p) for p in video_sources()}
    repeat = 2 if args.quick else 5
    bench_decode(clips["bigbuckbunny.mp4"], 132, repeat)
    bench_decode(clips["bikes.mp4"], 250, repeat)
    encoder_fps = bench_encoder(16 if args.quick else 64)
    bench_job([clips["bikes.mp4"], clips["bigbuckbunny.mp4"], clips["carphone_pristine.mp4"]], encoder_fps,
              "4" if args.quick else "12")  # fmt: skip
    bench_isolation(sorted(clips.values()) * (1 if args.quick else 2))


if __name__ == "__main__":
    sys.exit(main())
