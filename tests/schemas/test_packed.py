from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lwmkit.schemas import ContractError, decode_sample, encode_sample


def test_round_trip(make_packed):
    arrays, meta = make_packed()
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
def test_bad_arrays_are_refused(make_packed, mutate, message):
    arrays, meta = make_packed()
    mutate(arrays)
    with pytest.raises(ContractError, match=message):
        encode_sample(arrays, meta)


def test_bad_meta_is_refused(make_packed):
    arrays, meta = make_packed()
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


def test_pickled_arrays_are_refused(make_packed):
    arrays, meta = make_packed()
    sample = encode_sample(arrays, meta)
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ContractError, match="not a plain .npy array"):
        decode_sample(sample | {"positions.npy": buf.getvalue()})
