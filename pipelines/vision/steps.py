"""The vision job's steps as PTransforms: DecodeMedia, TokenizeFrames, AssembleRecords.

Frames travel as ``(record id, (frame index, pixels))``, one element per frame, so a long
video streams through decode and the VQGAN without ever being held whole. A file's clip
descriptions are emitted only after its last frame decoded cleanly: a file that fails half-way
leaves frames without a description, which AssembleRecords drops (all-or-nothing per input;
the file itself is in the dead letters).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from lwmkit.pipelines.vision.decode import DecodeConfig, MediaPlan
from lwmkit.pipelines.vision.decode_worker import IsolatedDecoder, decode_local
from lwmkit.pipelines.vision.inputs import MediaInput
from lwmkit.runtime.dead_letters import letter
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import VISION_RECORD, validate_rows, vision_record_id

JOB = "vision"
FRAMES, CLIPS, DEAD, ROWS = "frames", "clips", "dead", "rows"


@dataclass(frozen=True)
class DecodeOptions:
    """How files are decoded; unlike :class:`DecodeConfig` these do not change the output."""

    decoder: str = "decord"
    fallback: bool = True
    isolate: bool = True
    timeout_s: float = 60.0
    file_timeout_s: float = 3600.0


def localise(uri: str) -> tuple[str, str | None]:
    """A local path for ``uri``: bucket objects are streamed to a temporary file first."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://"), None
    tmpdir = tempfile.mkdtemp(prefix="lwmkit-vision-")
    local = os.path.join(tmpdir, os.path.basename(uri.rstrip("/")) or "media")
    with FileSystems.open(uri, mime_type="application/octet-stream") as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return local, tmpdir


class _DecodeFn(beam.DoFn):
    def __init__(self, cfg: DecodeConfig, opts: DecodeOptions, num_shards: int) -> None:
        self.cfg, self.opts, self.num_shards = cfg, opts, num_shards
        self.frames = beam.metrics.Metrics.counter(JOB, "frames_decoded")
        self.failed = beam.metrics.Metrics.counter(JOB, "inputs_failed")

    def setup(self) -> None:
        o = self.opts
        self.decoder = (
            IsolatedDecoder(self.cfg, o.decoder, o.fallback, o.timeout_s, o.file_timeout_s)
            if o.isolate
            else None
        )

    def teardown(self) -> None:
        if self.decoder is not None:
            self.decoder.close()

    def _decode(self, path: str, item: MediaInput) -> Iterator[Any]:
        if self.decoder is not None:
            return self.decoder.decode(path, item.start_s, item.end_s)
        return decode_local(path, self.cfg, self.opts.decoder, self.opts.fallback, item.start_s, item.end_s)

    def process(self, key: str) -> Iterable[Any]:
        item = MediaInput.from_key(key)
        stage, tmpdir, path = "read", None, ""
        try:
            path, tmpdir = localise(item.uri)
            stage = "decode"
            events = self._decode(path, item)
            plan: MediaPlan = next(events)
            ids = [_clip_id(item, plan, c) for c in range(len(plan.clips))]
            for clip, k, frame in events:
                self.frames.inc()
                yield ids[clip], (k, frame)
            for clip, rid in zip(plan.clips, ids, strict=True):
                yield TaggedOutput(CLIPS, (rid, _clip_meta(item, plan, clip, rid, self.cfg, self.num_shards)))
        except Exception as err:  # any failure of one input is its dead letter, never the job's end
            self.failed.inc()
            dead = letter(item.uri, stage, JOB, err, detail=key)
            # A bucket object's temporary local copy has a random name: the letter names the uri.
            yield TaggedOutput(DEAD, dead.replace(_escaped(path), _escaped(item.uri)) if tmpdir else dead)
        finally:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)


