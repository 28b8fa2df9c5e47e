"""Packing efficiency at 32K on a realistic length mix, and packing throughput (tokens/s).

    python benchmarks/bench_packing.py [--seq-len 32768] [--examples 40000]

The mix follows LWM's chat stages (shared/LWM_FACTS.md §4: a quarter each of text->image,
image QA, text->video, video QA) plus plain documents: images are one 257-token frame plus
a prompt and a caption; videos 4..100 frames (1K..26K tokens); documents log-normal
(median ~1.6K tokens, capped at seq_len). Baselines, measured in the same run:
efficiency of naive next-fit packing (close a sequence as soon as the next example does not
fit) and of first-fit; throughput of next-fit, and of a plain numpy copy of the same tokens
for the sequence-building step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lwmkit.pipelines.pack.formatting import Example
from lwmkit.pipelines.pack.packing import ALGORITHMS, pack_lengths, packing_efficiency
from lwmkit.pipelines.pack.sequences import assemble
from lwmkit.schemas.packed import encode_sample


def length_mix(n: int, seq_len: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.2, 0.2, 0.2, 0.4])  # image gen/QA, video gen, video QA, documents
    image = 263 + 20 + rng.integers(8, 60, n)
    frames = rng.integers(4, 101, n)
    video = 6 + 257 * frames + 20 + rng.integers(8, 80, n)
    docs = np.exp(rng.normal(np.log(1600), 1.1, n)).astype(int) + 2
    lengths = np.choose(kind, [image, image + 10, video, docs])
    return np.clip(lengths, 2, seq_len).astype(np.int64)


def bench_algorithms(lengths: np.ndarray, seq_len: int, buffer: int) -> dict[str, tuple[float, float, int]]:
    out = {}
    for algo in ALGORITHMS:
        t = time.perf_counter()
        bins = pack_lengths(lengths.tolist(), seq_len, algorithm=algo, buffer_size=buffer)
        dt = time.perf_counter() - t
        out[algo] = (packing_efficiency(bins, lengths, seq_len), lengths.sum() / dt, len(bins))
    return out


def bench_assembly(lengths: np.ndarray, seq_len: int, n_seq: int = 24) -> tuple[float, float]:
    """Tokens/s building and encoding sequences (assemble + .npy encode) vs a plain copy."""
    bins = pack_lengths(lengths.tolist(), seq_len, buffer_size=4096)[:n_seq]
    rng = np.random.default_rng(1)
    exs = {}
    for b in bins:
        for i in b:
            n = int(lengths[i])
            exs[i] = Example(
                f"e{i}",
                "s",
                "text",
                "dense",
                rng.integers(3, 8000, n).astype(np.int32),
                rng.random(n) < 0.7,
                np.zeros(n, bool),
            )
    tokens = sum(int(lengths[i]) for b in bins for i in b)
    t = time.perf_counter()
    for k, b in enumerate(bins):
        arrays, meta = assemble([exs[i] for i in b], seq_len, f"k{k}", pad_id=0, weighting="per_example")
        encode_sample(arrays, meta)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    for b in bins:
        np.concatenate([exs[i].ids for i in b] + [exs[i].loss for i in b] + [exs[i].vision for i in b])
    base = time.perf_counter() - t
    return tokens / dt, tokens / base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--examples", type=int, default=40000)
    ap.add_argument("--buffer", type=int, default=4096)
    args = ap.parse_args()
    lengths = length_mix(args.examples, args.seq_len)
    print(
        f"{args.examples} examples, {lengths.sum() / 1e6:.1f}M tokens, median {int(np.median(lengths))}, "
        f"max {lengths.max()}, seq_len {args.seq_len}, buffer {args.buffer}"
    )
    res = bench_algorithms(lengths, args.seq_len, args.buffer)
    nf_eff, nf_tps, _ = res["next_fit"]
    for algo, (eff, tps, n) in res.items():
        print(
            f"  {algo:20s} efficiency {eff:.4f} ({n} sequences, padding {1 - eff:.2%})  "
            f"{tps / 1e6:7.1f}M tokens/s  | vs next_fit: efficiency x{eff / nf_eff:.3f}, padding x{(1 - eff) / (1 - nf_eff):.3f}"
        )
    build, copy = bench_assembly(lengths, args.seq_len)
    print(
        f"  sequence building (assemble + encode .npy): {build / 1e6:.1f}M tokens/s; "
        f"plain numpy copy {copy / 1e6:.1f}M tokens/s (ratio {build / copy:.3f})"
    )


if __name__ == "__main__":
    main()
