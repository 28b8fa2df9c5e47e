"""The packed-sequence contract: one webdataset sample = one training sequence of length L.

Arrays (all length L, saved as ``.npy`` without pickles):

=====================  =======  ===========================================================
``input_ids``          int32    token fed at each position (text id or vision id)
``target_ids``         int32    token to predict at each position (next token of the segment)
``loss_weights``       float32  weight of each position's loss; 0 = no loss
``segment_ids``        int32    1..n for the examples packed here; 0 = padding
``positions``          int32    restart at 0 in every segment (RoPE sees each example from 0)
``vision_mask``        bool     input is a vision id (embed with the vision table)
``target_vision_mask`` bool     target is a vision id (predict with the vision head)
=====================  =======  ===========================================================

Attention never crosses segments and the loss never spans two segments: the last position
of every segment has weight 0 (its "next token" belongs to no one). ``meta.json`` lists the
segments (example id, source, modality, token and loss counts) so an audit can recount.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.strict import check_format_version, from_dict, require, to_dict

PACKED_VERSION = 1
PACKED_ARRAYS: dict[str, np.dtype] = {
    "input_ids": np.dtype(np.int32),
    "target_ids": np.dtype(np.int32),
    "loss_weights": np.dtype(np.float32),
    "segment_ids": np.dtype(np.int32),
    "positions": np.dtype(np.int32),
    "vision_mask": np.dtype(np.bool_),
    "target_vision_mask": np.dtype(np.bool_),
}
META_KEY = "meta.json"
Modality = Literal["text", "image", "video"]


@dataclass(frozen=True)
class SegmentInfo:
    """One example inside a packed sequence."""

    segment_id: int
    example_id: str
    source: str
    modality: Modality
    n_tokens: int
    n_loss_tokens: int
    n_vision_tokens: int = 0
    n_frames: int = 0
    truncated: bool = False

    def __post_init__(self) -> None:
        require(self.segment_id >= 1, "segment_id", "must be >= 1 (0 is padding)")
        require(self.n_tokens >= 1, "n_tokens", "must be >= 1")
        require(0 <= self.n_loss_tokens <= self.n_tokens, "n_loss_tokens", "must lie in [0, n_tokens]")
        require(0 <= self.n_vision_tokens <= self.n_tokens, "n_vision_tokens", "must lie in [0, n_tokens]")


@dataclass(frozen=True)
class PackedMeta:
    """``meta.json`` of a packed sample."""

    key: str
    seq_len: int
    segments: tuple[SegmentInfo, ...]
    format_version: int = PACKED_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, PACKED_VERSION, "packed sequence")
        require(self.seq_len > 0, "seq_len", "must be positive")
        ids = [s.segment_id for s in self.segments]
        require(ids == list(range(1, len(ids) + 1)), "segments", "segment ids must be 1..n in order")
        require(sum(s.n_tokens for s in self.segments) <= self.seq_len, "segments", "tokens exceed seq_len")


def validate_packed(arrays: dict[str, np.ndarray], meta: PackedMeta, *, source: str = "") -> None:
    """Check one sample's arrays against the contract and against its own meta.json."""
    try:
        _validate(arrays, meta)
    except ContractError as err:
        raise err.located(source=source or meta.key) from None


def _validate(arrays: dict[str, np.ndarray], meta: PackedMeta) -> None:
    for name, dtype in PACKED_ARRAYS.items():
        if name not in arrays:
            raise ContractError("array is missing", field=name)
        a = arrays[name]
        require(a.dtype == dtype, name, f"has dtype {a.dtype}, expected {dtype}")
        require(a.shape == (meta.seq_len,), name, f"has shape {a.shape}, expected ({meta.seq_len},)")
    extra = sorted(set(arrays) - set(PACKED_ARRAYS))
    if extra:
        raise ContractError("unknown array", field=extra[0])
    seg, pos, w = arrays["segment_ids"], arrays["positions"], arrays["loss_weights"]
    require(bool(np.all(w >= 0)) and bool(np.all(np.isfinite(w))), "loss_weights", "must be finite and >= 0")
    pad = seg == 0
    require(not np.any(w[pad]), "loss_weights", "padding carries loss")
    require(not np.any(arrays["vision_mask"][pad]), "vision_mask", "padding is marked vision")
    starts = np.flatnonzero(np.diff(seg, prepend=-1) != 0)
    ends = np.append(starts[1:], meta.seq_len)
    for s, end in zip(starts.tolist(), ends.tolist(), strict=True):  # each run of one segment counts 0, 1, 2, ...
        if seg[s] == 0:
            continue
        if not np.array_equal(pos[s:end], np.arange(end - s)):
            raise ContractError(f"do not restart at 0 / count up in segment {seg[s]}", field="positions")
        if w[end - 1] != 0:
            raise ContractError(f"last token of segment {seg[s]} carries loss across the boundary", field="loss_weights")
    present = sorted(set(np.unique(seg[~pad]).tolist()))
    require(present == [s.segment_id for s in meta.segments], "segment_ids", "do not match meta.json segments")
    require(len(starts[seg[starts] != 0]) == len(present), "segment_ids", "a segment is split in two runs")
    for info in meta.segments:
        mask = seg == info.segment_id
        require(int(mask.sum()) == info.n_tokens, "segments", f"segment {info.segment_id} token count differs")
        n_loss = int(np.count_nonzero(w[mask]))
        require(n_loss == info.n_loss_tokens, "segments", f"segment {info.segment_id} loss-token count differs")


