"""Audit recount throughput and memory on a generated shard set.

    python benchmarks/bench_audit.py [--seq-len 8192] [--sequences 1024] [--per-shard 64] [--beam]

Writes a packed set (text, image and video examples in LWM's layout, valid by the
contract) to a temporary folder, then measures, in the same run:

* the audit's local recount (streamed: hash + decode + validate + count), in MB/s and
  sequences/s, and its peak traced memory on one shard;
* baseline 1, the I/O floor: reading every shard and hashing it (sha256), nothing else;
* baseline 2, the obvious alternative: iterating the foundation reader ``ShardSet`` (reads a
  whole shard into memory, verifies it, decodes and validates every sample) and counting
  from meta.json — its throughput and peak memory;
* with ``--beam``: the same recount as a Beam job on DirectRunner with 2 worker processes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
import tracemalloc

import numpy as np

from lwmkit.pipelines.audit.job import AuditConfig, open_shard_set, recount, recount_local, recount_shard
from lwmkit.runtime.files import write_atomic
from lwmkit.schemas import (
    Manifest,
    PackedMeta,
    SegmentInfo,
    ShardSet,
    TokenCounts,
    VocabLayout,
    build_shard,
    encode_sample,
    shard_entry,
    shard_name,
)  # fmt: skip

VOCAB = VocabLayout(
    text_vocab_size=32000, bos_id=1, eos_id=2, vision_start_ids=(529,), vision_end_ids=(1533,)
)


def _example(rng: np.random.Generator, room: int):
    kind = rng.choice(["text", "image", "video"], p=[0.5, 0.3, 0.2])
    frames = 1 if kind == "image" else int(rng.integers(2, 9)) if kind == "video" else 0
    vision = frames * 257
    n = min(room, vision + 6 + int(rng.integers(20, 1500)))
    ids = rng.integers(3, 32000, n).astype(np.int32)
    vm = np.zeros(n, bool)
    if frames and n > vision + 4:
        vm[3 : 3 + vision] = True
        ids[3 : 3 + vision] = rng.integers(0, 8192, vision)
        ends = 3 + np.arange(1, frames + 1) * 257 - 1
        ids[ends] = 8192
        ids[ends[-1]] = 8193
    else:
        kind, frames = "text", 0
    return str(kind), frames, ids, vm


def _sequence(rng: np.random.Generator, key: str, seq_len: int, counts: dict):
    a = {k: np.zeros(seq_len, np.int32) for k in ("input_ids", "target_ids", "segment_ids", "positions")}
    a["loss_weights"] = np.zeros(seq_len, np.float32)
    a["vision_mask"], a["target_vision_mask"] = np.zeros(seq_len, bool), np.zeros(seq_len, bool)
    at, infos = 0, []
    while seq_len - at > 64 and len(infos) < 64:
        kind, frames, ids, vm = _example(rng, seq_len - at)
        n, sid = len(ids), len(infos) + 1
        a["input_ids"][at : at + n], a["vision_mask"][at : at + n] = ids, vm
        a["target_ids"][at : at + n - 1], a["target_vision_mask"][at : at + n - 1] = ids[1:], vm[1:]
        a["segment_ids"][at : at + n], a["positions"][at : at + n] = sid, np.arange(n)
        loss = np.zeros(n, bool)
        loss[n // 2 : n - 1] = True
        a["loss_weights"][at : at + n][loss] = 1.0 / loss.sum()
        source = {"text": "web", "image": "pics", "video": "clips"}[kind]
        infos.append(
            SegmentInfo(sid, f"{key}-{sid}", source, kind, n, int(loss.sum()), int(vm.sum()), frames)
        )
        c = counts.setdefault((source, kind), [0, 0, 0, 0])
        for i, v in enumerate((1, n, int(loss.sum()), int(vm.sum()))):
            c[i] += v
        at += n
    return encode_sample(a, PackedMeta(key=key, seq_len=seq_len, segments=tuple(infos)))


def write_set(root: str, seq_len: int, n_sequences: int, per_shard: int) -> Manifest:
    rng, counts, entries = np.random.default_rng(0), {}, []
    for s in range(0, n_sequences, per_shard):
        samples = [
            _sequence(rng, f"s-{i:07d}", seq_len, counts) for i in range(s, min(s + per_shard, n_sequences))
        ]
        data = build_shard(samples)
        write_atomic(f"{root}/{shard_name(len(entries))}", data)
        entries.append(shard_entry(shard_name(len(entries)), data, len(samples)))

    def table(pos: int) -> dict:
        out: dict = {}
        for key, c in counts.items():
            out[key[pos]] = [x + y for x, y in zip(out.get(key[pos], [0, 0, 0, 0]), c, strict=True)]
        return {k: TokenCounts(*v) for k, v in out.items()}

    per_source, used = table(0), sum(c[1] for c in counts.values())
    m = Manifest(
        stage="bench", seq_len=seq_len, seed=0, tokenizer_id="t", vqgan_id=None, vocab=VOCAB, mixture={},
        loss_weighting="per_example", vision_loss_weight=0.5, text_loss_weight=0.5, n_sequences=n_sequences,
        padding_tokens=n_sequences * seq_len - used, packing_efficiency=used / (n_sequences * seq_len),
        per_source=per_source, per_modality=table(1), shards=tuple(entries),
    )  # fmt: skip
    write_atomic(f"{root}/manifest.json", m.to_json().encode())
    return m


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _hash_only(root: str, m: Manifest) -> None:
    for e in m.shards:
        with open(f"{root}/{e.name}", "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)


def _shardset_count(root: str) -> int:
    tokens = 0
    for _, meta in ShardSet.open(root):
        tokens += sum(s.n_tokens for s in meta.segments)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--sequences", type=int, default=1024)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--beam", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-audit-")
    try:
        _measure(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(root: str, args: argparse.Namespace) -> None:
    m, t_write = _timed(lambda: write_set(root, args.seq_len, args.sequences, args.per_shard))
    mb = sum(e.size_bytes for e in m.shards) / 1e6
    print(
        f"set: {m.n_sequences} sequences x {m.seq_len} in {len(m.shards)} shards, {mb:.1f} MB (written in {t_write:.1f}s)"
    )
    ref = open_shard_set(root)
    _, t_hash = _timed(lambda: _hash_only(root, m))
    rc, t_audit = _timed(lambda: recount_local(ref))
    assert rc.tokens == sum(c.tokens for c in m.per_source.values()) and all(
        s.status == "ok" for s in rc.shards
    )
    tokens, t_set = _timed(lambda: _shardset_count(root))
    assert tokens == rc.tokens
    print(
        f"audit local recount : {mb / t_audit:7.1f} MB/s  {m.n_sequences / t_audit:8.1f} seq/s  ({t_audit:.2f}s)"
    )
    print(
        f"baseline read+sha256: {mb / t_hash:7.1f} MB/s  -> audit runs at {t_hash / t_audit:.2f}x the I/O floor"
    )
    print(
        f"baseline ShardSet   : {mb / t_set:7.1f} MB/s  -> audit/ShardSet speed ratio {t_set / t_audit:.2f}x"
    )
    p_audit = _peak(lambda: recount_shard(ref, ref.shards[0]))
    p_set = _peak(lambda: list(ShardSet.open(root).iter_shard(0)))
    shard_mb = m.shards[0].size_bytes / 1e6
    print(f"peak memory, one {shard_mb:.1f} MB shard: audit {p_audit / 1e6:.1f} MB, ShardSet {p_set / 1e6:.1f} MB "
          f"(ratio {p_audit / p_set:.2f})")  # fmt: skip
    if args.beam:
        cfg = AuditConfig(runner="DirectRunner")
        _, t_beam = _timed(lambda: recount(ref, cfg, ["--direct_num_workers=2"]))
        print(
            f"audit Beam (DirectRunner, 2 procs): {mb / t_beam:7.1f} MB/s ({t_beam:.2f}s) -> {t_audit / t_beam:.2f}x local"
        )


if __name__ == "__main__":
    main()
