"""Retrieval-bearing video data: needle frames in haystacks of real video frames, as
``VISION_RECORD`` rows (``lwmkit needle-data --modality video``).

Each example is one vision record: consecutive frames of the vision job's records (the
haystack, ``tokenizers/needle_video.FramePool``), one or more needle frames ("The secret number
is 4821", rendered and tokenized with the same VQGAN) inserted at random depths, and the answer
(every number, in order) as the caption. Why a vision record and not a new record type: the
pack job's ``video_text`` source already formats a record as LWM's understanding chat with
loss on the caption only, and its ``prompt`` option carries the one question every example
asks (``needle_video.QUESTION``) -- so the data flows through ``pack`` unchanged, with no new
field, given ``understanding_share: 1.0`` and that prompt (configs/video-needle-proof/).

Lengths are drawn in ``[min_fill, 1]`` of the most frames a ``seq_len`` chat holds, and each
chat is measured with the pack job's own formatter before it is written, so every example
fits ``seq_len`` exactly as pack counts it. ``far_share`` of the examples fill at least
``far_fill`` of the context with their needles (``far_needles`` of them; 0: all) in its first
``far_depth`` (the longest distances, which uniform depths rarely give). Deterministic in ``seed`` and ``seq_len``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwmkit.needle_data import needle_depths
from lwmkit.pipelines.pack.formatting import format_vision
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import VISION_RECORD, read_table, vision_record_id, write_table
from lwmkit.schemas.strict import require
from lwmkit.schemas.vocab import VocabLayout
from lwmkit.tokenizers.needle_video import (
    QUESTION,
    RESOLUTION,
    FramePool,
    answer_text,
    chat_tokens,
    draw_numbers,
    frames_for_length,
    insert_needles,
    render_needle,
    require_records_vqgan,
)
from lwmkit.tokenizers.text import TextTokenizer


@dataclass(frozen=True)
class VideoNeedleConfig:
    """How many needle videos of which size, and how many needles each."""

    seq_len: int  # the stage length every chat must fit
    examples: int
    needles_min: int = 1
    needles_max: int = 1
    min_fill: float = 0.3  # shortest video as a share of the frames seq_len holds
    seed: int = 0
    source: str = "needle-video"
    far_share: float = 0.0
    far_fill: float = 0.95
    far_depth: float = 0.15
    far_needles: int = 0  # how many of a far video's needles sit in its first far_depth (0: all)

    def __post_init__(self) -> None:
        require(
            self.seq_len >= 600, "seq_len", f"must be >= 600 (two frames and the chat), got {self.seq_len}"
        )
        require(self.examples >= 1, "examples", f"must be >= 1, got {self.examples}")
        require(1 <= self.needles_min <= self.needles_max <= 8, "needles_min",
                f"need 1 <= needles_min <= needles_max <= 8, got {self.needles_min}, {self.needles_max}")  # fmt: skip
        require(0.0 < self.min_fill <= 1.0, "min_fill", f"must lie in (0, 1], got {self.min_fill}")
        require(0.0 <= self.far_share <= 1.0, "far_share", f"must lie in [0, 1], got {self.far_share}")
        require(0.0 < self.far_fill <= 1.0, "far_fill", f"must lie in (0, 1], got {self.far_fill}")
        require(0.0 < self.far_depth <= 1.0, "far_depth", f"must lie in (0, 1], got {self.far_depth}")
        require(self.far_needles >= 0, "far_needles", f"must be >= 0 (0: all of them), got {self.far_needles}")


@dataclass(frozen=True)
class Plan:
    """One example before its needle frames are tokenized."""

    index: int
    numbers: tuple[str, ...]
    depths: tuple[float, ...]
    start: int  # first haystack frame in the pool
    hay_frames: int


def read_pool(paths: list[str], layout: VocabLayout) -> FramePool:
    """The frames of every record in ``paths`` (``VISION_RECORD`` Parquet), videos before images."""
    rows = [r for p in sorted(paths) for r in read_table(p, VISION_RECORD).to_pylist()]
    rows.sort(key=lambda r: (r["kind"] != "video", r["uri"], r["start_s"]))
    return FramePool.from_records(rows, layout.codes_per_frame)


def plan(
    cfg: VideoNeedleConfig, tok: TextTokenizer, layout: VocabLayout, pool_frames: int, index: int
) -> Plan:
    rng = np.random.default_rng([cfg.seed, cfg.seq_len, index])
    k = int(rng.integers(cfg.needles_min, cfg.needles_max + 1))
    numbers = draw_numbers(rng, k)
    most = frames_for_length(tok, layout, cfg.seq_len, answer_text(numbers))
    while k > 1 and most < k + 1:  # a short stage holds fewer needles: every one needs a haystack frame
        k, numbers = k - 1, numbers[:-1]
        most = frames_for_length(tok, layout, cfg.seq_len, answer_text(numbers))
    if most < k + 1:
        raise ContractError(
            f"{cfg.seq_len} tokens cannot hold a needle frame, a haystack frame and the chat", field="seq_len"
        )
    far = cfg.far_share > 0 and np.random.default_rng([cfg.seed, index, 3]).random() < cfg.far_share
    fill = rng.uniform(max(cfg.min_fill, cfg.far_fill), 1.0) if far else rng.uniform(cfg.min_fill, 1.0)
    total = min(most, max(k + 1, int(round(most * fill))))
    depths = np.sort(needle_depths(rng, k, far, cfg.far_depth, cfg.far_needles))  # numbers in order of appearance
    return Plan(
        index, tuple(numbers), tuple(float(d) for d in depths), int(rng.integers(0, pool_frames)), total - k
    )


def needle_codes(numbers: list[str], vqgan) -> dict[str, np.ndarray]:
    """Each distinct number's needle frame, tokenized in one batch: ``{number: codes [per]}``."""
    distinct = sorted(set(numbers))
    if not distinct:
        return {}
    frames = np.stack([render_needle(n, vqgan.config.resolution) for n in distinct])
    return dict(zip(distinct, vqgan.encode(frames), strict=True))


