"""VQGAN encoder throughput on this machine, against its own measured matmul peak.

    python benchmarks/bench_vqgan.py [--checkpoint PATH] [--reps 5] [--json out.json]

Prints, for the shipped default (or --checkpoint) at batch 8 and 32 in float32 and bfloat16:
frames/s, GFLOP per frame (XLA's cost analysis of the compiled encoder), achieved GFLOP/s and
its fraction of the jitted float32 matmul peak measured in this same run (the baseline).
Also prints LWM's full VQGAN's FLOPs per frame (compiled from shapes only, never run).
The machine is shared: the peak is measured before and after, and the larger one is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Best GFLOP/s of a jitted float32 n x n matmul."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_frame(tok, batch: int) -> float:
    frames = jax.ShapeDtypeStruct((batch, 256, 256, 3), jnp.uint8)
    cost = tok._encode_fn.lower(tok.params, frames).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / batch


def lwm_flops_per_frame() -> float:
    from lwmkit.tokenizers import vqgan

    cfg = vqgan.lwm_config()
    shapes = vqgan.param_shapes(cfg)
    tok = vqgan.VQGANTokenizer(cfg, shapes, id="shapes-only")
    return flops_per_frame(tok, 1)


def encode_fps(tok, frames: np.ndarray, reps: int) -> float:
    tok.encode(frames)  # compile + warm up
    times = [_timed(lambda: tok.encode(frames)) for _ in range(reps)]
    return len(frames) / statistics.median(times)


def main() -> None:
    from lwmkit.tokenizers import vqgan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    peak_before = matmul_peak()
    base = vqgan.load(args.checkpoint)
    rng = np.random.default_rng(0)
    rows = []
    for dtype in ("float32", "bfloat16"):
        for batch in (8, 32):
            tok = base.with_options(dtype=dtype, chunk=batch)
            frames = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
            fps = encode_fps(tok, frames, args.reps)
            rows.append(
                {
                    "dtype": dtype,
                    "batch": batch,
                    "frames_per_s": fps,
                    "gflop_per_frame": flops_per_frame(tok, batch) / 1e9,
                }
            )
    peak = max(peak_before, matmul_peak())
    print(f"matmul peak (jitted fp32 2048^2, best of 10, max of before/after): {peak:.1f} GFLOP/s")
    print(f"{'dtype':9} {'batch':>5} {'frames/s':>9} {'GFLOP/frame':>12} {'GFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        r["gflop_per_s"] = r["frames_per_s"] * r["gflop_per_frame"]
        r["fraction_of_peak"] = r["gflop_per_s"] / peak
        print(f"{r['dtype']:9} {r['batch']:>5} {r['frames_per_s']:>9.1f} {r['gflop_per_frame']:>12.2f} "
              f"{r['gflop_per_s']:>8.1f} {r['fraction_of_peak']:>8.2f}")  # fmt: skip
    lwm = lwm_flops_per_frame() / 1e9
    print(
        f"LWM's full VQGAN encoder: {lwm:.1f} GFLOP/frame ({lwm / rows[0]['gflop_per_frame']:.0f}x the shipped default)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"peak_gflop_per_s": peak, "rows": rows, "lwm_gflop_per_frame": lwm, "tokenizer_id": base.id},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
