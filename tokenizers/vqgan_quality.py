"""How good a VQGAN is: reconstruction PSNR, codebook usage, and a PNG grid to look at."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames [N, H, W, C] (peak 255) -> float64 [N]; identical frames give inf."""
    a, b = np.asarray(original), np.asarray(reconstruction)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"psnr needs two [N, H, W, C] arrays of one shape, got {a.shape} and {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def codebook_usage(codes: np.ndarray, num_embeddings: int, *, counts: bool = False) -> dict:
    """Share of the codebook used, and the perplexity of the code distribution.

    ``codes``: any int array of codes, or (``counts=True``) a histogram of length ``num_embeddings``.
    Returns ``{"used", "fraction", "perplexity"}``; perplexity = exp(entropy), at most ``num_embeddings``.
    """
    hist = (
        np.asarray(codes, np.int64)
        if counts
        else np.bincount(np.asarray(codes).ravel(), minlength=num_embeddings)
    )
    if hist.shape[0] != num_embeddings:
        raise ValueError(f"codes reach {hist.shape[0] - 1}, outside a {num_embeddings}-entry codebook")
    total = hist.sum()
    if total == 0:
        return {"used": 0, "fraction": 0.0, "perplexity": 0.0}
    p = hist[hist > 0] / total
    used = int((hist > 0).sum())
    return {
        "used": used,
        "fraction": used / num_embeddings,
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }


@dataclass(frozen=True)
class QualityReport:
    n_frames: int
    psnr_mean: float  # mean of per-frame PSNR, dB
    psnr_min: float
    codebook_used: int
    codebook_fraction: float
    perplexity: float
    tokenizer_id: str
    psnr_unquantised: float  # the same frames decoded before the codebook: the network's own limit, dB

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(tokenizer, frames: np.ndarray) -> tuple[QualityReport, np.ndarray]:
    """Encode and decode uint8 frames [N, 256, 256, 3] -> (report, reconstructions uint8 [N, 256, 256, 3]).

    The report also scores the frames decoded from the encoder's latents before quantisation: the gap to
    ``psnr_mean`` is what the codebook costs."""
    codes = tokenizer.encode(frames)
    recon = tokenizer.decode(codes)
    scores = psnr(frames, recon)
    usage = codebook_usage(codes, tokenizer.config.num_embeddings)
    report = QualityReport(len(frames), float(scores.mean()), float(scores.min()), usage["used"],
                           usage["fraction"], usage["perplexity"], tokenizer.id,
                           float(psnr(frames, tokenizer.reconstruct(frames, quantise=False)).mean()))  # fmt: skip
    return report, recon


def save_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | os.PathLike, max_rows: int = 8
) -> str:
    """A PNG with each original beside its reconstruction (one pair per row, up to ``max_rows``)."""
    from PIL import Image

    if originals.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {originals.shape} vs {reconstructions.shape}")
    n = min(len(originals), max_rows)
    if n == 0:
        raise ValueError("no frames to draw")
    h, w = originals.shape[1:3]
    gap = 4
    canvas = np.full((n * h + (n - 1) * gap, 2 * w + gap, 3), 255, np.uint8)
    for i in range(n):
        y = i * (h + gap)
        canvas[y : y + h, :w] = originals[i]
        canvas[y : y + h, w + gap :] = reconstructions[i]
    Image.fromarray(canvas).save(path, format="PNG")
    return str(path)