def _escaped(text: str) -> str:
    """``text`` as it appears inside a dead letter's JSON line."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _clip_id(item: MediaInput, plan: MediaPlan, index: int) -> str:
    clip = plan.clips[index]
    return vision_record_id(item.uri, clip.start_s, clip.end_s)


def _clip_meta(
    item: MediaInput, plan: MediaPlan, clip: Any, rid: str, cfg: DecodeConfig, num_shards: int
) -> dict:
    n = len(clip.frames)
    if plan.kind == "image":
        fps = 0.0
    else:
        fps = cfg.fps if cfg.fps is not None else n / max(clip.end_s - clip.start_s, 1e-9)
    return {
        "id": rid, "source": "", "uri": item.uri, "kind": plan.kind, "caption": item.caption, "fps": float(fps),
        "start_s": float(clip.start_s), "end_s": float(clip.end_s), "n_frames": n,
        "width": plan.width, "height": plan.height, "input_key": item.key, "bucket": item.bucket(num_shards),
    }  # fmt: skip


class DecodeMedia(beam.PTransform):
    """PCollection[input key] -> tagged ``frames`` (record id, (k, uint8 frame)), ``clips``, ``dead``."""

    def __init__(self, cfg: DecodeConfig, opts: DecodeOptions, num_shards: int) -> None:
        super().__init__()
        self.cfg, self.opts, self.num_shards = cfg, opts, num_shards

    def expand(self, keys: beam.PCollection) -> Any:
        fn = _DecodeFn(self.cfg, self.opts, self.num_shards)
        return keys | "DecodeFiles" >> beam.ParDo(fn).with_outputs(CLIPS, DEAD, main=FRAMES)


class TokenizeFrames(beam.PTransform):
    """PCollection[(record id, (k, frame))] -> PCollection[(record id, (k, int16 codes [256]))].

    ``RunInference`` batches frames across videos with ``BatchElements``.
    """

    def __init__(self, checkpoint: str | None, batch_size: int, dtype: str = "float32") -> None:
        super().__init__()
        self.checkpoint, self.batch_size, self.dtype = checkpoint, batch_size, dtype

    def expand(self, frames: beam.PCollection) -> beam.PCollection:
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        from lwmkit.pipelines.vision.vqgan_handler import VQGANModelHandler

        handler = VQGANModelHandler(self.checkpoint, self.batch_size, self.dtype)
        keyed = frames | "KeyByFrame" >> beam.Map(lambda kv: ((kv[0], kv[1][0]), kv[1][1]))
        encoded = keyed | "RunVQGAN" >> RunInference(KeyedModelHandler(handler))
        return encoded | "KeyByRecord" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))


class _AssembleFn(beam.DoFn):
    def __init__(self, source: str, tokenizer_id: str, decode_settings: str) -> None:
        self.source, self.tokenizer_id, self.decode_settings = source, tokenizer_id, decode_settings
        self.records = beam.metrics.Metrics.counter(JOB, "records")
        self.orphans = beam.metrics.Metrics.counter(JOB, "frames_of_failed_inputs")

    def process(self, element: tuple[str, dict[str, list]]) -> Iterable[Any]:
        rid, groups = element
        metas, codes = list(groups[CLIPS]), sorted(groups["codes"], key=lambda kc: kc[0])
        if not metas:
            self.orphans.inc(len(codes))  # its file failed after some frames: all-or-nothing
            return
        meta = dict(metas[0])
        key, bucket = meta.pop("input_key"), meta.pop("bucket")
        try:
            if [k for k, _ in codes] != list(range(meta["n_frames"])):
                raise ContractError(
                    f"got codes for {len(codes)} of {meta['n_frames']} frames", field="tokens"
                )
            tokens = (
                np.concatenate([c for _, c in codes]).astype(np.int16) if codes else np.zeros(0, np.int16)
            )
            row = {**meta, "source": self.source, "tokens": tokens.tolist(), "tokenizer_id": self.tokenizer_id,
                   "decode_settings": self.decode_settings}  # fmt: skip
            validate_rows([row], VISION_RECORD, source=meta["uri"])
        except Exception as err:
            yield TaggedOutput(DEAD, letter(meta["uri"], "tokenize", JOB, err, detail=key))
            return
        self.records.inc()
        yield bucket, (key, row)


class AssembleRecords(beam.PTransform):
    """{'codes': (id, (k, codes)), 'clips': (id, meta)} -> (bucket, (input key, row)) + ``dead``."""

    def __init__(self, source: str, tokenizer_id: str, decode_settings: str) -> None:
        super().__init__()
        self.args = (source, tokenizer_id, decode_settings)

    def expand(self, inputs: dict[str, beam.PCollection]) -> Any:
        joined = inputs | "JoinCodesAndClips" >> beam.CoGroupByKey()
        return joined | "BuildRecords" >> beam.ParDo(_AssembleFn(*self.args)).with_outputs(DEAD, main=ROWS)
