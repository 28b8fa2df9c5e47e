"""Needle-eval decoding: KV-cached greedy decoding against the full-pass (uncached) decoder.

    python benchmarks/bench_needle_eval.py [--prompt 1024] [--new 24] [--batch 8] [--d-model 128] [--layers 4]

Both decoders run in this process on the same random-init model and the same left-padded
prompts (lengths ``prompt`` down to ``prompt - batch + 1``). EOS is an id outside the vocab,
so every row decodes all ``--new`` tokens on both paths. Prints the first call (compile +
run) and the median of warm calls for each path, the speed-up (uncached / cached, warm) and
whether the replies are identical (they must be).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.generate import LoadedModel, greedy_generate
from lwmkit.trainer.model import init_params


def time_decoder(model: LoadedModel, prompts: list[list[int]], new: int, eos: int, cached: bool,
                 repeats: int) -> tuple[float, float, list[list[int]]]:
    """``(first call seconds, median warm seconds, replies)``."""
    t0 = time.perf_counter()
    replies = greedy_generate(model, prompts, max_new=new, eos_id=eos, kv_cache=cached)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        greedy_generate(model, prompts, max_new=new, eos_id=eos, kv_cache=cached)
        warm.append(time.perf_counter() - t0)
    return first, statistics.median(warm), replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    vocab = 8000  # the shipped tokenizer's size
    config = ModelConfig(text_vocab_size=vocab, vision_vocab_size=0, d_model=args.d_model, n_layers=args.layers,
                         n_heads=args.heads, mlp_dim=args.d_model * 4, attention_block=128, loss_chunk=128)
    model = LoadedModel(init_params(config, jax.random.PRNGKey(0)), config, 10000.0, "bench", args.prompt, None,
                        "mem", 0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, size=args.prompt - i).tolist() for i in range(args.batch)]
    print(f"model d={args.d_model} layers={args.layers} heads={args.heads} vocab={vocab}; batch {args.batch}, "
          f"prompts {args.prompt - args.batch + 1}..{args.prompt} tokens, {args.new} new tokens, "
          f"{jax.devices()[0].platform} x{len(jax.devices())}")
    results = {}
    for name, cached in (("uncached", False), ("cached", True)):
        first, warm, replies = time_decoder(model, prompts, args.new, vocab, cached, args.repeats)
        results[name] = (warm, replies)
        print(f"{name:>9}: first call (compile + run) {first:7.2f} s   warm {warm:7.2f} s   "
              f"{warm / args.new * 1e3:8.1f} ms/token-step")
    same = results["uncached"][1] == results["cached"][1]
    print(f"speed-up (uncached / cached, warm): {results['uncached'][0] / results['cached'][0]:.1f}x; "
          f"replies identical: {same}")
    if not same:
        raise SystemExit("cached and uncached replies differ")


if __name__ == "__main__":
    main()