def encode_sample(arrays: dict[str, np.ndarray], meta: PackedMeta) -> dict[str, bytes | str]:
    """A webdataset sample dict (``__key__`` plus one file per array and meta.json)."""
    validate_packed(arrays, meta)
    sample: dict[str, bytes | str] = {"__key__": meta.key}
    for name in PACKED_ARRAYS:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        sample[f"{name}.npy"] = buf.getvalue()
    sample[META_KEY] = json.dumps(to_dict(meta), sort_keys=True).encode("utf-8")
    return sample


def decode_sample(
    sample: dict[str, bytes], *, source: str = "", seq_len: int | None = None
) -> tuple[dict[str, np.ndarray], PackedMeta]:
    """Arrays and meta from a raw webdataset sample (bytes per file); validates both.

    ``seq_len`` (the manifest's, when known) must equal meta.json's. Each ``.npy`` header is
    checked (dtype, shape ``(seq_len,)``, data length) before anything is allocated, so a
    header that claims 10^11 elements costs nothing but the error.
    """
    where = source or str(sample.get("__key__", ""))
    if META_KEY not in sample:
        raise ContractError("sample has no meta.json", source=where)
    try:
        meta_data = json.loads(sample[META_KEY])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ContractError(f"meta.json is not JSON ({err})", source=where) from None
    meta = from_dict(PackedMeta, meta_data, source=f"{where}/meta.json")
    if seq_len is not None and meta.seq_len != seq_len:
        raise ContractError(f"is {meta.seq_len}, the manifest says {seq_len}", field="seq_len", source=where)
    arrays = {}
    for name, dtype in PACKED_ARRAYS.items():
        raw = sample.get(f"{name}.npy")
        if raw is None:
            raise ContractError("array is missing", field=name, source=where)
        arrays[name] = load_array(raw, dtype, meta.seq_len, field=name, source=where)
    validate_packed(arrays, meta, source=where)
    return arrays, meta


def load_array(raw: bytes, dtype: np.dtype, length: int, *, field: str = "", source: str = "") -> np.ndarray:
    """A 1-D ``.npy`` of ``length`` items of ``dtype`` from ``raw``; the header is checked first
    and the data never allocated beyond ``len(raw)`` (no pickles, no header-sized allocations)."""
    from numpy.lib import format as npy

    f = io.BytesIO(raw)
    try:
        version = npy.read_magic(f)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, found = read_header(f)
    except (ValueError, SyntaxError, TypeError, EOFError) as err:
        raise ContractError(f"is not a plain .npy array ({err})", field=field, source=source) from None
    if found.hasobject:  # a pickle inside: never loaded
        raise ContractError("is not a plain .npy array (it holds Python objects)", field=field, source=source)
    if found != dtype:
        raise ContractError(f"has dtype {found}, expected {dtype}", field=field, source=source)
    if tuple(shape) != (length,):
        raise ContractError(f"has shape {tuple(shape)}, expected ({length},)", field=field, source=source)
    data = memoryview(raw)[f.tell() :]
    if len(data) != length * dtype.itemsize:
        message = f"holds {len(data)} data bytes, its header says {length * dtype.itemsize}"
        raise ContractError(message, field=field, source=source)
    return np.frombuffer(data, dtype=dtype).copy()
