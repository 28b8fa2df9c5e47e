"""Ring attention on 8 emulated CPU devices: what fits, how memory grows, load balance.

    python benchmarks/bench_attention.py [--budget-gib 4] [--time-len 8192]

Prints, each figure next to its baseline from the same run:
1. the longest causal sequence whose forward+backward fits a per-device memory budget, for
   ring attention over 8 devices vs plain (dense) attention on one device (goal >= 8x);
2. per-device peak memory of ring attention fwd+bwd as L grows, with the log-log slope
   (1 = linear), for the custom-VJP backward and for autodiff through the scans;
3. zig-zag/striped vs contiguous causal ring: per-device work counts (the critical path =
   sum over hops of the busiest device's live tiles; goal <= 0.65x) and wall time.
Memory figures are XLA's buffer assignment for the compiled SPMD program (per device:
arguments + outputs + temporaries), the number that decides out-of-memory on an
accelerator; compiling needs no run, so lengths up to millions are checked. Emulated
devices share the host's cores, so wall time shows total work, not the critical path.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lwmkit.trainer.ring_attention import (  # noqa: E402
    layout_permutation,
    reference_attention,
    ring_attention,
    tile_work,
)

H, D, BLOCK = 8, 64, 512
GIB = 2**30


def _grad_fn(attend):
    return jax.jit(jax.grad(lambda q, k, v, *rest: jnp.sum(attend(q, k, v, *rest) ** 2), argnums=(0, 1, 2)))


def ring_peak_bytes(mesh: Mesh, L: int, custom_vjp: bool = True) -> int:
    """Per-device bytes of ring fwd+bwd at length L (XLA buffer assignment, nothing run)."""
    x = jax.ShapeDtypeStruct((1, L, H, D), jnp.float32, sharding=NamedSharding(mesh, P(None, "sp", None, None)))
    seg = jax.ShapeDtypeStruct((1, L), jnp.int32, sharding=NamedSharding(mesh, P(None, "sp")))
    idx = jax.ShapeDtypeStruct((L,), jnp.int32, sharding=NamedSharding(mesh, P("sp")))
    fn = _grad_fn(lambda q, k, v, s, i: ring_attention(q, k, v, s, i, mesh, block_q=BLOCK, block_k=BLOCK,
                                                       custom_vjp=custom_vjp))
    m = fn.lower(x, x, x, seg, idx).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def plain_peak_bytes(L: int) -> int:
    """Bytes of dense attention fwd+bwd at length L on one device."""
    x = jax.ShapeDtypeStruct((1, L, H, D), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, L), jnp.int32)
    m = _grad_fn(lambda q, k, v, s: reference_attention(q, k, v, s)).lower(x, x, x, seg).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def longest_fit(peak, budget: int, step: int, cap: int) -> int:
    """Largest multiple of ``step`` (<= cap) whose peak fits the budget: doubling, then bisection."""
    lo, hi = 0, step
    while hi <= cap and peak(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, cap + step)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
    return lo


def fits(mesh: Mesh, budget_gib: float) -> None:
    budget = int(budget_gib * GIB)
    plain = longest_fit(plain_peak_bytes, budget, 1024, 1 << 20)
    ring = longest_fit(lambda L: ring_peak_bytes(mesh, L), budget, 8 * BLOCK, 1 << 24)
    print(f"[fits] budget {budget_gib:g} GiB per device, causal fwd+bwd, {H} heads x {D}, fp32")
    print(f"[fits] plain attention, 1 device : longest L = {plain:,}")
    print(f"[fits] ring attention, 8 devices : longest L = {ring:,}  ->  {ring / plain:.1f}x plain (goal >= 8x)")


def growth(mesh: Mesh, lengths: list[int]) -> None:
    print("[memory] per-device peak of ring fwd+bwd (MiB) as L grows")
    rows = []
    for L in lengths:
        custom = ring_peak_bytes(mesh, L, True)
        auto = ring_peak_bytes(mesh, L, False) if L <= 65536 else float("nan")
        rows.append((L, custom, auto))
        print(f"[memory] L={L:>9,}  custom VJP {custom / 2**20:9.1f}   autodiff through scan {auto / 2**20:11.1f}")
    for name, col in (("custom VJP", 1), ("autodiff", 2)):
        pts = [(r[0], r[col]) for r in rows if not math.isnan(r[col])]
        (l0, m0), (l1, m1) = pts[-2], pts[-1]
        print(f"[memory] {name}: log-log slope over the last doubling = {math.log(m1 / m0) / math.log(l1 / l0):.2f}"
              " (1 = linear, 2 = quadratic)")


def balance(mesh: Mesh, L: int) -> None:
    n = mesh.shape["sp"]
    base = tile_work(L, n, "contiguous", block=BLOCK)
    for layout in ("zigzag", "striped"):
        w = tile_work(L, n, layout, block=BLOCK)
        ratio = w.max(axis=1).sum() / base.max(axis=1).sum()
        print(f"[balance] L={L:,} {layout}: critical path {w.max(axis=1).sum()} tiles vs contiguous "
              f"{base.max(axis=1).sum()} -> {ratio:.3f}x (goal <= 0.65x); total work {w.sum()} vs {base.sum()}")


def wall(mesh: Mesh, L: int, repeats: int = 3) -> None:
    r = np.random.default_rng(0)
    shard = NamedSharding(mesh, P(None, "sp", None, None))
    q, k, v = (jax.device_put(jnp.asarray(r.normal(size=(1, L, H, D)), jnp.float32), shard) for _ in range(3))
    seg = jax.device_put(jnp.ones((1, L), jnp.int32), NamedSharding(mesh, P(None, "sp")))
    times = {}
    for layout in ("contiguous", "zigzag", "striped"):
        idx = jnp.asarray(layout_permutation(L, mesh.shape["sp"], layout))
        fn = _grad_fn(lambda q, k, v, s, i: ring_attention(q, k, v, s, i, mesh, block_q=BLOCK, block_k=BLOCK))
        jax.block_until_ready(fn(q, k, v, seg, idx))
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(q, k, v, seg, idx))
            runs.append(time.perf_counter() - t)
        times[layout] = float(np.median(runs))
    for layout in ("zigzag", "striped"):
        print(f"[wall] L={L:,} fwd+bwd {layout} {times[layout]:.2f} s vs contiguous {times['contiguous']:.2f} s "
              f"-> {times[layout] / times['contiguous']:.2f}x (emulated devices share {os.cpu_count()} cores: "
              "total work, not critical path)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-gib", type=float, default=4.0)
    ap.add_argument("--time-len", type=int, default=8192)
    ap.add_argument("--skip", nargs="*", default=[], choices=["fits", "memory", "balance", "wall"])
    args = ap.parse_args()
    mesh = Mesh(np.array(jax.devices()[:8]), ("sp",))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, host cores {os.cpu_count()}")
    if "fits" not in args.skip:
        fits(mesh, args.budget_gib)
    if "memory" not in args.skip:
        growth(mesh, [8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576])
    if "balance" not in args.skip:
        for L in (8192, 131072, 1048576):
            balance(mesh, L)
    if "wall" not in args.skip:
        wall(mesh, args.time_len)


if __name__ == "__main__":
    main()
