"""Packed sequences from packed bins: arrays of exactly seq_len, segment ids, positions, weights.

Also the over-long policy (``truncate`` / ``drop`` / ``split``), which decides what of an
example longer than seq_len reaches the packer -- cutting only where :func:`cut_points`
allows, so a frame's codes and its marker are never separated -- and counts what it did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from lwmkit.pipelines.pack.formatting import Example
from lwmkit.pipelines.pack.packing import cut_points, split_lengths
from lwmkit.schemas.packed import PACKED_ARRAYS, PackedMeta, SegmentInfo
from lwmkit.schemas.vocab import VocabLayout


def fit_example(
    example: Example, seq_len: int, policy: str, layout: VocabLayout
) -> tuple[list[Example], Counter]:
    """The pieces of ``example`` that go to the packer (each <= seq_len, with loss), and counts.

    Counts (all keys optional): ``truncated``, ``dropped_overlong``, ``split_examples``,
    ``split_pieces``, ``dropped_no_loss`` (pieces nothing could be learnt from).
    """
    counts: Counter = Counter()
    pieces = [example]
    if example.n_tokens > seq_len:
        allowed = cut_points(example.ids, example.vision, (layout.end_of_frame_id, layout.end_of_vision_id))
        if policy == "drop":
            counts["dropped_overlong"] += 1
            pieces = []
        elif policy == "truncate":
            ok = allowed[allowed <= seq_len]
            end = int(ok[-1]) if ok.size else 0
            pieces = [example.piece(0, end, "")] if end > 0 else []
            counts["truncated" if end > 0 else "dropped_overlong"] += 1
        else:
            spans = split_lengths(allowed, example.n_tokens, seq_len)
            pieces = [example.piece(a, b, f"#{k}", truncated=False) for k, (a, b) in enumerate(spans)]
            counts["split_examples"] += 1
            counts["split_pieces"] += len(pieces)
    kept = [p for p in pieces if p.n_loss_tokens > 0]
    counts["dropped_no_loss"] += len(pieces) - len(kept)
    return kept, +counts


def segment_weights(loss_targets: np.ndarray, weighting: str) -> np.ndarray:
    """Loss weights of one segment's positions: 1/(its loss-token count) each ("per_example",
    LWM's masked packing: every example counts as it would unpacked) or 1.0 ("per_token")."""
    n = int(np.count_nonzero(loss_targets))
    value = 1.0 / n if (weighting == "per_example" and n) else 1.0
    return np.where(loss_targets, np.float32(value), np.float32(0.0)).astype(np.float32)


def assemble(
    examples: Sequence[Example], seq_len: int, key: str, *, pad_id: int, weighting: str
) -> tuple[dict[str, np.ndarray], PackedMeta]:
    """One packed sequence: examples back to back as segments 1..n, then padding (segment 0).

    Targets are the next token *within* the segment; the last position of each segment has
    no target (target = pad, weight 0), so the loss never crosses examples.
    """
    arrays = {
        name: np.zeros(seq_len, dtype=dtype) if name != "input_ids" else np.full(seq_len, pad_id, dtype=dtype)
        for name, dtype in PACKED_ARRAYS.items()
    }
    arrays["target_ids"][:] = pad_id
    segments, at = [], 0
    for sid, ex in enumerate(examples, start=1):
        n = ex.n_tokens
        if at + n > seq_len:
            raise ValueError(f"segments overflow seq_len {seq_len} at {ex.example_id}")
        sl = slice(at, at + n)
        arrays["input_ids"][sl] = ex.ids
        arrays["target_ids"][at : at + n - 1] = ex.ids[1:]
        arrays["segment_ids"][sl] = sid
        arrays["positions"][sl] = np.arange(n, dtype=np.int32)
        arrays["vision_mask"][sl] = ex.vision
        arrays["target_vision_mask"][at : at + n - 1] = ex.vision[1:]
        targets = np.zeros(n, dtype=bool)
        targets[:-1] = ex.loss[1:]
        arrays["loss_weights"][sl] = segment_weights(targets, weighting)
        segments.append(
            SegmentInfo(
                segment_id=sid,
                example_id=ex.example_id,
                source=ex.source,
                modality=ex.modality,
                n_tokens=n,
                n_loss_tokens=int(np.count_nonzero(targets)),
                n_vision_tokens=int(np.count_nonzero(ex.vision)),
                n_frames=ex.n_frames,
                truncated=ex.truncated,
            )
        )
        at += n
    return arrays, PackedMeta(key=key, seq_len=seq_len, segments=tuple(segments))
