"""The shard reader: batches as a pure function of (seed, stage, manifest, step)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lwmkit.schemas import (
    ContractError,
    Manifest,
    PackedMeta,
    SegmentInfo,
    ShardSet,
    TokenCounts,
    VocabLayout,
)
from lwmkit.trainer.data import BatchPlan, ShardReader, epoch_permutation, global_batch, local_pieces


def _row(i: int, seq_len: int) -> tuple[dict, PackedMeta]:
    """Row ``i``: one text segment filling all but the last 3 positions; ids encode ``i``."""
    n = seq_len - 3
    seg = np.array([1] * n + [0] * 3, dtype=np.int32)
    w = np.array([1.0] * (n - 1) + [0.0] * 4, dtype=np.float32)
    arrays = {
        "input_ids": (np.arange(seq_len, dtype=np.int32) + 100 * i),
        "target_ids": (np.arange(1, seq_len + 1, dtype=np.int32) + 100 * i),
        "loss_weights": w,
        "segment_ids": seg,
        "positions": np.array(list(range(n)) + [0] * 3, dtype=np.int32),
        "vision_mask": np.zeros(seq_len, bool),
        "target_vision_mask": np.zeros(seq_len, bool),
    }
    meta = PackedMeta(f"r{i:06d}", seq_len, (SegmentInfo(1, f"ex{i}", "web", "text", n, n - 1),))
    return arrays, meta


def write_rows(writer, root: str, n_rows: int, seq_len: int, per_shard: int) -> Manifest:
    """Rows ``0..n_rows-1`` (:func:`_row`) as a shard set, written by the ``shard_set_writer`` fixture."""
    tokens = n_rows * (seq_len - 3)
    counts = TokenCounts(examples=n_rows, tokens=tokens, loss_tokens=n_rows * (seq_len - 4))
    return writer(
        root, [_row(i, seq_len) for i in range(n_rows)], per_shard=per_shard,
        stage="t", seq_len=seq_len, tokenizer_id="tok",
        vocab=VocabLayout(text_vocab_size=8000, bos_id=1, eos_id=2, vision_start_ids=(5,), vision_end_ids=(6,)),
        n_sequences=n_rows, padding_tokens=3 * n_rows, packing_efficiency=tokens / (n_rows * seq_len),
        per_source={"web": counts}, per_modality={"text": counts},
    )  # fmt: skip


@pytest.fixture
def shard_set(tmp_path, shard_set_writer):
    write_rows(shard_set_writer, str(tmp_path), n_rows=10, seq_len=16, per_shard=3)
    return ShardSet.open(str(tmp_path))


def test_plan_is_pure_and_covers_each_epoch():
    plan = BatchPlan(seed=1, stage="s", manifest_sha="abc", n_rows=10, batch_size=4)
    again = BatchPlan(seed=1, stage="s", manifest_sha="abc", n_rows=10, batch_size=4)
    order = np.concatenate([plan.rows(s) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(order[:10].tolist()) == list(range(10)) and sorted(order[10:].tolist()) == list(range(10))
    assert not np.array_equal(order[:10], order[10:])  # a fresh permutation per epoch
    assert all(np.array_equal(plan.rows(s), again.rows(s)) for s in (0, 3, 77))
    for other in (BatchPlan(2, "s", "abc", 10, 4), BatchPlan(1, "t", "abc", 10, 4), BatchPlan(1, "s", "abd", 10, 4)):
        assert not np.array_equal(np.concatenate([other.rows(s) for s in range(3)]), order[:12])
    assert np.array_equal(epoch_permutation(1, "s", "abc", 0, 10), order[:10])


def test_reader_verifies_slices_and_applies_layout(shard_set):
    plan = BatchPlan(0, "t", shard_set.manifest.sha256, shard_set.manifest.n_sequences, 4)
    layout = np.arange(16)[::-1].copy()
    with ShardReader(shard_set, plan, layout=layout, prefetch=2) as reader:
        full = reader.get(3, [((0, 4), (0, 16))])[((0, 4), (0, 16))]
        rows = plan.rows(3)
        assert np.array_equal(full["input_ids"][:, 0], rows * 100 + 15)  # reversed layout
        assert np.array_equal(full["input_ids"][:, -1], rows * 100)
        for name in ("loss_weights", "segment_ids", "positions"):  # every field permuted alike
            _, ref = full[name], _row(int(rows[0]), 16)[0][name][layout]
            assert np.array_equal(full[name][0], ref)
        # one host holding rows 2..4 and the second half of the sequence sees exactly that slice
        part = reader.get(3, [((2, 4), (8, 16))])[((2, 4), (8, 16))]
        assert np.array_equal(part["input_ids"], full["input_ids"][2:4, 8:16])
        assert reader.store.shard_reads <= len(shard_set.manifest.shards)  # cached, read once


def test_prefetch_serves_the_same_batches(shard_set):
    plan = BatchPlan(0, "t", shard_set.manifest.sha256, 10, 3)
    piece = [((0, 3), (0, 16))]
    with ShardReader(shard_set, plan, prefetch=0) as plain, ShardReader(shard_set, plan, prefetch=3) as ahead:
        for step in range(6):
            a, b = plain.get(step, piece)[piece[0]], ahead.get(step, piece)[piece[0]]
            assert all(np.array_equal(a[k], b[k]) for k in a)


def test_corrupt_shard_is_refused(tmp_path, shard_set_writer):
    write_rows(shard_set_writer, str(tmp_path), n_rows=4, seq_len=16, per_shard=2)
    path = tmp_path / "shard-00001.tar"
    raw = bytearray(path.read_bytes())
    raw[600] ^= 0xFF
    path.write_bytes(bytes(raw))
    shards = ShardSet.open(str(tmp_path))
    plan = BatchPlan(0, "t", shards.manifest.sha256, 4, 4)
    with ShardReader(shards, plan, prefetch=0) as reader, pytest.raises(ContractError, match="shard-00001.tar.*sha256"):
        reader.get(0, [((0, 4), (0, 16))])


def test_bad_layout_and_empty_plan_are_refused(shard_set):
    plan = BatchPlan(0, "t", "x", 10, 2)
    with pytest.raises(ValueError, match="permutation"):
        ShardReader(shard_set, plan, layout=np.zeros(16, int))
    with pytest.raises(ContractError, match="no sequences"):
        BatchPlan(0, "t", "x", 0, 2)


def test_reader_reads_buckets(tmp_path, shard_set_writer):
    """fsspec URLs work the same as local paths (memory:// stands in for a bucket here;
    the s3:// path is exercised against moto's server in the training tests)."""
    write_rows(shard_set_writer, "memory://lwm-bucket/set", n_rows=5, seq_len=16, per_shard=2)
    shards = ShardSet.open("memory://lwm-bucket/set/manifest.json")
    plan = BatchPlan(0, "t", shards.manifest.sha256, 5, 5)
    with ShardReader(shards, plan, prefetch=1) as reader:
        got = reader.get(0, [((0, 5), (0, 16))])[((0, 5), (0, 16))]
    assert sorted((got["input_ids"][:, 0] // 100).tolist()) == list(range(5))
    assert json.loads(shards.manifest.to_json())["n_sequences"] == 5


def test_global_batch_is_identical_across_shardings(shard_set):
    """The same global batch whatever the sharding: what hosts/devices see never changes it."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    plan = BatchPlan(0, "t", shard_set.manifest.sha256, 10, 4)
    devices = np.array(jax.devices()[:1]).reshape(1, 1)
    mesh = Mesh(devices, ("data", "seq"))
    with ShardReader(shard_set, plan) as reader:
        one = global_batch(reader, 5, NamedSharding(mesh, P("data", "seq")))
        pieces = local_pieces(NamedSharding(mesh, P("data", "seq")), (4, 16))
        assert list(pieces.values()) == [((0, 4), (0, 16))]
        direct = reader.load(5, [((0, 4), (0, 16))])[((0, 4), (0, 16))]
    assert all(np.array_equal(np.asarray(one[k]), direct[k]) for k in direct)
