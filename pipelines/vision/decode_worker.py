"""Per-file decode isolation: decoders run in a helper process that may crash or hang safely.

decord is known to hang, leak and segfault on corrupt files. :class:`IsolatedDecoder` runs
:mod:`lwmkit.pipelines.vision.decode` in a long-lived child process (``python -m
lwmkit.pipelines.vision.decode_worker``) and streams frames back over a pipe, one at a time: memory
stays bounded, a segfault becomes :class:`DecoderCrashed`, a stall longer than ``timeout_s``
(or a file taking more than ``file_timeout_s`` of decoder time) becomes :class:`DecodeTimeout`;
the child is then killed and a fresh one serves the next file. The pipe carries JSON headers
and raw pixels only (no pickles).

Why not Beam's ``with_exception_handling(use_subprocess=True, timeout=...)``: it collects all
of an element's outputs in the child and returns them as one list (a whole video's frames in
memory at once), and sleeps a second after every crash. ``benchmarks/bench_vision.py``
measures both.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from lwmkit.pipelines.vision.decode import (
    ClipPlan,
    DecodeConfig,
    DecodeError,
    MediaPlan,
    UnreadableMedia,
    iter_frames,
    plan_media,
)
from lwmkit.schemas.dead_letters import normalise_message

_HEADER = struct.Struct("<cI")  # message type, payload length
_STARTUP_S = 120.0


class DecodeTimeout(DecodeError):
    """The decoder made no progress within the time limit (it was killed)."""


class DecoderCrashed(DecodeError):
    """The decoder process died (e.g. a segfault in native code)."""


def plan_to_dict(plan: MediaPlan) -> dict[str, Any]:
    data = asdict(plan)
    data["range_end"] = None if plan.range_end == float("inf") else plan.range_end
    return data


def plan_from_dict(data: dict[str, Any]) -> MediaPlan:
    clips = tuple(ClipPlan(c["index"], c["start_s"], c["end_s"], tuple(c["frames"])) for c in data["clips"])
    end = float("inf") if data["range_end"] is None else data["range_end"]
    return MediaPlan(**{**data, "clips": clips, "bucketed": tuple(data["bucketed"]), "range_end": end})


def decode_local(
    path: str, cfg: DecodeConfig, decoder: str, fallback: bool, start_s: float | None, end_s: float | None
) -> Iterator[MediaPlan | tuple[int, int, np.ndarray]]:
    """In-process decode: the plan first, then ``(clip, k, frame)``; ffmpeg when decord cannot open it."""
    try:
        plan = plan_media(path, cfg, decoder, start_s, end_s)
    except UnreadableMedia as err:
        if not (fallback and decoder == "decord"):
            raise
        try:
            plan = plan_media(path, cfg, "ffmpeg", start_s, end_s)
        except DecodeError as err2:
            raise type(err2)(f"{err2} (decord: {err})") from None
    yield plan
    yield from iter_frames(plan, cfg)


class IsolatedDecoder:
    """Decodes files in a child process; one instance per Beam DoFn (``setup``/``teardown``)."""

    def __init__(self, cfg: DecodeConfig, decoder: str = "decord", fallback: bool = True,
                 timeout_s: float = 60.0, file_timeout_s: float = 3600.0) -> None:  # fmt: skip
        self.cfg, self.decoder, self.fallback = cfg, decoder, fallback
        self.timeout_s, self.file_timeout_s = timeout_s, file_timeout_s
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._stderr = tempfile.TemporaryFile()
            cmd = [sys.executable, "-m", "lwmkit.pipelines.vision.decode_worker"]
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
            # Imports take seconds on a busy machine: that is start-up, not a stalled decode.
            stall, self.timeout_s = self.timeout_s, max(self.timeout_s, _STARTUP_S)
            try:
                self._read(_HEADER.size, time.monotonic() + _STARTUP_S)  # the child's "ready"
            finally:
                self.timeout_s = stall
        return self._proc

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None

    def _crash_reason(self) -> str:
        code = self._proc.wait() if self._proc else None
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            tail = f": {lines[-1][:300]}" if lines else ""
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"decoder process died ({how}){tail}"

    def _read(self, n: int, deadline: float) -> bytes:
        fd, chunks, left = self._proc.stdout.fileno(), [], n
        while left:
            wait = min(self.timeout_s, deadline - time.monotonic())
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                self.close()
                limit = "file_timeout_s" if deadline - time.monotonic() <= 0 else "timeout_s"
                raise DecodeTimeout(f"decoder made no progress within {limit} and was killed")
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                reason = self._crash_reason()
                self.close()
                raise DecoderCrashed(reason)
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def decode(self, path: str, start_s: float | None = None, end_s: float | None = None
               ) -> Iterator[MediaPlan | tuple[int, int, np.ndarray]]:  # fmt: skip
        """Like :func:`decode_local`, in the child. Raises DecodeError subclasses, never crashes."""
        proc = self._start()
        request = {"path": path, "cfg": asdict(self.cfg), "decoder": self.decoder, "fallback": self.fallback,
                   "start_s": start_s, "end_s": end_s}  # fmt: skip
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        # Only time spent waiting on the child counts: downstream work between frames does not.
        budget, finished = self.file_timeout_s, False
        try:
            while True:
                t = time.monotonic()
                kind, size = _HEADER.unpack(self._read(_HEADER.size, t + budget))
                payload = self._read(size, t + budget)
                budget -= time.monotonic() - t
                if kind == b"P":
                    yield plan_from_dict(json.loads(payload))
                elif kind == b"F":
                    (clip, k), pixels = struct.unpack("<II", payload[:8]), payload[8:]
                    yield (
                        clip,
                        k,
                        np.frombuffer(pixels, dtype=np.uint8).reshape(self.cfg.crop, self.cfg.crop, 3),
                    )
                elif kind == b"E":
                    finished = True
                    err = json.loads(payload)
                    raise _error_class(err["class"])(err["message"])
                else:  # b"D"
                    finished = True
                    return
        finally:
            if not finished:  # abandoned mid-file: the child is still streaming it, start afresh
                self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the child exits on its own when stdin closes
            pass

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_class(name: str) -> type[DecodeError]:
    import lwmkit.pipelines.vision.decode as decode

    found = getattr(decode, name, None)
    if isinstance(found, type) and issubclass(found, DecodeError):
        return found
    # Any other exception in the decoder: keep its name in the message, class stays DecodeError.
    return type(name, (DecodeError,), {})


def _serve() -> None:
    """Child side: read JSON requests from stdin, stream messages to the original stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # native libraries printing to stdout must not corrupt the protocol

    def send(kind: bytes, payload: bytes) -> None:
        out.write(_HEADER.pack(kind, len(payload)) + payload)
        out.flush()

    send(b"R", b"")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            cfg = DecodeConfig(**req["cfg"])
            for item in decode_local(
                req["path"], cfg, req["decoder"], req["fallback"], req["start_s"], req["end_s"]
            ):
                if isinstance(item, MediaPlan):
                    send(b"P", json.dumps(plan_to_dict(item)).encode())
                else:
                    clip, k, frame = item
                    send(b"F", struct.pack("<II", clip, k) + np.ascontiguousarray(frame).tobytes())
            send(b"D", b"")
        except Exception as err:  # every failure goes back as a message; the parent dead-letters it
            message = normalise_message(str(err))  # no times or addresses: dead letters are stable bytes
            send(b"E", json.dumps({"class": type(err).__name__, "message": message}).encode())


if __name__ == "__main__":
    _serve()
