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

# Bars from the training run recorded in benchmarks/RESULTS.md (shipped default c6afbaf0..., held-out
# bikes.mp4, 32 frames): measured mean PSNR 23.0 dB (worst frame 20.0) and 951/1024 codes used (92.9%).
# The bars sit a little below, so a different CPU's float rounding cannot fail them.
PSNR_BAR_DB = 22.0
USAGE_BAR = 0.80


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
