"""Quality tools (tokenizers/vqgan_quality.py) and the shipped default's measured quality."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lwmkit.tokenizers import vqgan
from lwmkit.tokenizers.vqgan_frames import center_crop, read_video_frames
from lwmkit.tokenizers.vqgan_quality import codebook_usage, evaluate, psnr, save_grid

# Bars from the run recorded in benchmarks/RESULTS.md ("A better default VQGAN", shipped default a688f8a2...,
# held-out bikes.mp4, 32 frames): mean PSNR 24.73 dB (worst frame 20.7), 946/1024 codes used (92.4%);
# pure colours: all 9 within 10 of the original per channel (worst: grey, 8.5; white 3.9; the rest <= 0.7);
# patterns other than the 16 px checkerboard >= 19.1 dB; 24 px text SSIM 0.172 on the glyph boxes.
# Earlier defaults: 02663e3a... 24.6 dB, worst colour 30.2 (7 of 9), >= 18.4 dB, SSIM 0.178;
# c6afbaf0... 23.0 dB, 170.1 (0 of 9), >= 8.7 dB, 0.162.
# The bars sit a little below, so a different CPU's float rounding (a flipped near-tie code) cannot fail them.
PSNR_BAR_DB = 24.3
USAGE_BAR = 0.80
COLOUR_MAE_BAR = 12.0  # worst channel of the nine pure colours
COLOURS_WITHIN_10 = 8  # pure colours whose every channel is within 10 (all 9 measured: issue 22's goal)
PATTERN_PSNR_BAR_DB = 18.0  # bars, ramps, hue sweep (the 16 px red/blue checkerboard is beyond this model)
TEXT_SSIM_BAR = 0.165


def test_psnr_known_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] += 1
    scores = psnr(a, b)
    assert np.isinf(scores[0]) and scores[1] == pytest.approx(20 * np.log10(255), abs=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:1])


def test_codebook_usage_fraction_and_perplexity():
    u = codebook_usage(np.array([0, 1, 2, 3, 0, 1, 2, 3]), 8)
    assert u == {"used": 4, "fraction": 0.5, "perplexity": pytest.approx(4.0)}
    assert codebook_usage(np.array([3, 0, 0, 0]), 4, counts=True)["perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside a 4-entry codebook"):
        codebook_usage(np.array([9]), 4)


def test_save_grid_puts_originals_beside_reconstructions(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    b = 255 - a
    save_grid(a, b, tmp_path / "g.png")
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (3 * 8 + 2 * 4, 2 * 10 + 4, 3)
    np.testing.assert_array_equal(img[:8, :10], a[0])
    np.testing.assert_array_equal(img[12:20, 14:], b[1])


@pytest.fixture(scope="module")
def heldout(sample_dir):
    """32 frames of bikes.mp4, the clip held out of the shipped default's training."""
    return center_crop(read_video_frames(sample_dir / "videos" / "bikes.mp4", max_frames=32))


@pytest.mark.slow
def test_shipped_default_beats_the_stated_bar_on_frames_it_never_saw(heldout):
    tok = vqgan.load()
    report, recon = evaluate(tok, heldout)
    assert "bikes.mp4" in vqgan_meta()["holdout"]
    assert report.psnr_mean >= PSNR_BAR_DB, report
    assert report.codebook_fraction >= USAGE_BAR, report
    assert recon.shape == heldout.shape
    # skipping the quantiser: what the network alone keeps; the coded frames can only lose to it here
    assert np.array_equal(tok.reconstruct(heldout[:8]), recon[:8])
    unquantised = psnr(heldout[:8], tok.reconstruct(heldout[:8], quantise=False))
    assert unquantised.mean() > psnr(heldout[:8], recon[:8]).mean()
    assert report.psnr_unquantised > report.psnr_mean  # the report carries the same measure for all frames
    with pytest.raises(ValueError, match="uint8 frames"):
        tok.reconstruct(heldout[:1].astype(np.float32), quantise=False)


@pytest.mark.slow
def test_shipped_default_keeps_pure_colours_patterns_and_text():
    """The probes of benchmarks/bench_vqgan_quality.py (issue 22's colour and text goals) against bars."""
    from lwmkit.tokenizers.vqgan_probes import probe

    report, images = probe(vqgan.load())
    assert report["colours_worst_channel_mae"] <= COLOUR_MAE_BAR, report["colours"]
    within = [n for n, c in report["colours"].items() if max(c["channel_mae"]) <= 10]
    assert len(within) >= COLOURS_WITHIN_10, report["colours"]
    assert {"red", "blue", "white", "black"} <= set(within), report["colours"]
    patterns = {n: p["psnr"] for n, p in report["patterns"].items() if not n.startswith("checker")}
    assert min(patterns.values()) >= PATTERN_PSNR_BAR_DB, report["patterns"]
    assert report["text_24px"]["ssim_text_region"] >= TEXT_SSIM_BAR, report["text_24px"]
    assert images["text"].shape == (2, 1, 256, 256, 3)
    assert {px: total for px, (_, total) in report["text_glyphs_read_by_px"].items()} == {32: 27, 40: 27, 48: 27}


def vqgan_meta() -> dict:
    from lwmkit.tokenizers.vqgan_checkpoint import read_checkpoint

    return read_checkpoint(vqgan.default_checkpoint_path()).meta


@pytest.mark.slow
def test_cli_eval_prints_json_and_writes_the_grid(tmp_path, sample_dir):
    clip = sample_dir / "videos" / "carphone_pristine.mp4"
    proc = subprocess.run([sys.executable, "-m", "lwmkit.cli", "vqgan", "eval", str(clip), "--max-frames", "4",
                           "--grid", str(tmp_path / "grid.png")], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n_frames"] == 4 and report["psnr_mean"] > 10 and report["tokenizer_id"] == vqgan.load().id
    assert Image.open(tmp_path / "grid.png").size == (2 * 256 + 4, 4 * 256 + 3 * 4)
