"""Attention, model and trainer speed on one accelerator, paired in one run (issue 21).

    python benchmarks/bench_gpu.py [--shards DIR]      # one GPU, under 5 minutes
    python benchmarks/bench_gpu.py --small             # CPU smoke check (~2 min on a loaded 2-core box)

Prints, in order: the bf16 matmul peak measured now (and the vendor figure for the chip);
causal attention fwd+bwd TFLOP/s at 8K/32K/128K (16 heads x 128, B=1, 4 packed documents)
for lwmkit's fused Pallas kernel, the XLA blockwise path (tiles 1024) and cuDNN flash without
segments (``jax.nn.dot_product_attention(implementation="cudnn")``: the roofline reference,
it cannot mask packed documents); the 1B model (d 2048, 16 layers, 16 heads, MLP 5632, vocab
32000 + 8448, bf16, scanned layers, full remat at 32K) fwd+bwd tokens/s and MFU at 8K and 32K
with each kernel; and ``lwmkit train`` for a few steps of packed shards (``--shards``, or the
demo mixture packed now where apache-beam is installed; without tensorboardX it logs to JSONL
only) with its own log lines, including a checkpoint save inside a log window.

Attention FLOPs follow FlashAttention's convention: forward ``4 L^2 H D`` halved for causal,
fwd+bwd = 3.5x forward (the backward recomputes ``QK^T``). Model FLOPs are
``trainer/flops.py``'s (fwd+bwd = 3x forward, causal half, no remat). ``--small`` shrinks
everything to tiny sizes on CPU, where the fused kernel runs in Pallas interpret mode: its
figures check that the script runs, they are not performance.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.flash_ring import flash_ring_attention
from lwmkit.trainer.flops import choose_peak, step_flops, vendor_peak
from lwmkit.trainer.logs import measure_matmul
from lwmkit.trainer.ring_attention import ring_attention

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def timed(fn, *args, repeats: int) -> float:
    """Best wall time of ``fn(*args)`` after one compile-and-run."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def kib(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def share(x: float) -> str:
    """A utilisation as a percentage; above 100% it is no utilisation (the peak is wrong): flagged."""
    return f"{100 * x:.1f}%" if x <= 1.0 else f"n/a ({100 * x:.0f}% of a peak that is too low)"


