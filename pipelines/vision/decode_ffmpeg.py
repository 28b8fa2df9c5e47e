"""The ffmpeg decoder (ffprobe timestamps, then one ffmpeg process streaming the kept frames).

Same plan and frame rule as decord (:mod:`lwmkit.pipelines.vision.decode`): ffmpeg's ``select`` filter
runs :func:`~lwmkit.pipelines.vision.decode_plan.select_frames`' rule, so it scales only the kept frames.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from lwmkit.pipelines.vision.decode_plan import (
    EPS,
    CorruptMedia,
    DecodeConfig,
    MediaPlan,
    MediaTooLarge,
    NoFrames,
    TruncatedMedia,
    UnreadableMedia,
    check_continuity,
    check_size,
    clean_message,
    parse_duration,
    scaled_size,
    select_frames,
    video_end,
)

# ffmpeg's line for a packet the codec refused (decord raises on the same packets); concealed
# macroblock errors ("error while decoding MB") are not failures for either decoder.
_REFUSED = re.compile(r"Error while decoding stream #\S+: (.*)|Decoding error: (.*)")


def probe(path: str) -> tuple[int, int, np.ndarray, float, float | None]:
    """Width, height, sorted absolute packet timestamps, the end time and the declared duration of
    the first video stream."""
    import ffmpeg

    try:
        info = ffmpeg.probe(path, select_streams="v:0")
    except ffmpeg.Error as err:
        msg = (err.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise UnreadableMedia(f"ffprobe cannot open it: {clean_message((msg or ['?'])[-1])}") from None
    streams = info.get("streams") or []
    if not streams:
        raise NoFrames("no video stream (audio-only or not a video)")
    width, height = int(streams[0].get("width") or 0), int(streams[0].get("height") or 0)
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
           "packet=pts_time,dts_time,duration_time", "-of", "csv=p=0", path]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if "partial file" in proc.stderr or "moov atom not found" in proc.stderr:
        raise TruncatedMedia(f"the file ends early: {clean_message(proc.stderr.strip().splitlines()[-1])}")
    times, ends = [], []
    for line in proc.stdout.splitlines():
        parts = (line.split(",") + ["", "", ""])[:3]
        t = parts[0] if parts[0] not in ("", "N/A") else parts[1]
        if t in ("", "N/A"):
            continue
        times.append(float(t))
        dur = float(parts[2]) if parts[2] not in ("", "N/A") else 0.0
        ends.append(float(t) + dur)
    if not times:
        raise NoFrames("the video stream has no frames")
    declared = int(streams[0].get("nb_frames") or 0)
    if declared and len(times) < declared:
        raise TruncatedMedia(f"the index lists {declared} frames but only {len(times)} are in the file")
    duration = parse_duration(streams[0].get("duration"), (streams[0].get("tags") or {}).get("DURATION"))
    return width, height, np.sort(np.asarray(times)), max(ends), duration


def plan_ffmpeg(path: str, cfg: DecodeConfig, start_s: float | None, end_s: float | None) -> MediaPlan:
    width, height, ts, end, duration = probe(path)
    if len(ts) > cfg.max_source_frames:
        raise MediaTooLarge(f"{len(ts)} frames exceed max_source_frames={cfg.max_source_frames}")
    check_size(width, height, cfg)
    t0 = float(ts[0])
    last = video_end(ts - t0, end - ts[-1])
    check_continuity(ts - t0, last, duration)
    bucketed, clips = select_frames(ts - t0, cfg, start_s, end_s, last)
    if not clips:
        raise NoFrames(f"no frames in the range [{start_s}, {end_s}) s")
    lo = t0 + (start_s or 0.0)
    hi = t0 + end_s if end_s is not None else math.inf
    plan = MediaPlan(path, "video", "ffmpeg", width, height, clips, tuple(int(i) for i in bucketed), t0)
    return replace(plan, range_start=lo, range_end=hi)


def select_expr(plan: MediaPlan, cfg: DecodeConfig) -> str:
    """ffmpeg's ``select`` expression for the rule of :func:`select_frames` (absolute times)."""
    lo = f"{plan.range_start:.9f}"
    cond = [f"gte(t,{lo}-{EPS})"]
    if math.isfinite(plan.range_end):
        cond.append(f"lt(t,{plan.range_end:.9f}-{EPS})")
    if cfg.fps is not None:
        bucket = "floor(({x}-" + lo + f")*{cfg.fps!r}+{EPS})"
        first = f"gt({bucket.format(x='t')},{bucket.format(x='prev_t')})"
        cond.append(f"gt(eq(n,0)+{first},0)")
    return "*".join(cond)


def ffmpeg_frames(
    plan: MediaPlan, cfg: DecodeConfig, slots: dict[int, tuple[int, int]]
) -> Iterator[tuple[int, np.ndarray]]:
    import ffmpeg

    # -copyts keeps the file's own timestamps, so the select rule sees what ffprobe saw. One
    # decoder thread and -frames:v stop ffmpeg right after the last kept frame, like decord:
    # the packets it has decoded by then (and so the errors it logs) are the same on every run.
    stream = ffmpeg.input(plan.path, copyts=None, noautorotate=None, threads=1)
    (nw, nh), (left, top) = scaled_size(plan.width, plan.height, cfg)
    vf = f"select='{select_expr(plan, cfg)}',scale={nw}:{nh}:flags=bicubic,crop={cfg.crop}:{cfg.crop}:{left}:{top}"
    stream = stream.output("pipe:", map="0:v:0", vf=vf, fps_mode="passthrough", format="rawvideo",
                           pix_fmt="rgb24", **{"frames:v": len(plan.bucketed)})  # fmt: skip
    args = ["ffmpeg", "-nostdin", "-v", "error", *stream.compile()[1:]]
    frame_bytes = cfg.crop * cfg.crop * 3
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors)
        try:
            for count, frame_index in enumerate(plan.bucketed):
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    proc.wait()
                    _raise_refused(errors)  # a refused packet explains the missing frames
                    tail = _stderr(errors).strip().splitlines()[-1:] or ["no error"]
                    raise TruncatedMedia(
                        f"ffmpeg stopped after {count} of {len(plan.bucketed)} frames: {clean_message(tail[0])}"
                    )
                if frame_index in slots:
                    pixels = np.frombuffer(buf, dtype=np.uint8).reshape(cfg.crop, cfg.crop, 3)
                    yield frame_index, pixels
            proc.wait()
            _raise_refused(errors)
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()


def _stderr(errors: Any) -> str:
    errors.seek(0)
    return errors.read().decode("utf-8", "replace")


def _raise_refused(errors: Any) -> None:
    """CorruptMedia when ffmpeg's stderr shows a packet the codec refused (where decord raises)."""
    refused = [m.group(1) or m.group(2) for m in _REFUSED.finditer(_stderr(errors))]
    if refused:
        raise CorruptMedia(f"decoding failed mid-stream: {clean_message(refused[0])} "
                           f"({len(refused)} packet(s) refused by the codec)")  # fmt: skip
