"""Trainer tokens/s and MFU on CPU for a small model, and the shard reader's tokens/s alone.

    python benchmarks/bench_trainer.py [--seq-lens 2048 8192] [--steps 4]

Packs the demo mixture with `lwmkit pack` at each length, trains a small model (d 256,
4 layers) for a few steps on one device, and reads the same batches with the reader alone.
Prints tokens/s, MFU (peak = fp32 matmul measured in this run) and the reader/trainer ratio
(goal >= 10x).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    from lwmkit.pack_demo import write_demo_mixture
    from lwmkit.runtime.sample_data import materialise
    from lwmkit.schemas import ShardSet, TrainConfig, from_dict
    from lwmkit.trainer.data import BatchPlan, ShardReader
    from lwmkit.trainer.logs import measure_peak_flops
    from lwmkit.trainer.train import train

    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    materialise(tmp / "samples", videos=False)
    mixture = write_demo_mixture(tmp / "demo", (tmp / "samples" / "books" / "botchan.txt").read_text())
    peak, source = measure_peak_flops()
    print(f"peak {peak / 1e9:.1f} GFLOP/s ({source})")
    for L in args.seq_lens:
        out = tmp / f"shards-{L}"
        subprocess.run([sys.executable, "-c", "from lwmkit.cli import main; main()", "pack", "--mixture", str(mixture),
                        "--seq-len", str(L), "--stage", f"b{L}", "--out", str(out)], check=True, capture_output=True)
        cfg = from_dict(TrainConfig, {
            "model": {"d_model": 256, "n_layers": 4, "n_heads": 4, "mlp_dim": 688, "text_vocab_size": 8000,
                      "attention_block": 512, "loss_chunk": 1024},
            "mesh": {"fsdp": 1}, "peak_flops": peak, "checkpoint": {"dir": str(tmp / f"ck-{L}"), "every_steps": 1000},
            "optimizer": {"lr": 1e-3},
            "stages": [{"name": f"b{L}", "seq_len": L, "rope_theta": 1e6, "steps": args.steps + 1, "batch_size": 1,
                        "data": str(out)}],
        })
        train(cfg)
        import json

        recs = [json.loads(x) for x in (tmp / f"ck-{L}" / "logs" / "train.jsonl").read_text().splitlines()]
        steps = [r for r in recs if "loss" in r][1:]  # the first step includes compilation
        tok_s = sum(r["tokens_per_s"] for r in steps) / len(steps)
        flops_s = sum(r["flops_per_s"] for r in steps) / len(steps)  # "mfu" is null where above the peak
        mfu = flops_s / peak
        shards = ShardSet.open(str(out))
        plan = BatchPlan(0, f"b{L}", shards.manifest.sha256, shards.manifest.n_sequences, 1)
        n = min(64, shards.manifest.n_sequences * 4)
        with ShardReader(shards, plan, prefetch=0) as reader:
            reader.load(0, [((0, 1), (0, L))])  # first shard reads + checksums included below
            reader.store._cache.clear()
            t0 = time.perf_counter()
            for s in range(n):
                reader.load(s, [((0, 1), (0, L))])
            read_tok_s = n * L / (time.perf_counter() - t0)
        print(f"seq_len {L}: trainer {tok_s:,.0f} tok/s, MFU {100 * mfu:.1f}% | reader alone {read_tok_s:,.0f} tok/s "
              f"(incl. sha256 + decode of every shard) | reader/trainer {read_tok_s / tok_s:,.0f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
