"""Rendered frames and probes (tokenizers/vqgan_synthetic.py) and the probe metrics (tokenizers/vqgan_probes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lwmkit.tokenizers.vqgan_probes import channel_errors, read_glyphs, ssim
from lwmkit.tokenizers.vqgan_synthetic import (
    KINDS,
    PURE_COLOURS,
    TEXT_PROBES,
    pattern_frames,
    pure_colour_frames,
    synthetic_frame,
    synthetic_frames,
    text_frame,
)


def test_synthetic_frames_are_a_pure_function_of_the_seed():
    a = synthetic_frames(12, seed=3, size=64)
    b = synthetic_frames(12, seed=3, size=64)
    c = synthetic_frames(12, seed=4, size=64)
    assert len(a) == 12 and all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(np.array_equal(x, y) for x, y in zip(a, c, strict=True)) <= 1  # a flat field may repeat
    for i, kind in enumerate(KINDS):  # frames cycle through the kinds
        assert np.array_equal(a[i], synthetic_frame(kind, 3, 0, 64)) and np.array_equal(
            a[i + 6], synthetic_frame(kind, 3, 1, 64)
        )


def test_each_kind_renders_what_it_says():
    solid = synthetic_frame("solid", 0, 0, 32)
    assert len(np.unique(solid.reshape(-1, 3), axis=0)) == 1
    checker = synthetic_frame("checker", 0, 1, 64)
    assert 2 >= len(np.unique(checker.reshape(-1, 3), axis=0)) >= 1
    text = synthetic_frame("text", 0, 0, 128)
    assert len(np.unique(text.reshape(-1, 3), axis=0)) > 8  # glyph edges are antialiased
    # Over many frames the saturated corners of the colour cube all appear (what the old model collapsed).
    colours = {tuple(synthetic_frame("solid", 0, i, 16)[0, 0]) for i in range(200)}
    assert {(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)} <= colours


def test_grey_share_adds_neutral_colours_and_zero_keeps_the_original_draws():
    plain = [synthetic_frame("solid", 0, i, 16)[0, 0] for i in range(300)]
    assert all(
        np.array_equal(p, synthetic_frame("solid", 0, i, 16, grey_share=0.0)[0, 0])
        for i, p in enumerate(plain)
    )
    greyed = [synthetic_frame("solid", 0, i, 16, grey_share=0.5)[0, 0] for i in range(300)]

    def mid_greys(colours):  # r = g = b away from the cube's black/white corners
        return sum(int(c[0] == c[1] == c[2] and 0 < c[0] < 255) for c in colours)

    assert mid_greys(plain) == 0 and 120 <= mid_greys(greyed) <= 180
    with pytest.raises(ValueError, match="grey_share in"):
        synthetic_frame("solid", 0, 0, grey_share=1.5)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown synthetic frame kind 'noise'"):
        synthetic_frame("noise", 0, 0)
    with pytest.raises(ValueError, match="n >= 0"):
        synthetic_frames(-1)
    with pytest.raises(ValueError, match="size >= 16"):
        synthetic_frame("solid", 0, 0, size=8)
    with pytest.raises(ValueError, match="do not fit"):
        text_frame(px=24, size=64)


def test_probe_frames_hold_exact_colours():
    names, frames = pure_colour_frames(32)
    assert names == list(PURE_COLOURS) and frames.shape == (9, 32, 32, 3)
    for name, frame in zip(names, frames, strict=True):
        assert (frame == np.uint8(PURE_COLOURS[name])).all()
    names, frames = pattern_frames(64)
    assert "colour_bars" in names and frames.shape == (len(names), 64, 64, 3)
    bars = frames[names.index("colour_bars")]
    assert tuple(bars[0, 0]) == (255, 255, 255) and tuple(bars[0, 63]) == (0, 0, 0)


def test_text_frame_mask_covers_the_ink():
    frame, mask = text_frame()
    assert frame.shape == (256, 256, 3) and mask.shape == (256, 256)
    ink = np.all(frame == np.uint8(TEXT_PROBES[0][1]), axis=-1)[:64]  # black ink on the first (white) band
    assert ink.any() and mask[:64][ink].all() and 0.05 < mask.mean() < 0.5


def test_channel_errors_and_ssim_known_values():
    a = np.zeros((1, 8, 8, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 10
    np.testing.assert_allclose(channel_errors(a, b), [[10.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="one shape"):
        channel_errors(a, b[:, :4])
    frame, mask = text_frame()
    assert ssim(frame, frame, mask) == pytest.approx(1.0)
    blurred = ((frame.astype(np.int32) + np.roll(frame, 2, axis=1)) // 2).astype(np.uint8)
    assert ssim(frame, blurred, mask) < 0.9


def test_glyph_reader_reads_the_original_and_not_a_blank():
    frame, _ = text_frame()
    right, total = read_glyphs(frame)
    assert total == sum(c.isalnum() for words, _, _ in TEXT_PROBES for c in words) and right == total
    blank = frame.copy()
    for i, (_, _, paper) in enumerate(TEXT_PROBES):
        blank[i * 64 : (i + 1) * 64] = paper
    assert read_glyphs(blank)[0] < total // 4
