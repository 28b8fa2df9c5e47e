"""Rendered frames for training and probing a VQGAN: saturated colours, bars, gradients, checkerboards,
shapes and text. Nothing is downloaded; text uses the DejaVu fonts matplotlib ships.

Natural clips rarely hold pure red or sharp glyphs, so a VQGAN trained on them alone collapses
saturated colours and smears text. :func:`synthetic_frames` fills that gap for training (a pure
function of ``(n, seed)``); :func:`pure_colour_frames`, :func:`pattern_frames` and
:func:`text_frame` are the fixed probes the quality benchmark measures.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

# The probe colours of issue 22 (name -> RGB); training draws its own random colours.
PURE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255),
    "magenta": (255, 0, 255), "yellow": (255, 255, 0), "white": (255, 255, 255), "black": (0, 0, 0),
    "grey": (128, 128, 128),
}  # fmt: skip
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
KINDS = ("solid", "bars", "gradient", "checker", "shapes", "text")
_GLYPHS = string.ascii_letters + string.digits


def _font_path(name: str) -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if not path.is_file():
        raise FileNotFoundError(f"font {name} not found under matplotlib's data ({path})")
    return path


@cache
def load_font(name: str, size: int):
    """A TrueType font matplotlib ships (e.g. ``DejaVuSans.ttf``) at ``size`` px, cached."""
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_path(name)), size)


def _colour(rng: np.random.Generator, grey_share: float = 0.0) -> np.ndarray:
    """A random colour: a neutral grey (r = g = b) with probability ``grey_share``, else half the time
    saturated (each channel 0 or 255) and half uniform. ``grey_share`` 0 draws exactly as before it existed."""
    if grey_share > 0 and rng.random() < grey_share:
        return np.full(3, rng.integers(0, 256), np.uint8)
    if rng.random() < 0.5:
        return rng.choice([0, 255], 3).astype(np.uint8)
    return rng.integers(0, 256, 3).astype(np.uint8)


def _solid(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    return np.broadcast_to(colour(), (size, size, 3)).copy()


def _bars(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    n = int(rng.integers(2, 12))
    colours = np.stack([colour() for _ in range(n)])
    index = np.minimum(np.arange(size) * n // size, n - 1)
    row = colours[index]  # [size, 3]
    frame = np.broadcast_to(row[None], (size, size, 3))
    return np.ascontiguousarray(frame if rng.random() < 0.5 else frame.transpose(1, 0, 2))


def _gradient(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    a, b = colour().astype(np.float64), colour().astype(np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return np.round(a + t[..., None] * (b - a)).astype(np.uint8)


def _checker(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    cell = int(rng.choice([2, 4, 8, 16, 32, 64]))
    a, b = colour(), colour()
    yy, xx = np.mgrid[0:size, 0:size]
    mask = ((yy // cell + xx // cell) % 2).astype(bool)
    return np.where(mask[..., None], a, b).astype(np.uint8)


def _background(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    return _solid(rng, size, colour) if rng.random() < 0.6 else _gradient(rng, size, colour)


def _shapes(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(_background(rng, size, colour))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(8, size // 2, 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        fill = tuple(int(c) for c in colour())
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
    return np.asarray(img, np.uint8)


def _contrasting(colour: Callable[[], np.ndarray], background: np.ndarray) -> tuple[int, int, int]:
    """A colour at least ~100 grey levels away from the background's mean, so text stays readable."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(20):
        c = colour()
        if np.abs(c.astype(np.float64) - mean).sum() > 200:
            break
    return tuple(int(v) for v in c)


def _text(rng: np.random.Generator, size: int, colour: Callable[[], np.ndarray]) -> np.ndarray:
    from PIL import Image, ImageDraw

    background = _background(rng, size, colour)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(-8, 16))
    while y < size:
        px = int(rng.choice([10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64]))
        font = load_font(str(rng.choice(FONT_FILES)), px)
        n_words = int(rng.integers(1, 6))
        words = " ".join("".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 9)))) for _ in range(n_words))
        draw.text((int(rng.integers(-8, 24)), y), words, fill=_contrasting(colour, background), font=font)
        y += int(px * rng.uniform(1.1, 1.6))
    return np.asarray(img, np.uint8)


_MAKERS: dict[str, Callable[[np.random.Generator, int, Callable[[], np.ndarray]], np.ndarray]] = {
    "solid": _solid, "bars": _bars, "gradient": _gradient, "checker": _checker, "shapes": _shapes, "text": _text,
}  # fmt: skip