def packed(length: int, docs: int = 4) -> tuple[jax.Array, jax.Array]:
    seg = np.repeat(np.arange(1, docs + 1, dtype=np.int32), length // docs)[None]
    pos = np.tile(np.arange(length // docs, dtype=np.int32), docs)[None]
    return jnp.asarray(seg), jnp.asarray(pos)


# ----------------------------------------------------------------------------- attention
def _fwd_bwd(f):
    """Jitted dq, dk, dv of ``sum(f(q, k, v) * ct)`` (everything an argument: no baked-in constants)."""

    def loss(q, k, v, ct, seg, idx):
        return (f(q, k, v, seg, idx).astype(jnp.float32) * ct).sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def attention_section(lengths, heads: int, head_dim: int, dtype, repeats: int, deadline: float) -> None:
    say(
        f"attention fwd+bwd, causal, B=1, {heads} heads x {head_dim}, {np.dtype(dtype).name}, 4 packed documents "
        "(cuDNN: no segments)"
    )
    on_gpu = jax.default_backend() == "gpu"
    kernels = {
        "fused (pallas)": lambda q, k, v, s, i: flash_ring_attention(q, k, v, s, i, None),
        "xla blockwise 1024": lambda q, k, v, s, i: ring_attention(
            q, k, v, s, i, None, block_q=1024, block_k=1024
        ),
    }
    if on_gpu:
        kernels["cudnn flash (no segments)"] = lambda q, k, v, s, i: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="cudnn"
        )
    for L in lengths:
        r = np.random.default_rng(0)
        q, k, v, ct = (jnp.asarray(r.normal(size=(1, L, heads, head_dim)), dtype) for _ in range(4))
        seg, _ = packed(L)
        idx = jnp.arange(L, dtype=jnp.int32)
        flops = 3.5 * 4 * L * L * heads * head_dim / 2
        row = {}
        for name, f in kernels.items():
            if time.monotonic() > deadline:
                row[name] = "skipped (time budget)"
                continue
            try:
                seconds = timed(_fwd_bwd(f), q, k, v, ct, seg, idx, repeats=repeats)
                row[name] = f"{flops / seconds / 1e12:.{1 if on_gpu else 4}f} TFLOP/s"
            except Exception as err:  # one failing kernel must not hide the others' figures
                row[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
        if not on_gpu:
            row["cudnn flash (no segments)"] = "skipped (needs a GPU)"
        say(f"  L={kib(L)}: " + " | ".join(f"{n} {v}" for n, v in row.items()))


# ----------------------------------------------------------------------------- the model
def model_config(small: bool, kernel: str, remat: str) -> ModelConfig:
    if small:
        return ModelConfig(
            text_vocab_size=8000,
            vision_vocab_size=8448,
            d_model=64,
            n_layers=2,
            n_heads=2,
            mlp_dim=128,
            dtype="float32",
            scan_layers=True,
            remat=remat,
            attention_kernel=kernel,
            attention_block=128,
            loss_chunk=128,
        )
    return ModelConfig(
        text_vocab_size=32000,
        vision_vocab_size=8448,
        d_model=2048,
        n_layers=16,
        n_heads=16,
        mlp_dim=5632,
        dtype="bfloat16",
        scan_layers=True,
        remat=remat,
        attention_kernel=kernel,
        attention_block=1024,
        loss_chunk=1024,
    )


def model_batch(config: ModelConfig, L: int) -> dict[str, jax.Array]:
    r = np.random.default_rng(0)
    seg, pos = packed(L)
    ids = jnp.asarray(r.integers(0, config.text_vocab_size, (1, L)), jnp.int32)
    vm = jnp.zeros((1, L), bool)
    return {
        "input_ids": ids,
        "target_ids": jnp.roll(ids, -1, 1),
        "loss_weights": jnp.ones((1, L), jnp.float32),
        "segment_ids": seg,
        "positions": pos,
        "vision_mask": vm,
        "target_vision_mask": vm,
    }


def model_section(
    kernel: str,
    lengths,
    small: bool,
    peaks: tuple[float, float],
    repeats: int,
    deadline: float,
    mfus: dict[tuple[str, int], float],
) -> None:
    """``peaks``: (bf16 matmul measured now, the peak lwmkit train divides by); ``mfus`` gets the latter's MFU."""
    from lwmkit.trainer.loss import loss_and_metrics
    from lwmkit.trainer.model import count_params, init_params

    for L in lengths:
        if time.monotonic() > deadline:
            say(f"  {kernel} L={kib(L)}: skipped (time budget)")
            continue
        config = model_config(small, kernel, "full" if small or L >= 32768 else "none")
        try:
            params = init_params(config, jax.random.PRNGKey(0))
            batch = model_batch(config, L)
            fn = jax.jit(
                jax.value_and_grad(
                    lambda p, b, c=config: loss_and_metrics(p, b, config=c, rope_theta=1e6, mesh=None)[0]
                )
            )
            seconds = timed(fn, params, batch, repeats=repeats)
        except Exception as err:
            say(f"  {kernel} L={kib(L)}: failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        achieved = step_flops(config, L, 1).total_halved / seconds
        mfus[(kernel, L)] = achieved / peaks[1]
        say(
            f"  model {count_params(params) / 1e9:.3f}B, {kernel}, L={kib(L)}, remat {config.remat}: "
            f"{L / seconds / 1e3:.2f}K tokens/s, {achieved / 1e12:.3f} TFLOP/s = {share(achieved / peaks[0])} of the "
            f"measured matmul, MFU {share(mfus[(kernel, L)])} of train's peak"
        )
        del params


# ----------------------------------------------------------------------------- lwmkit train
def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _pack_demo(tmp: Path, seq_len: int, out: Path | None = None) -> str | None:
    if _missing("apache_beam"):
        say(
            "  no shards: lwmkit pack needs apache-beam, which is not installed here. Pack on a CPU machine "
            f"(lwmkit pack --mixture <demo mixture> --seq-len {seq_len} --out DIR) and pass --shards DIR"
        )
        return None
    from lwmkit.pack_demo import write_demo_mixture
    from lwmkit.runtime.sample_data import materialise

    materialise(tmp / "samples", videos=False)
    mixture = write_demo_mixture(tmp / "demo", (tmp / "samples" / "books" / "botchan.txt").read_text())
    out = out or tmp / f"shards-{seq_len}"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from lwmkit.cli import main; main()",
            "pack",
            "--mixture",
            str(mixture),
            "--seq-len",
            str(seq_len),
            "--stage",
            "bench",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return str(out)


def train_section(shards: str | None, small: bool, steps: int, bench_mfu: dict, deadline: float) -> None:
    if time.monotonic() > deadline:
        say("  lwmkit train: skipped (time budget)")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    shards = shards or _pack_demo(tmp, 512 if small else 8192)
    if shards is None:
        return
    from lwmkit.schemas import load_manifest

    L = load_manifest(f"{shards.rstrip('/')}/manifest.json").seq_len
    cfg = {
        "model": asdict(model_config(small, "auto", "full" if L >= 32768 else "none")),
        "mesh": {"fsdp": 1},
        "log_every": 2,
        "checkpoint": {"dir": str(tmp / "ck"), "every_steps": 4, "keep": 1},
        "optimizer": {"lr": 1e-4},
        "stages": [
            {
                "name": "bench",
                "seq_len": L,
                "rope_theta": 1e6,
                "steps": steps,
                "batch_size": 1,
                "data": shards,
            }
        ],
    }
    (tmp / "train.json").write_text(json.dumps(cfg))
    say(f"  lwmkit train: {steps} steps of {shards} (L={L}), log every 2 steps, a checkpoint at step 4")
    proc = subprocess.run(
        [sys.executable, "-c", "from lwmkit.cli import main; main()", "train", str(tmp / "train.json")],
        capture_output=True,
        text=True,
    )
    for line in proc.stderr.splitlines():
        if " step " in line or "MFU =" in line or "checkpoint" in line or "error" in line:
            print("    " + line.strip(), flush=True)
    if proc.returncode != 0:
        say(f"  lwmkit train failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1][:300]}")
        return
    recs = [json.loads(x) for x in (tmp / "ck" / "logs" / "train.jsonl").read_text().splitlines()]
    steps_recs = [r for r in recs if "tokens_per_s" in r]
    if steps_recs and ("pallas" if jax.default_backend() == "gpu" else "xla", L) in bench_mfu:
        logged = steps_recs[-1].get("mfu")
        ref = bench_mfu[("pallas" if jax.default_backend() == "gpu" else "xla", L)]
        say(
            f"  train's last logged MFU {'n/a' if logged is None else share(logged)} vs this bench's {share(ref)} "
            "for the same model and L (train adds the optimizer update and data loading; peaks measured apart)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes on CPU (interpret mode): a smoke check")
    ap.add_argument(
        "--shards", help="packed shards for the lwmkit train section (default: pack the demo mixture)"
    )
    ap.add_argument("--steps", type=int, default=6, help="lwmkit train steps (a checkpoint at step 4)")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds after which later cases are skipped")
    ap.add_argument(
        "--pack",
        type=Path,
        help="only pack the demo mixture's 8K shards into this folder (here, for the GPU)",
    )
    args = ap.parse_args()
    if args.pack:
        with tempfile.TemporaryDirectory() as tmp:
            if _pack_demo(Path(tmp), 8192, args.pack.resolve()) is None:
                sys.exit(2)
        say(f"packed 8K shards into {args.pack}: carry it and pass --shards {args.pack}")
        return
    small = args.small
    deadline = T0 + args.budget
    dev = jax.devices()[0]
    say(
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s)"
        + ("  [--small: smoke check, not performance]" if small else "")
    )
    dtype = "float32" if small else "bfloat16"  # the models' compute dtype in each mode
    measured = measure_matmul(
        dtype, n=None if small else 8192, repeats=3 if small else 10
    )  # small: train's n
    table = vendor_peak(dev.device_kind, dtype)
    say(
        f"{dtype} matmul peak measured now: {measured / 1e12:.3f} TFLOP/s per device; vendor dense {dtype}: "
        + (f"{table / 1e12:.0f} TFLOP/s" if table else "not in the table")
    )
    train_peak, source = (
        (measured, "measured") if dev.platform == "cpu" else choose_peak(dev.device_kind, dtype, measured)
    )
    say(f"lwmkit train divides by {train_peak / 1e12:.3f} TFLOP/s ({source})")
    repeats = 2 if small else 3
    attention_section(
        [256] if small else [8192, 32768, 131072],
        2 if small else 16,
        32 if small else 128,
        jnp.float32 if small else jnp.bfloat16,
        repeats,
        deadline,
    )
    say(
        "1B model fwd+bwd (value_and_grad of the training loss), B=1, 4 packed documents, fused kernel; MFU over "
        "the bf16 peak"
        if not small
        else "tiny model fwd+bwd, fused kernel"
    )
    lengths = [256] if small else [8192, 32768]
    mfus: dict[tuple[str, int], float] = {}
    model_section("pallas", lengths, small, (measured, train_peak), repeats, deadline, mfus)
    say("lwmkit train (attention_kernel auto)")
    train_section(args.shards, small, 6 if small else args.steps, mfus, deadline)
    say("the same model on the XLA blockwise path (today's; tiles 1024)")
    model_section("xla", lengths, small, (measured, train_peak), repeats, deadline, mfus)
    say("done")


if __name__ == "__main__":
    main()
