"""Needle-eval decoding: KV-cached greedy decoding against the full-pass (uncached) decoder.

    python benchmarks/bench_needle_eval.py [--prompt 1024] [--new 24] [--batch 8] [--d-model 128] [--layers 4]
        [--sequence-parallel N]

Both decoders run in this process on the same random-init model and the same left-padded
prompts (lengths ``prompt`` down to ``prompt - batch + 1``). With ``--sequence-parallel N``
both run on a mesh whose sequence axis is N (on CPU, N emulated devices): ring-attention
passes per token against a ring-attention prefill plus steps over a cache sharded by slots. EOS is an id outside the vocab,
so every row decodes all ``--new`` tokens on both paths. Prints the first call (compile +
run) and the median of warm calls for each path, the speed-up (uncached / cached, warm) and
whether the replies are identical (they must be).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def time_decoder(model, prompts: list[list[int]], new: int, eos: int, cached: bool, repeats: int,
                 mesh=None) -> tuple[float, float, list[list[int]]]:
    """``(first call seconds, median warm seconds, replies)``."""
    from lwmkit.trainer.generate import greedy_generate

    t0 = time.perf_counter()
    replies = greedy_generate(model, prompts, max_new=new, eos_id=eos, kv_cache=cached, mesh=mesh)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        greedy_generate(model, prompts, max_new=new, eos_id=eos, kv_cache=cached, mesh=mesh)
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
    ap.add_argument("--sequence-parallel", type=int, default=1, help="Sequence axis of the mesh (CPU: emulated devices).")
    args = ap.parse_args()
    sp = args.sequence_parallel
    if sp > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={sp}").strip()
    import jax  # after XLA_FLAGS
    import numpy as np

    from lwmkit.schemas.training import MeshConfig, ModelConfig
    from lwmkit.trainer.generate import LoadedModel
    from lwmkit.trainer.mesh import make_mesh, param_shardings
    from lwmkit.trainer.model import init_params

    vocab = 8000  # the shipped tokenizer's size
    config = ModelConfig(text_vocab_size=vocab, vision_vocab_size=0, d_model=args.d_model, n_layers=args.layers,
                         n_heads=args.heads, mlp_dim=args.d_model * 4, attention_block=128, loss_chunk=128)
    params = init_params(config, jax.random.PRNGKey(0))
    mesh = None
    if sp > 1:
        mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1, sequence=sp), jax.devices()[:sp])
        params = jax.device_put(params, param_shardings(params, mesh))
    model = LoadedModel(params, config, 10000.0, "bench", args.prompt, None, "mem", 0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, size=args.prompt - i).tolist() for i in range(args.batch)]
    print(f"model d={args.d_model} layers={args.layers} heads={args.heads} vocab={vocab}; batch {args.batch}, "
          f"prompts {args.prompt - args.batch + 1}..{args.prompt} tokens, {args.new} new tokens, "
          f"{jax.devices()[0].platform} x{len(jax.devices())}, sequence-parallel {sp}")
    results = {}
    for name, cached in (("uncached", False), ("cached", True)):
        first, warm, replies = time_decoder(model, prompts, args.new, vocab, cached, args.repeats, mesh)
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