def synthetic_frame(kind: str, seed: int, index: int, size: int = 256, grey_share: float = 0.0) -> np.ndarray:
    """One rendered frame of ``kind`` (one of :data:`KINDS`) -> uint8 [size, size, 3]; a pure function of its args.

    ``grey_share``: the probability that each random colour is a neutral grey (0 = the original draws).
    """
    if kind not in _MAKERS:
        raise ValueError(f"unknown synthetic frame kind {kind!r}; expected one of {', '.join(KINDS)}")
    if size < 16:
        raise ValueError(f"synthetic frames need size >= 16, got {size}")
    if not 0.0 <= grey_share <= 1.0:
        raise ValueError(f"synthetic frames need grey_share in [0, 1], got {grey_share}")
    rng = np.random.default_rng([seed, KINDS.index(kind), index])
    return _MAKERS[kind](rng, size, lambda: _colour(rng, grey_share))


def synthetic_frames(
    n: int, seed: int = 0, size: int = 256, kinds: tuple[str, ...] = KINDS, grey_share: float = 0.0
) -> list[np.ndarray]:
    """``n`` rendered frames cycling through ``kinds`` -> list of uint8 [size, size, 3]; deterministic per seed."""
    if n < 0:
        raise ValueError(f"synthetic_frames needs n >= 0, got {n}")
    if not kinds:
        raise ValueError("synthetic_frames needs at least one kind")
    return [synthetic_frame(kinds[i % len(kinds)], seed, i // len(kinds), size, grey_share) for i in range(n)]


# ---------------------------------------------------------------- fixed probes for evaluation


def pure_colour_frames(size: int = 256) -> tuple[list[str], np.ndarray]:
    """(names, uint8 [9, size, size, 3]): one flat frame per colour of :data:`PURE_COLOURS`."""
    names = list(PURE_COLOURS)
    frames = np.stack([np.broadcast_to(np.uint8(PURE_COLOURS[n]), (size, size, 3)) for n in names])
    return names, np.ascontiguousarray(frames)


def pattern_frames(size: int = 256) -> tuple[list[str], np.ndarray]:
    """(names, uint8 [N, size, size, 3]): colour bars, RGB ramps, a hue sweep and a checkerboard."""
    bars = np.array([PURE_COLOURS[c] for c in ("white", "yellow", "cyan", "green", "magenta", "red", "blue",
                                               "black")], np.uint8)  # fmt: skip
    frames = {"colour_bars": np.broadcast_to(bars[np.arange(size) * 8 // size][None], (size, size, 3))}
    ramp = np.round(np.linspace(0, 255, size)).astype(np.uint8)
    for ch, name in enumerate(("red_ramp", "green_ramp", "blue_ramp")):
        f = np.zeros((size, size, 3), np.uint8)
        f[..., ch] = ramp[None, :]
        frames[name] = f
    frames["grey_ramp"] = np.broadcast_to(ramp[:, None, None], (size, size, 3))
    hue = np.linspace(0, 6, size, endpoint=False)
    rgb = np.stack([np.clip(np.abs((hue - s) % 6 - 3) - 1, 0, 1) for s in (0, 4, 2)], -1)  # HSV hue, S=V=1
    frames["hue_sweep"] = np.broadcast_to(np.round(rgb * 255).astype(np.uint8)[None], (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    check = ((yy // 16 + xx // 16) % 2).astype(bool)[..., None]
    red, blue = np.uint8([255, 0, 0]), np.uint8([0, 0, 255])
    frames["checker_red_blue"] = np.where(check, red, blue).astype(np.uint8)
    names = list(frames)
    return names, np.ascontiguousarray(np.stack([frames[n] for n in names]))


TEXT_PROBES: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("TAXI  Hotel  42", (0, 0, 0), (255, 255, 255)),
    ("The quick brown fox", (255, 255, 255), (0, 0, 128)),
    ("jumps 7 lazy dogs", (255, 255, 0), (40, 40, 40)),
    ("EXIT  Gate B12", (255, 255, 255), (200, 0, 0)),
)  # (text, ink, paper): words no training frame uses (training text is random letters)


def text_frame(lines: list[tuple[str, tuple[int, int, int], tuple[int, int, int]]] | None = None,
               px: int = 24, size: int = 256) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Lines of ``px``-pixel DejaVu Sans text, each on its own band of paper colour.

    Returns (uint8 [size, size, 3] frame, bool [size, size] mask of the text bands' glyph boxes).
    """
    from PIL import Image, ImageDraw

    lines = list(TEXT_PROBES if lines is None else lines)
    band = size // max(len(lines), 1)
    if band < px + 4:
        raise ValueError(f"{len(lines)} lines of {px} px text do not fit in {size} px")
    img = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    mask = np.zeros((size, size), bool)
    font = load_font("DejaVuSans.ttf", px)
    for i, (words, ink, paper) in enumerate(lines):
        y0 = i * band
        draw.rectangle([0, y0, size, y0 + band - 1], fill=paper)
        x, y = 8, y0 + (band - px) // 2
        draw.text((x, y), words, fill=ink, font=font)
        left, top, right, bottom = draw.textbbox((x, y), words, font=font)
        mask[max(top, 0) : min(bottom, size), max(left, 0) : min(right, size)] = True
    return np.asarray(img, np.uint8), mask
