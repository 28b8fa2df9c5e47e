"""What a decode takes from a file, shared by both decoders: the config, the frame plan, the
frame rule (:func:`select_frames`), the scale-and-crop geometry and the errors.

:mod:`lwmkit.pipelines.vision.decode` (decord, images) and :mod:`lwmkit.pipelines.vision.decode_ffmpeg`
both build on this module; neither imports the other's internals.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

from lwmkit.schemas.dead_letters import normalise_message
from lwmkit.schemas.jobs import DEFAULT_MAX_PIXELS
from lwmkit.schemas.strict import require
from lwmkit.tokenizers.vision_layout import sample_frames

EPS = 1e-6  # keeps a frame exactly on a bucket boundary in the same bucket in Python and ffmpeg


class DecodeError(Exception):
    """A file that cannot be decoded; the class name says why (it lands in the dead letters)."""


class UnreadableMedia(DecodeError):
    """Neither an image nor a video stream any decoder can open."""


class NoFrames(DecodeError):
    """The file opens but holds no frames in the requested range (audio-only, empty, ...)."""


class MediaTooLarge(DecodeError):
    """Frame size or frame count beyond the configured limits."""


class TruncatedMedia(DecodeError):
    """The decoder produced fewer frames than the file's index promised."""


class CorruptMedia(DecodeError):
    """The decoder failed part-way through the stream (damaged data after a good start)."""


# A stream is damaged, not variable-rate, when frames are missing for longer than this many
# seconds AND this many times its typical frame interval (phones' VFR varies 2-4x, a lost
# WebM cluster or mp4 fragment leaves seconds), or when its frames end this much before the
# duration its header declares (a download cut short).
HOLE_MIN_S, HOLE_FACTOR = 2.0, 25.0
SHORT_MIN_S, SHORT_SHARE = 1.0, 0.1


def check_continuity(starts: np.ndarray, end: float, declared: float | None) -> None:
    """Raise when frames are missing inside the stream (CorruptMedia) or at its end (TruncatedMedia).

    ``starts``: sorted frame times (s) from the stream start; ``end``: end of the last frame;
    ``declared``: the video stream's duration in its header (None when it declares none).
    Both decoders call this on the same timestamps, so they agree on what is damaged.
    """
    if len(starts) >= 3:
        gaps = np.diff(starts)
        worst = int(np.argmax(gaps))
        typical = float(np.median(gaps))
        if gaps[worst] > max(HOLE_MIN_S, HOLE_FACTOR * typical):
            raise CorruptMedia(
                f"frames are missing from {starts[worst]:.3f} s to {starts[worst + 1]:.3f} s "
                f"(elsewhere they are {typical * 1000:.0f} ms apart)"
            )
    if declared and end < declared - max(SHORT_MIN_S, SHORT_SHARE * declared):
        raise TruncatedMedia(
            f"frames end at {end:.3f} s but the stream declares {declared:.3f} s: the file ends early"
        )


def declared_duration(path: str) -> float | None:
    """The first video stream's duration as its header declares it (ffprobe), or None."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=duration:stream_tags=DURATION", "-of", "json", path]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        stream = (json.loads(proc.stdout).get("streams") or [{}])[0]
    except (OSError, ValueError):  # no ffprobe here, or nothing it can say: no duration check
        return None
    return parse_duration(stream.get("duration"), (stream.get("tags") or {}).get("DURATION"))


def parse_duration(seconds: str | None, tag: str | None) -> float | None:
    """``stream.duration`` ("4.004000") or Matroska's ``DURATION`` tag ("00:00:04.004000000")."""
    try:
        if seconds not in (None, "", "N/A"):
            return float(seconds) or None
        if tag:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec) or None
    except ValueError:
        pass
    return None


