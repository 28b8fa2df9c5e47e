"""Needle in a video haystack: the length x depth grid over haystacks of real video frames
(``tokenizers/needle_video.py``), decoded and scored like the text eval (``trainer/needle.py``).

A case is one haystack of F frames (F the most a length-L chat holds, needles included) cut
from the vision records' frames at a random offset, ``needles`` needle frames in it (the first
at the cell's depth, the others at random depths), and one question asking for every number in
the order they appear -- the question and layout the video needle training data uses. Its
reply is correct when every number appears in order; ``found`` records each number (the
per-needle recall of ``needle.json``).
"""

from __future__ import annotations

import time

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.tokenizers.needle_text import Needle
from lwmkit.tokenizers.needle_video import (
    FramePool,
    answer_text,
    chat_tokens,
    draw_numbers,
    frames_for_length,
    insert_needles,
    render_needle,
    require_records_vqgan,
    video_prompt,
)
from lwmkit.tokenizers.text import TextTokenizer
from lwmkit.trainer.needle import NeedleCase, NeedleGrid, NeedleReport, run_cases, score


def _worst_answer(tok: TextTokenizer, needles: int) -> str:
    """The longest answer ``needles`` 4-digit numbers can give (the room every case reserves)."""
    return max((answer_text([str(d) * 4] * needles) for d in range(1, 10)), key=lambda a: len(tok.encode(a)))


def frames_per_length(tok: TextTokenizer, lengths: tuple[int, ...], needles: int) -> list[int]:
    """Frames (needles included) each length's chat holds."""
    layout = tok.vocab_layout()
    return [frames_for_length(tok, layout, n, _worst_answer(tok, needles)) for n in lengths]


def length_of_frames(tok: TextTokenizer, frames: int, needles: int) -> int:
    """The chat length (tokens) of a ``frames``-frame haystack: a grid given in frames."""
    return chat_tokens(tok, tok.vocab_layout(), frames, _worst_answer(tok, needles))


def build_video_cases(pool: FramePool, vqgan, tok: TextTokenizer, grid: NeedleGrid) -> list[NeedleCase]:
    """Every case of the grid, deterministic in ``grid.seed``; needle frames tokenized with
    ``vqgan`` (the one that tokenized the pool's records)."""
    require_records_vqgan(pool.tokenizer_id, vqgan)
    if grid.retrieve != grid.needles:
        raise ValueError(
            f"the video question asks for every needle: retrieve ({grid.retrieve}) must equal "
            f"needles ({grid.needles})"
        )
    layout = tok.vocab_layout()
    worst = len(tok.encode(_worst_answer(tok, grid.needles))) + 1
    plans = []
    for length, n_frames in zip(
        grid.lengths, frames_per_length(tok, grid.lengths, grid.needles), strict=True
    ):
        if n_frames < grid.needles + 1:
            raise ValueError(
                f"context length {length} holds {n_frames} frames: too few for {grid.needles} "
                "needle(s) and a haystack frame"
            )
        for depth in grid.depths:
            for trial in range(grid.trials):
                rng = np.random.default_rng([grid.seed, length, int(depth * 100), trial, 7])
                numbers = draw_numbers(rng, grid.needles)
                depths = [depth / 100.0, *rng.uniform(0.0, 1.0, size=grid.needles - 1)]
                start = int(rng.integers(0, len(pool.codes)))
                plans.append(
                    (length, depth, trial, numbers, depths, pool.frames(start, n_frames - grid.needles))
                )
    distinct = sorted({n for p in plans for n in p[3]})
    codes_of = dict(zip(distinct, vqgan.encode(np.stack([render_needle(n) for n in distinct])), strict=True))
    cases = []
    for length, depth, trial, numbers, depths, hay in plans:
        frames, at = insert_needles(hay, [codes_of[n] for n in numbers], depths)
        order = sorted(range(len(numbers)), key=lambda i: at[i])  # asked in the order they appear
        prompt, vision = video_prompt(tok, layout, frames)
        if len(prompt) + worst > length:  # frames_for_length guarantees this; a changed layout would not
            raise ContractError(
                f"a {len(frames)}-frame prompt of {len(prompt)} tokens overflows {length}", field="lengths"
            )
        cases.append(
            NeedleCase(
                length,
                depth,
                trial,
                Needle("", numbers[0]),
                prompt,
                asked=tuple(numbers[i] for i in order),
                vision=vision,
                frames=tuple(sorted(at)),
                n_frames=len(frames),
                answer_tokens=worst,
            )
        )
    return cases


def evaluate_video(
    model,
    tok: TextTokenizer,
    pool: FramePool,
    vqgan,
    grid: NeedleGrid,
    *,
    mesh=None,
    on_batch=None,
    kv_cache: bool = True,
    cases: list[NeedleCase] | None = None,
) -> NeedleReport:
    """The video grid through greedy decoding (``cases``: those :func:`build_video_cases` made
    for this grid, if already built); a ``NeedleReport`` with ``modality="video"``."""
    if not model.config.vision_vocab_size:
        raise ContractError(
            "the model has no vision vocabulary (vision_vocab_size 0): it cannot read video",
            field="vision_vocab_size",
            source=model.path,
        )
    t0 = time.perf_counter()
    cases = run_cases(
        model,
        tok,
        cases or build_video_cases(pool, vqgan, tok, grid),
        grid,
        mesh=mesh,
        on_batch=on_batch,
        kv_cache=kv_cache,
    )
    return NeedleReport(
        list(grid.lengths),
        list(grid.depths),
        score(cases, grid),
        cases,
        checkpoint=model.path,
        stage=model.stage,
        trained_seq_len=model.seq_len,
        needles=grid.needles,
        retrieve=grid.retrieve,
        seconds=time.perf_counter() - t0,
        digit_accuracy=score(cases, grid, "digits"),
        modality="video",
        frames=frames_per_length(tok, grid.lengths, grid.needles),
    )
