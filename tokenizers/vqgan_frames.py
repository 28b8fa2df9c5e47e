"""Frames for training and evaluating a VQGAN: decoded from clips or read from images.

LWM's preprocessing: RGB, shorter side resized to 256 (bicubic), centre crop 256 x 256.
:func:`read_frames` stops before the crop (training takes random crops of the whole
resized frame); :func:`center_crop` finishes it for encoding and evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def read_video_frames(
    path: str | os.PathLike, max_frames: int | None = None, short_side: int = 256
) -> np.ndarray:
    """Frames of a clip, shorter side resized to ``short_side`` -> uint8 [T, H, W, 3].

    ``max_frames`` keeps ``linspace(0, n-1, max_frames)`` frames (LWM's frame budget rule).
    Decord scales while decoding (much cheaper than resizing full frames in Python).
    """
    import decord

    probe = decord.VideoReader(str(path), num_threads=1)
    n = len(probe)
    if n == 0:
        raise ValueError(f"{path}: no frames")
    h, w = probe[0].shape[:2]
    del probe
    out_w, out_h = _scaled_size(w, h, short_side)
    reader = decord.VideoReader(str(path), width=out_w, height=out_h, num_threads=1)
    idx = (
        np.arange(n)
        if not max_frames or max_frames >= n
        else np.linspace(0, n - 1, max_frames).round().astype(int)
    )
    return reader.get_batch(list(idx)).asnumpy()


def read_image(path: str | os.PathLike, short_side: int = 256) -> np.ndarray:
    """An image file as RGB, shorter side resized to ``short_side`` (bicubic) -> uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        size = _scaled_size(rgb.width, rgb.height, short_side)
        return np.asarray(rgb.resize(size, Image.Resampling.BICUBIC), np.uint8)


def center_crop(frames: np.ndarray, size: int = 256) -> np.ndarray:
    """Centre ``size`` x ``size`` crop of [..., H, W, 3] frames (H, W >= size)."""
    h, w = frames.shape[-3:-1]
    if min(h, w) < size:
        raise ValueError(f"frames {h}x{w} are smaller than the {size}x{size} crop")
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(frames[..., y : y + size, x : x + size, :])


def read_any(
    path: str | os.PathLike, max_frames: int | None = None, short_side: int = 256
) -> list[np.ndarray]:
    """Frames of a video or image file as a list of uint8 [H, W, 3]."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return [read_image(path, short_side)]
    return list(read_video_frames(path, max_frames, short_side))


def installed_images() -> list[Path]:
    """Photographs shipped inside installed packages (matplotlib's sample data); may be empty."""
    try:
        import matplotlib

        root = Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        return []
    # Real photographs and renders only: plots, logos and DEM renders teach nothing about video.
    wanted = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
    return [root / name for name in wanted if (root / name).is_file()]


def frame_pool(
    paths: Iterable[str | os.PathLike], max_frames: int | None = None, short_side: int = 256
) -> list[np.ndarray]:
    """All frames of ``paths`` (videos and images), each uint8 [H, W, 3] with the shorter side ``short_side``."""
    pool: list[np.ndarray] = []
    for p in paths:
        pool.extend(read_any(p, max_frames, short_side))
    return pool