@dataclass(frozen=True)
class DecodeConfig:
    """What frames a job takes from each input and how they are shaped.

    Only these settings change the output; they are written into every record (``decode_settings``).
    """

    fps: float | None = 4.0
    """Frames sampled per second of video (LWM: 4). None keeps every frame."""
    max_frames: int | None = None
    """At most this many frames per clip, chosen uniformly (``linspace``) when there are more."""
    clip_seconds: float | None = None
    """Split videos into clips of this many seconds (one record each). None: one clip per input."""
    size: int = 256
    """Resize so the shorter side has this many pixels (bicubic)."""
    crop: int = 256
    """Then centre-crop a square of this side."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Larger source frames are refused (MediaTooLarge) instead of exhausting memory."""
    max_source_frames: int = 10_000_000
    """Videos whose index lists more frames are refused (a corrupt header can claim billions)."""

    def __post_init__(self) -> None:
        require(self.fps is None or self.fps > 0, "fps", "must be > 0 (or None for every frame)")
        require(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        require(self.clip_seconds is None or self.clip_seconds > 0, "clip_seconds", "must be > 0")
        require(self.size >= 1, "size", "must be >= 1")
        require(1 <= self.crop <= self.size, "crop", f"must be in [1, size={self.size}]")
        require(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        require(self.max_source_frames >= 1, "max_source_frames", "must be >= 1")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the ``decode_settings`` of every record."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ClipPlan:
    """One output record: a time range and the (presentation-order) frame indices in it."""

    index: int
    start_s: float
    end_s: float
    frames: tuple[int, ...]


@dataclass(frozen=True)
class MediaPlan:
    """What :func:`iter_frames` will produce for one file."""

    path: str
    kind: Literal["image", "video"]
    decoder: str  # "decord" | "ffmpeg" | "pillow"
    width: int
    height: int
    clips: tuple[ClipPlan, ...]
    bucketed: tuple[int, ...] = ()  # frames the sampling rule keeps, before max_frames (ffmpeg's output)
    t0: float = 0.0  # the stream's first timestamp (records count seconds from it)
    range_start: float = 0.0  # absolute timestamps of the requested range
    range_end: float = math.inf

    @property
    def n_frames(self) -> int:
        return sum(len(c.frames) for c in self.clips)


def select_frames(
    timestamps: np.ndarray, cfg: DecodeConfig, start_s: float | None, end_s: float | None, video_end: float
) -> tuple[np.ndarray, tuple[ClipPlan, ...]]:
    """Which frames to keep, and how they split into clips.

    Args:
        timestamps: presentation times (s) of every frame, sorted, relative to the stream start.
        start_s, end_s: the requested range (None: from the start / to the end).
        video_end: end time of the last frame.
    Returns:
        ``(bucketed, clips)``: indices kept by the fps rule, and the clips (after ``max_frames``).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    lo = 0.0 if start_s is None else float(start_s)
    hi = video_end if end_s is None else min(float(end_s), video_end)
    in_range = np.nonzero((ts >= lo - EPS) & (ts < hi - EPS))[0]
    if cfg.fps is None:
        bucketed = in_range
    else:
        buckets = np.floor((ts - lo) * cfg.fps + EPS)
        first = np.ones(len(ts), dtype=bool)
        first[1:] = buckets[1:] > buckets[:-1]
        bucketed = in_range[first[in_range]]
    span = cfg.clip_seconds or max(hi - lo, 0.0) or 1.0
    n_clips = max(1, math.ceil((hi - lo) / span - 1e-9))
    clips = []
    for j in range(n_clips):
        c_lo, c_hi = lo + j * span, min(lo + (j + 1) * span, hi) if cfg.clip_seconds else hi
        idx = bucketed[(ts[bucketed] >= c_lo - EPS) & (ts[bucketed] < c_hi - EPS)]
        if not len(idx):
            continue  # a gap in a variable-frame-rate stream: no record, not an error
        if cfg.max_frames is not None and len(idx) > cfg.max_frames:
            idx = idx[sample_frames(len(idx), cfg.max_frames)]
        clips.append(
            ClipPlan(len(clips), round(c_lo, 3), round(c_hi, 3), tuple(int(i) for i in idx))
        )  # ms: ids agree across decoders
    return bucketed, tuple(clips)


def video_end(starts: np.ndarray, last_duration: float) -> float:
    """End of the last frame (ms): its start plus the interval before it (the container's own frame
    duration only for one-frame videos), so decord and ffmpeg agree on every clip range and id."""
    if len(starts) > 1:
        return round(float(starts[-1] + (starts[-1] - starts[-2])), 3)
    return round(float(starts[-1] + max(last_duration, 0.0)), 3)


def scaled_size(width: int, height: int, cfg: DecodeConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((scaled w, h), (crop left, top))``: shorter side to ``size``, then a centre crop."""
    scale = cfg.size / min(width, height)
    nw, nh = max(cfg.crop, round(width * scale)), max(cfg.crop, round(height * scale))
    return (nw, nh), ((nw - cfg.crop) // 2, (nh - cfg.crop) // 2)


def resize_crop(image: Image.Image, cfg: DecodeConfig) -> np.ndarray:
    """RGB uint8 ``[crop, crop, 3]``: shorter side to ``size`` (bicubic), then a centre crop."""
    image = image.convert("RGB")
    (nw, nh), (left, top) = scaled_size(*image.size, cfg)
    if (nw, nh) != image.size:
        image = image.resize((nw, nh), Image.BICUBIC)
    return np.asarray(image.crop((left, top, left + cfg.crop, top + cfg.crop)), dtype=np.uint8)


def check_size(width: int, height: int, cfg: DecodeConfig) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableMedia(f"frame size {width}x{height} is not valid")
    if width * height > cfg.max_pixels:
        raise MediaTooLarge(f"frame size {width}x{height} exceeds max_pixels={cfg.max_pixels}")


def clean_message(line: str) -> str:
    """A decoder's message without what changes between runs (times, addresses, source lines),
    so that the dead letters of the same file are the same bytes on every run."""
    return normalise_message(line, limit=300)
