"""LWM's vision token layout: n frames of 256 codes <-> one block of the token stream.

One block is ``<vision>`` (text ids), then per frame the 256 codes followed by end-of-frame
(8192) -- end-of-vision (8193) after the last frame -- then ``</vision>`` (text ids). The
vision mask is true on the codes and the two end markers only. An image costs
``len(<vision>) + 257 + len(</vision>)`` tokens (263 with LLaMA-2's tokenizer).
"""

from __future__ import annotations

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.vocab import VocabLayout


def block_length(n_frames: int, layout: VocabLayout) -> int:
    """Tokens one block of ``n_frames`` frames takes in the stream."""
    return len(layout.vision_start_ids) + len(layout.vision_end_ids) + n_frames * (layout.codes_per_frame + 1)


def encode_block(codes: np.ndarray, layout: VocabLayout) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and vision mask of one vision block.

    Args:
        codes: int array ``[n_frames, codes_per_frame]`` (or flat ``[n_frames * codes_per_frame]``)
            with values in ``[0, n_codes)``.
    Returns:
        ``(ids int32 [block_length], vision_mask bool [block_length])``.
    """
    codes = np.asarray(codes)
    per = layout.codes_per_frame
    if codes.ndim == 1:
        if codes.size % per:
            raise ContractError(f"{codes.size} codes is not a multiple of {per} per frame", field="codes")
        codes = codes.reshape(-1, per)
    if codes.ndim != 2 or codes.shape[1] != per or codes.shape[0] < 1:
        raise ContractError(f"must have shape [n_frames>=1, {per}], got {codes.shape}", field="codes")
    if codes.min() < 0 or codes.max() >= layout.n_codes:
        raise ContractError(f"codes must lie in [0, {layout.n_codes})", field="codes")
    n = codes.shape[0]
    ends = np.full((n, 1), layout.end_of_frame_id, dtype=np.int32)
    ends[-1, 0] = layout.end_of_vision_id
    frames = np.concatenate([codes.astype(np.int32), ends], axis=1).reshape(-1)
    start = np.asarray(layout.vision_start_ids, dtype=np.int32)
    end = np.asarray(layout.vision_end_ids, dtype=np.int32)
    ids = np.concatenate([start, frames, end])
    mask = np.zeros(ids.shape, dtype=bool)
    mask[len(start) : len(start) + frames.size] = True
    return ids, mask


def decode_block(ids: np.ndarray, mask: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """Codes ``[n_frames, codes_per_frame]`` (int32) from one block made by :func:`encode_block`."""
    ids, mask = np.asarray(ids), np.asarray(mask, dtype=bool)
    if ids.shape != mask.shape or ids.ndim != 1:
        raise ContractError("ids and vision mask must be 1-D and the same length", field="vision_mask")
    start, end = list(layout.vision_start_ids), list(layout.vision_end_ids)
    if ids[: len(start)].tolist() != start or mask[: len(start)].any():
        raise ContractError("block does not open with <vision>", field="ids")
    if ids[len(ids) - len(end) :].tolist() != end or mask[len(ids) - len(end) :].any():
        raise ContractError("block does not close with </vision>", field="ids")
    body, body_mask = ids[len(start) : len(ids) - len(end)], mask[len(start) : len(ids) - len(end)]
    if not body_mask.all():
        raise ContractError("vision mask is false inside the block", field="vision_mask")
    return split_frames(body, layout)


def split_frames(body: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """Codes ``[n_frames, per]`` from the masked body of a block (codes + end markers)."""
    step = layout.codes_per_frame + 1
    if body.size == 0 or body.size % step:
        raise ContractError(f"block body of {body.size} tokens is not whole frames of {step}", field="ids")
    frames = body.reshape(-1, step)
    markers = frames[:, -1]
    expected = np.full(len(frames), layout.end_of_frame_id)
    expected[-1] = layout.end_of_vision_id
    if not np.array_equal(markers, expected):
        raise ContractError("end-of-frame / end-of-vision markers are misplaced", field="ids")
    codes = frames[:, :-1]
    if codes.min() < 0 or codes.max() >= layout.n_codes:
        raise ContractError("a frame holds an id outside the codebook", field="ids")
    return codes.astype(np.int32)


def find_blocks(vision_mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` index ranges of the masked runs (block bodies) in a stream."""
    m = np.asarray(vision_mask, dtype=np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def sample_frames(n_frames: int, budget: int) -> np.ndarray:
    """Frame indices to keep when a clip has more frames than the budget (LWM: linspace)."""
    if n_frames <= budget:
        return np.arange(n_frames)
    return np.linspace(0, n_frames - 1, budget).round().astype(np.int64)
