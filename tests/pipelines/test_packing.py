"""The packer: property tests (nothing lost or duplicated, capacity and segment caps kept,
efficiency reported right), algorithm comparison, cut points that never split a frame."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwmkit.pipelines.pack.formatting import Example
from lwmkit.pipelines.pack.packing import (
    ALGORITHMS,
    StreamingPacker,
    cut_points,
    pack_lengths,
    packing_efficiency,
    split_lengths,
)
from lwmkit.pipelines.pack.sequences import assemble, fit_example
from lwmkit.schemas import PackedMeta, validate_packed
from lwmkit.tokenizers.text import TextTokenizer
from lwmkit.tokenizers.vision_layout import encode_block, find_blocks, split_frames

CAP = 64
lengths_st = st.lists(st.integers(1, CAP), min_size=0, max_size=200)


@settings(max_examples=150, deadline=None)
@given(
    lengths=lengths_st,
    algorithm=st.sampled_from(ALGORITHMS),
    buffer_size=st.integers(1, 50),
    max_open=st.integers(1, 20),
    max_segments=st.one_of(st.none(), st.integers(1, 6)),
)
def test_nothing_lost_nothing_duplicated(lengths, algorithm, buffer_size, max_open, max_segments):
    bins = pack_lengths(
        lengths,
        CAP,
        algorithm=algorithm,
        buffer_size=buffer_size,
        max_open=max_open,
        max_segments=max_segments,
    )
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))  # every item exactly once
    for b in bins:
        assert b, "an empty sequence was emitted"
        assert sum(lengths[i] for i in b) <= CAP
        if max_segments is not None:
            assert len(b) <= max_segments
    eff = packing_efficiency(bins, lengths, CAP)
    expected = sum(lengths) / (len(bins) * CAP) if bins else 0.0
    assert eff == pytest.approx(expected)
    assert 0.0 <= eff <= 1.0


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, algorithm=st.sampled_from(ALGORITHMS))
def test_deterministic(lengths, algorithm):
    assert pack_lengths(lengths, CAP, algorithm=algorithm, buffer_size=7) == pack_lengths(
        lengths, CAP, algorithm=algorithm, buffer_size=7
    )


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, CAP), min_size=1, max_size=120))
def test_bfd_never_needs_more_sequences_than_next_fit(lengths):
    bfd = pack_lengths(lengths, CAP, algorithm="best_fit_decreasing", buffer_size=len(lengths))
    nf = pack_lengths(lengths, CAP, algorithm="next_fit")
    assert len(bfd) <= len(nf)
    assert len(bfd) >= -(-sum(lengths) // CAP)  # the lower bound


def test_best_fit_decreasing_beats_first_fit_on_a_realistic_mix():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.5, 1.3, 4000).astype(int), 1, 4096).tolist()
    eff = {
        a: packing_efficiency(pack_lengths(lengths, 4096, algorithm=a, buffer_size=1000), lengths, 4096)
        for a in ALGORITHMS
    }
    assert eff["best_fit_decreasing"] > eff["next_fit"] + 0.05
    assert eff["best_fit_decreasing"] >= eff["first_fit"]
    assert eff["best_fit_decreasing"] > 0.98


def test_rejects_items_that_do_not_fit():
    packer = StreamingPacker(8)
    with pytest.raises(ValueError, match="outside"):
        packer.add("x", 9)
    with pytest.raises(ValueError, match="unknown packing algorithm"):
        StreamingPacker(8, algorithm="worst_fit")


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.load()


def _video_example(tok, n_frames: int, text_tokens: int = 10) -> Example:
    layout = tok.vocab_layout()
    codes = np.random.default_rng(n_frames).integers(0, 8192, (n_frames, 256))
    ids, vm = encode_block(codes, layout)
    head = np.arange(3, 3 + text_tokens, dtype=np.int32)
    all_ids = np.concatenate([[tok.bos_id], head, ids]).astype(np.int32)
    vision = np.concatenate([[False], np.zeros(text_tokens, bool), vm])
    loss = np.concatenate([[False], np.zeros(text_tokens, bool), np.ones(ids.size, bool)])
    return Example("vid", "clips", "video", "dense", all_ids, loss, vision, n_frames=n_frames)


@pytest.mark.parametrize("seq_len", [300, 600, 1000])
def test_split_and_truncate_never_cut_inside_a_frame(tok, seq_len):
    layout = tok.vocab_layout()
    ex = _video_example(tok, 6)
    for policy in ("split", "truncate"):
        pieces, counts = fit_example(ex, seq_len, policy, layout)
        assert pieces and all(p.n_tokens <= seq_len for p in pieces)
        if policy == "split":
            assert counts["split_pieces"] == len(pieces)
            assert np.array_equal(np.concatenate([p.ids for p in pieces]), ex.ids)  # order kept, nothing lost
            assert not any(p.truncated for p in pieces)  # so the audit does not report them as truncated
        else:
            assert counts["truncated"] == 1 and len(pieces) == 1 and pieces[0].truncated
        for p in pieces:
            for start, end in find_blocks(p.vision):
                split_frames(p.ids[start:end] if p.ids[end - 1] == 8193 else _close(p.ids[start:end]), layout)
    pieces, counts = fit_example(ex, seq_len, "drop", layout)
    assert pieces == [] and counts["dropped_overlong"] == 1


def _close(body):
    """A piece cut after an end-of-frame marker: whole frames, the last marked 8192."""
    assert body.size % 257 == 0 and body[-1] == 8192
    fixed = body.copy()
    fixed[-1] = 8193
    return fixed


def test_cut_points_and_split_lengths():
    ids = np.array([5, 5, 1, 2, 8192, 3, 4, 8193, 6], dtype=np.int32)
    vm = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    allowed = cut_points(ids, vm, (8192, 8193)).tolist()
    assert allowed == [1, 2, 5, 8, 9]  # never between 2..4 or 5..7 (inside a frame)
    assert split_lengths(np.array(allowed), 9, 4) == [(0, 2), (2, 5), (5, 9)]
    with pytest.raises(ValueError, match="no allowed cut"):
        split_lengths(np.array(allowed), 9, 2)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 30), min_size=1, max_size=8),
    weighting=st.sampled_from(["per_example", "per_token"]),
)
def test_assemble_keeps_each_example_whole_and_in_order(sizes, weighting):
    seq_len = 256
    rng = np.random.default_rng(len(sizes))
    exs = []
    for k, n in enumerate(sizes):
        loss = rng.random(n) < 0.6
        loss[-1] = True
        exs.append(
            Example(
                f"e{k}",
                "s",
                "text",
                "dense",
                rng.integers(3, 999, n).astype(np.int32),
                loss,
                np.zeros(n, bool),
            )
        )
    arrays, meta = assemble(exs, seq_len, "k", pad_id=0, weighting=weighting)
    validate_packed(arrays, meta)
    assert isinstance(meta, PackedMeta)
    for sid, ex in enumerate(exs, start=1):
        seg = arrays["segment_ids"] == sid
        assert np.array_equal(arrays["input_ids"][seg], ex.ids)
        assert np.array_equal(arrays["target_ids"][seg][:-1], ex.ids[1:])
        w = arrays["loss_weights"][seg]
        assert np.array_equal(w[:-1] > 0, ex.loss[1:]) and w[-1] == 0
        if weighting == "per_example":
            assert w.sum() == pytest.approx(1.0, rel=1e-5)  # the example counts as one, as unpacked
        else:
            assert set(np.unique(w)) <= {0.0, 1.0}
    assert (arrays["segment_ids"] == 0).sum() == seq_len - sum(sizes)