def build_rows(cfg: VideoNeedleConfig, pool: FramePool, tok: TextTokenizer, vqgan) -> list[dict]:
    """Every example as a ``VISION_RECORD`` row, each measured as pack formats it."""
    require_records_vqgan(pool.tokenizer_id, vqgan)
    if vqgan.config.resolution != RESOLUTION:
        raise ContractError(
            f"needle frames are {RESOLUTION}px; the VQGAN takes {vqgan.config.resolution}px", field="vqgan"
        )
    layout = tok.vocab_layout()
    plans = [plan(cfg, tok, layout, len(pool.codes), i) for i in range(cfg.examples)]
    codes_of = needle_codes([n for p in plans for n in p.numbers], vqgan)
    rows = []
    for p in plans:
        frames, _ = insert_needles(
            pool.frames(p.start, p.hay_frames), [codes_of[n] for n in p.numbers], p.depths
        )
        answer = answer_text(p.numbers)
        ids, _, _ = format_vision(
            frames, answer, kind="video", direction="understanding", tok=tok, layout=layout, prompt=QUESTION
        )
        if ids.size > cfg.seq_len or ids.size != chat_tokens(tok, layout, len(frames), answer):
            raise ContractError(
                f"example {p.index}: {ids.size} tokens as packed, planned "
                f"{chat_tokens(tok, layout, len(frames), answer)} <= {cfg.seq_len}",
                field="seq_len",
            )
        rows.append(_row(cfg, pool, p, frames, answer))
    return rows


def _row(cfg: VideoNeedleConfig, pool: FramePool, p: Plan, frames: np.ndarray, answer: str) -> dict:
    uri = f"needle-video://{cfg.source}/{cfg.seq_len}/seed-{cfg.seed}/{p.index:06d}"
    n = len(frames)
    return {
        "id": vision_record_id(uri, 0.0, n / pool.fps),
        "source": cfg.source,
        "uri": uri,
        "kind": "video",
        "caption": answer,
        "fps": pool.fps,
        "start_s": 0.0,
        "end_s": n / pool.fps,
        "n_frames": n,
        "tokens": frames.reshape(-1).astype(np.int16).tolist(),
        "tokenizer_id": pool.tokenizer_id,
        "width": RESOLUTION,
        "height": RESOLUTION,
        "decode_settings": pool.decode_settings,
    }


def write_video_needle_data(
    record_paths: list[str], out_path: str, cfg: VideoNeedleConfig, tok: TextTokenizer, vqgan
) -> int:
    """Write ``cfg.examples`` needle videos as one ``VISION_RECORD`` Parquet file; returns the row count."""
    pool = read_pool(record_paths, tok.vocab_layout())
    rows = build_rows(cfg, pool, tok, vqgan)
    if "://" not in out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, VISION_RECORD, out_path)
    return len(rows)
