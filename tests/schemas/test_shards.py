from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lwmkit.runtime.files import write_atomic
from lwmkit.schemas import (
    ContractError,
    Manifest,
    ShardSet,
    TokenCounts,
    VocabLayout,
    build_shard,
    encode_sample,
    shard_entry,
    shard_name,
)


def write_set(root: str, make_packed, n_shards: int = 2, per_shard: int = 3) -> Manifest:
    entries, n = [], 0
    for s in range(n_shards):
        samples = [encode_sample(*make_packed(key=f"s-{s * per_shard + i:06d}")) for i in range(per_shard)]
        data = build_shard(samples)
        write_atomic(f"{root}/{shard_name(s)}", data)
        entries.append(shard_entry(shard_name(s), data, per_shard))
        n += per_shard
    per = TokenCounts(examples=2 * n, tokens=9 * n, loss_tokens=5 * n, vision_tokens=2 * n)
    manifest = Manifest(
        stage="tiny", seq_len=12, seed=0, tokenizer_id="t", vqgan_id=None,
        vocab=VocabLayout(text_vocab_size=100, bos_id=1, eos_id=2, vision_start_ids=(5,), vision_end_ids=(6,)),
        mixture={}, loss_weighting="per_example", vision_loss_weight=0.5, text_loss_weight=0.5,
        n_sequences=n, padding_tokens=3 * n, packing_efficiency=0.75,
        per_source={"all": per}, per_modality={"text": per}, shards=tuple(entries),
    )  # fmt: skip
    write_atomic(f"{root}/manifest.json", manifest.to_json().encode())
    return manifest


def test_same_samples_give_the_same_bytes(make_packed):
    samples = [encode_sample(*make_packed(key=f"k{i}")) for i in range(3)]
    assert hashlib.sha256(build_shard(samples)).digest() == hashlib.sha256(build_shard(samples)).digest()


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_write_and_read_back(tmp_path, make_packed, scheme):
    root = str(tmp_path / "set") if scheme == "file" else "memory://lwmkit-test/set"
    write_set(root, make_packed)
    shards = ShardSet.open(root)
    got = list(shards)
    assert len(got) == 6
    arrays, meta = got[0]
    want, want_meta = make_packed(key="s-000000")
    assert meta == want_meta
    for k in want:
        np.testing.assert_array_equal(arrays[k], want[k])
    assert [m.key for _, m in got] == [f"s-{i:06d}" for i in range(6)]
    assert ShardSet.open(f"{root}/manifest.json").manifest == shards.manifest


def test_webdataset_reads_our_shards(tmp_path, make_packed):
    import webdataset as wds

    write_set(str(tmp_path), make_packed, n_shards=1)
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / shard_name(0)), shardshuffle=False)]
    assert keys == ["s-000000", "s-000001", "s-000002"]


def test_tampered_missing_and_short_shards_are_named(tmp_path, make_packed):
    write_set(str(tmp_path), make_packed)
    path = tmp_path / shard_name(1)
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ContractError, match=r"shard-00001.tar: field 'sha256'"):
        list(ShardSet.open(str(tmp_path)))
    path.unlink()
    with pytest.raises(ContractError, match=r"shard-00001.tar: shard listed in the manifest is missing"):
        list(ShardSet.open(str(tmp_path)))
    (tmp_path / shard_name(0)).write_bytes(b"x" * 10)
    with pytest.raises(ContractError, match=r"shard-00000.tar: field 'size_bytes'"):
        list(ShardSet.open(str(tmp_path)))


def test_atomic_write_leaves_no_temporaries(tmp_path):
    write_atomic(str(tmp_path / "a" / "x.tar"), b"hello")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.tar"]


def test_bad_keys_are_refused():
    with pytest.raises(ContractError, match="must be non-empty without"):
        build_shard([{"__key__": "a.b", "x.npy": b""}])
