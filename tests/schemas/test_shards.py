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
    shard_name,
)


@pytest.fixture
def write_set(shard_set_writer, make_packed):
    """``(root, n_shards=2, per_shard=3) -> Manifest``: a valid set of ``make_packed`` samples."""

    def write(root: str, n_shards: int = 2, per_shard: int = 3) -> Manifest:
        n = n_shards * per_shard
        per = TokenCounts(examples=2 * n, tokens=9 * n, loss_tokens=5 * n, vision_tokens=2 * n)
        return shard_set_writer(
            root, [make_packed(key=f"s-{i:06d}") for i in range(n)], per_shard=per_shard,
            stage="tiny", seq_len=12, tokenizer_id="t",
            vocab=VocabLayout(text_vocab_size=100, bos_id=1, eos_id=2, vision_start_ids=(5,), vision_end_ids=(6,)),
            n_sequences=n, padding_tokens=3 * n, packing_efficiency=0.75, per_source={"all": per},
            per_modality={"text": per},
        )  # fmt: skip

    return write


def test_same_samples_give_the_same_bytes(make_packed):
    samples = [encode_sample(*make_packed(key=f"k{i}")) for i in range(3)]
    assert hashlib.sha256(build_shard(samples)).digest() == hashlib.sha256(build_shard(samples)).digest()


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_write_and_read_back(tmp_path, make_packed, write_set, scheme):
    root = str(tmp_path / "set") if scheme == "file" else "memory://lwmkit-test/set"
    write_set(root)
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


def test_webdataset_reads_our_shards(tmp_path, write_set):
    import webdataset as wds

    write_set(str(tmp_path), n_shards=1)
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / shard_name(0)), shardshuffle=False)]
    assert keys == ["s-000000", "s-000001", "s-000002"]


def test_tampered_missing_and_short_shards_are_named(tmp_path, write_set):
    write_set(str(tmp_path))
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
