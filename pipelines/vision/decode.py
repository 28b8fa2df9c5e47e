"""Decode videos and images into 256×256 RGB frames, streamed: decord by default, ffmpeg as the alternative.

A decode is two steps. :func:`plan_media` opens a file, reads its frame timestamps (not its
pixels) and decides which frames go into which clip (:class:`MediaPlan`); :func:`iter_frames`
then yields those frames one at a time, so a one-hour video is never held in memory. Both
decoders choose frames with the same rule (:func:`select_frames`) from the same timestamps,
so decord and ffmpeg give the same frames.

Sampling rule at ``fps`` F: time is cut into buckets of 1/F seconds from the start of the range,
and the first frame of each bucket is kept (no frame is duplicated to fill a gap, so variable
frame rate input gives no repeated frames). ffmpeg runs the same rule in its ``select`` filter,
so it scales only the frames that are kept. Videos are scaled by libswscale (bicubic) inside
the decoder, then centre-cropped; images by Pillow (bicubic).

Images are one-frame media (kind ``image``), recognised by their content, not their extension.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from lwmkit.pipelines.vision.decode_ffmpeg import ffmpeg_frames, plan_ffmpeg
from lwmkit.pipelines.vision.decode_plan import (
    ClipPlan,
    CorruptMedia,
    DecodeConfig,
    DecodeError,
    MediaPlan,
    MediaTooLarge,
    NoFrames,
    TruncatedMedia,
    UnreadableMedia,
    check_continuity,
    check_size,
    clean_message,
    declared_duration,
    resize_crop,
    scaled_size,
    select_frames,
    video_end,
)
from lwmkit.schemas.jobs import DECODERS

_CHUNK = 8  # frames decord fetches per call


def _sniff_image(path: str) -> Image.Image | None:
    """The file as a still image when Pillow recognises its content (animated images are videos)."""
    try:
        image = Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if getattr(image, "n_frames", 1) > 1:
        image.close()
        return None
    return image


def plan_media(
    path: str,
    cfg: DecodeConfig,
    decoder: str = "decord",
    start_s: float | None = None,
    end_s: float | None = None,
) -> MediaPlan:
    """Open ``path`` (a local file) and plan its frames. Raises a :class:`DecodeError` subclass."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    image = _sniff_image(path)
    if image is not None:
        with image:
            check_size(*image.size, cfg)
        return MediaPlan(
            path, "image", "pillow", image.size[0], image.size[1], (ClipPlan(0, 0.0, 0.0, (0,)),)
        )
    if decoder == "decord":
        return _plan_decord(path, cfg, start_s, end_s)
    return plan_ffmpeg(path, cfg, start_s, end_s)


def iter_frames(plan: MediaPlan, cfg: DecodeConfig) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(clip_index, frame_in_clip, uint8 [crop, crop, 3])`` in order, one frame at a time."""
    if plan.kind == "image":
        with Image.open(plan.path) as image:
            image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF
            yield 0, 0, resize_crop(image, cfg)
        return
    slots = {f: (c.index, k) for c in plan.clips for k, f in enumerate(c.frames)}
    # Both decoders scale inside libswscale (bicubic), on the kept frames only for ffmpeg:
    # resizing full frames in Python would cost 3-4x the decode itself.
    if plan.decoder == "decord":
        source = _decord_frames(plan, cfg, slots)
    else:
        source = ffmpeg_frames(plan, cfg, slots)
    produced = 0
    for frame_index, pixels in source:
        clip, k = slots[frame_index]
        yield clip, k, pixels
        produced += 1
    if produced < len(slots):
        raise TruncatedMedia(f"decoded {produced} of {len(slots)} planned frames ({plan.decoder})")


# ---------------------------------------------------------------- decord


def _plan_decord(path: str, cfg: DecodeConfig, start_s: float | None, end_s: float | None) -> MediaPlan:
    import decord

    try:
        reader = decord.VideoReader(path, num_threads=1)
        n = len(reader)
        if n == 0:
            raise NoFrames("the video stream has no frames")
        if n > cfg.max_source_frames:
            raise MediaTooLarge(f"{n} frames exceed max_source_frames={cfg.max_source_frames}")
        height, width = reader[0].shape[:2]
        ts = reader.get_frame_timestamp(np.arange(n))
    except DecodeError:
        raise
    except Exception as err:  # decord raises DECORDError / RuntimeError for input it cannot read
        raise UnreadableMedia(f"decord cannot open it: {_decord_message(err)}") from None
    check_size(width, height, cfg)
    t0 = float(ts[0, 0])
    starts = ts[:, 0] - t0
    end = video_end(starts, float(ts[-1, 1] - ts[-1, 0]))
    check_continuity(starts, end, declared_duration(path))
    bucketed, clips = select_frames(starts, cfg, start_s, end_s, end)
    del reader
    if not clips:
        raise NoFrames(f"no frames in the range [{start_s}, {end_s}) s")
    return MediaPlan(
        path, "video", "decord", int(width), int(height), clips, tuple(int(i) for i in bucketed), t0
    )


def _decord_message(err: Exception) -> str:
    return clean_message((str(err).strip().splitlines() or ["?"])[0])


def _decord_reason(err: Exception) -> str:
    """decord's reason without its nested log prefixes and check expressions: the last clause
    ("Error sending packet"), which stays the same from run to run and build to build."""
    text = _decord_message(err)
    return text.rsplit(") ", 1)[-1].strip() or text


def _decord_frames(
    plan: MediaPlan, cfg: DecodeConfig, slots: dict[int, tuple[int, int]]
) -> Iterator[tuple[int, np.ndarray]]:
    import decord

    (nw, nh), (left, top) = scaled_size(plan.width, plan.height, cfg)
    reader = decord.VideoReader(plan.path, width=nw, height=nh, num_threads=1)
    wanted = sorted(slots)
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i : i + _CHUNK]
        try:
            batch = reader.get_batch(chunk).asnumpy()
        except Exception as err:  # DECORDError: a packet the codec refuses, after a good start
            raise CorruptMedia(
                f"decoding failed mid-stream near frame {chunk[0]}: {_decord_reason(err)}"
            ) from None
        for frame_index, pixels in zip(chunk, batch, strict=True):
            yield frame_index, np.ascontiguousarray(pixels[top : top + cfg.crop, left : left + cfg.crop])
