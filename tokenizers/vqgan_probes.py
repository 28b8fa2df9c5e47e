"""What a VQGAN does to colours and text: per-channel errors on pure colours and test patterns, and a
text-legibility proxy (SSIM on the glyph boxes and a nearest-glyph reader) on 24 px text.

Used by ``benchmarks/bench_vqgan_quality.py`` and the shipped default's tests. The probes themselves
(pure colours, bars, ramps, text) come from :mod:`lwmkit.tokenizers.vqgan_synthetic`.
"""

from __future__ import annotations

import string

import numpy as np

from lwmkit.tokenizers.vqgan_quality import evaluate, psnr
from lwmkit.tokenizers.vqgan_synthetic import (
    TEXT_PROBES,
    load_font,
    pattern_frames,
    pure_colour_frames,
    text_frame,
)

READ_ALPHABET = string.ascii_letters + string.digits  # what the nearest-glyph reader chooses among


def channel_errors(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Mean absolute error per colour channel of uint8 frames [N, H, W, 3] -> float64 [N, 3] (0..255)."""
    a, b = np.asarray(original, np.float64), np.asarray(reconstruction, np.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"channel_errors needs two [N, H, W, C] arrays of one shape, got {a.shape} and {b.shape}"
        )
    return np.abs(a - b).mean(axis=(1, 2))


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004, uniform ``window`` x ``window``) of two uint8 [H, W, 3] images on luma.

    ``mask`` (bool [H, W]) restricts the mean to those pixels (e.g. the text's glyph boxes).
    """
    from scipy.ndimage import uniform_filter

    def luma(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ np.array([0.299, 0.587, 0.114])

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = uniform_filter(x, window), uniform_filter(y, window)
    vx = uniform_filter(x * x, window) - mx * mx
    vy = uniform_filter(y * y, window) - my * my
    cxy = uniform_filter(x * y, window) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[mask].mean() if mask is not None else s.mean())


def read_glyphs(image: np.ndarray, lines=TEXT_PROBES, px: int = 24, size: int = 256) -> tuple[int, int]:
    """A nearest-glyph reader for frames drawn by :func:`text_frame`: each character cell of ``image`` is
    compared (RGB squared error) with every glyph of :data:`READ_ALPHABET` drawn at the same place in the
    same colours after the true left context; returns (cells read right, cells) over the letters and digits of ``lines``.

    A proxy for legibility: it knows where each character is and in what font, so it only asks whether
    the reconstruction kept enough of each glyph's shape to tell it from the 61 others.
    """
    from PIL import Image, ImageDraw

    font = load_font("DejaVuSans.ttf", px)
    band = size // len(lines)
    right = total = 0
    for i, (words, ink, paper) in enumerate(lines):
        x0, y = 8, i * band + (band - px) // 2
        for k, ch in enumerate(words):
            if ch not in READ_ALPHABET:
                continue
            x = x0 + font.getlength(words[:k])
            width = int(np.ceil(font.getlength(ch))) + 2
            left, top = int(np.floor(x)) - 1, i * band
            if left < 0 or left + width > image.shape[1]:
                raise ValueError(f"text line {words!r} does not fit in {image.shape[1]} px at {px} px")
            cell = np.asarray(image[top : top + band, max(left, 0) : left + width], np.float64)
            errors = []
            for cand in READ_ALPHABET:  # drawn after the true left context, so kerned overhangs match
                canvas = Image.new("RGB", (left + width, band), paper)
                ImageDraw.Draw(canvas).text((x0, y - top), words[:k] + cand, fill=ink, font=font)
                ref = np.asarray(canvas, np.float64)[:, left:]
                errors.append(((ref - cell) ** 2).mean())
            right += READ_ALPHABET[int(np.argmin(errors))] == ch
            total += 1
    return right, total


# TEXT_PROBES' colours with words short enough for 48 px text in 256 px
SHORT_TEXT_PROBES = tuple(
    (words, ink, paper)
    for words, (_, ink, paper) in zip(("TAXI 42", "quick fox", "jumps 7", "Gate B12"), TEXT_PROBES, strict=True)
)


def probe(tokenizer, natural: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Run every probe through ``tokenizer`` (encode + decode).

    ``natural``: optional uint8 [N, 256, 256, 3] held-out frames. Returns (report dict, images) where
    images maps "colours", "patterns", "text" (and "natural") to [2, N, H, W, 3] original/reconstruction stacks.
    """
    size = tokenizer.config.resolution

    report: dict = {"tokenizer_id": tokenizer.id}
    images: dict[str, np.ndarray] = {}
    if natural is not None and len(natural):
        quality, rec = evaluate(tokenizer, natural)
        report["natural"] = {"n_frames": len(natural), "psnr_mean": quality.psnr_mean,
                             "psnr_min": quality.psnr_min, "psnr_unquantised": quality.psnr_unquantised}  # fmt: skip
        images["natural"] = np.stack([natural, rec])
    names, colours = pure_colour_frames(size)
    rec = tokenizer.reconstruct(colours)
    err = channel_errors(colours, rec)
    report["colours"] = {
        n: {"mean_rgb": [round(float(v), 1) for v in rec[k].reshape(-1, 3).mean(0)],
            "channel_mae": [round(float(v), 2) for v in err[k]]}
        for k, n in enumerate(names)
    }  # fmt: skip
    report["colours_worst_channel_mae"] = float(err.max())
    images["colours"] = np.stack([colours, rec])
    names, patterns = pattern_frames(size)
    rec = tokenizer.reconstruct(patterns)
    err, scores = channel_errors(patterns, rec), psnr(patterns, rec)
    report["patterns"] = {n: {"psnr": round(float(scores[k]), 2), "worst_channel_mae": round(float(err[k].max()), 2)}
                          for k, n in enumerate(names)}  # fmt: skip
    images["patterns"] = np.stack([patterns, rec])
    frame, mask = text_frame(px=24, size=size)
    rec = tokenizer.reconstruct(frame[None])[0]
    region = (frame[mask].astype(np.float64) - rec[mask].astype(np.float64)) ** 2
    right, total = read_glyphs(rec, px=24, size=size)
    report["text_24px"] = {"psnr_text_region": float(10 * np.log10(255.0**2 / max(region.mean(), 1e-12))),
                           "ssim_text_region": ssim(frame, rec, mask), "glyphs_read": right, "glyphs": total,
                           "glyph_accuracy": right / total}  # fmt: skip
    images["text"] = np.stack([frame[None], rec[None]])
    report["text_glyphs_read_by_px"] = {}  # the same reader on shorter lines that fit at larger sizes
    for px in (32, 40, 48):
        frame, _ = text_frame(SHORT_TEXT_PROBES, px=px, size=size)
        right, total = read_glyphs(tokenizer.reconstruct(frame[None])[0], SHORT_TEXT_PROBES, px=px, size=size)
        report["text_glyphs_read_by_px"][px] = [right, total]
    return report, images
