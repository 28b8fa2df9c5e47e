from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lwmkit.schemas import ContractError, PackedMeta, SegmentInfo, decode_sample, encode_sample


def make_sample(seq_len: int = 12):
    """Two segments (5 and 4 tokens) and 3 padding tokens."""
    seg = np.array([1] * 5 + [2] * 4 + [0] * 3, dtype=np.int32)
    pos = np.array(list(range(5)) + list(range(4)) + [0] * 3, dtype=np.int32)
    w = np.array([0, 0.5, 0.5, 0, 0] + [1 / 3] * 3 + [0] + [0] * 3, dtype=np.float32)
    vm = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    arrays = {
        "input_ids": np.arange(seq_len, dtype=np.int32),
        "target_ids": np.arange(1, seq_len + 1, dtype=np.int32),
        "loss_weights": w,
        "segment_ids": seg,
        "positions": pos,
        "vision_mask": vm,
        "target_vision_mask": np.roll(vm, -1),
    }
    meta = PackedMeta(
        key="s-000000",
        seq_len=seq_len,
        segments=(
            SegmentInfo(1, "ex-a", "web", "text", n_tokens=5, n_loss_tokens=2),
            SegmentInfo(2, "ex-b", "clips", "image", n_tokens=4, n_loss_tokens=3, n_vision_tokens=2, n_frames=1),
        ),
    )
    return arrays, meta


def test_round_trip():
    arrays, meta = make_sample()
    sample = encode_sample(arrays, meta)
    assert set(sample) == {"__key__", "meta.json"} | {f"{k}.npy" for k in arrays}
    got, got_meta = decode_sample({k: v for k, v in sample.items()})
    assert got_meta == meta
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
        assert got[k].dtype == arrays[k].dtype


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: a.pop("positions"), "field 'positions': array is missing"),
        (lambda a: a.update(positions=a["positions"].astype(np.int64)), "field 'positions': has dtype int64"),
        (lambda a: a.update(extra=np.zeros(12, np.int32)), "field 'extra': unknown array"),
        (lambda a: a["positions"].__setitem__(6, 9), "field 'positions': do not restart"),
        (lambda a: a["loss_weights"].__setitem__(4, 1.0), "field 'loss_weights': last token of segment 1"),
        (lambda a: a["loss_weights"].__setitem__(10, 1.0), "field 'loss_weights': padding carries loss"),
        (lambda a: a["segment_ids"].__setitem__(slice(5, 9), 3), "field 'segment_ids': do not match meta.json"),
        (lambda a: a.update(input_ids=np.zeros(11, np.int32)), r"field 'input_ids': has shape \(11,\)"),
    ],
)
def test_bad_arrays_are_refused(mutate, message):
    arrays, meta = make_sample()
    mutate(arrays)
    with pytest.raises(ContractError, match=message):
        encode_sample(arrays, meta)


def test_bad_meta_is_refused():
    arrays, meta = make_sample()
    sample = encode_sample(arrays, meta)
    data = json.loads(sample["meta.json"])
    data["format_version"] = 7
    with pytest.raises(ContractError, match="packed sequence format version 7"):
        decode_sample(sample | {"meta.json": json.dumps(data).encode()})
    data = json.loads(sample["meta.json"])
    data["segments"][0]["n_loss_tokens"] = 4
    with pytest.raises(ContractError, match="segment 1 loss-token count differs"):
        decode_sample(sample | {"meta.json": json.dumps(data).encode()})
    data = json.loads(sample["meta.json"])
    data["segments"][0]["modality"] = "audio"
    with pytest.raises(ContractError, match=r"segments\[0\].modality"):
        decode_sample(sample | {"meta.json": json.dumps(data).encode()})
    with pytest.raises(ContractError, match="no meta.json"):
        decode_sample({k: v for k, v in sample.items() if k != "meta.json"})


def test_pickled_arrays_are_refused():
    arrays, meta = make_sample()
    sample = encode_sample(arrays, meta)
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ContractError, match="not a plain .npy array"):
        decode_sample(sample | {"positions.npy": buf.getvalue()})
