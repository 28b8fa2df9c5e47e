"""Video needle eval: prompts in the pack job's understanding layout, each needle frame's VQGAN
codes at its depth, multi-needle scoring with per-needle recall, and the CLI end to end on a
randomly initialised vision model (its score is ~0: the test checks the machinery)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lwmkit.needle_video_data import read_pool
from lwmkit.schemas import ModelConfig
from lwmkit.tokenizers import vqgan as vq
from lwmkit.tokenizers.needle_text import Haystack, Needle
from lwmkit.tokenizers.needle_video import prompt_head, render_needle
from lwmkit.tokenizers.text import TextTokenizer
from lwmkit.tokenizers.vision_layout import find_blocks, split_frames
from lwmkit.trainer.needle import NeedleCase, NeedleGrid, NeedleReport, build_cases, recall_by_needle
from lwmkit.trainer.needle_video import build_video_cases, frames_per_length, length_of_frames

TINY_VISION = ModelConfig(text_vocab_size=8000, vision_vocab_size=8448, d_model=32, n_layers=2, n_heads=2,
                          mlp_dim=64, attention_block=64, loss_chunk=64)  # fmt: skip


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.fixture(scope="module")
def vqgan():
    return vq.load()


def test_cases_hold_needle_codes_at_their_depth(vision_records: list[str], tok: TextTokenizer, vqgan):
    layout = tok.vocab_layout()
    pool = read_pool(vision_records, layout)
    lengths = tuple(length_of_frames(tok, f, 3) for f in (5, 9))
    assert frames_per_length(tok, lengths, 3) == [5, 9]
    grid = NeedleGrid(lengths, (0.0, 50.0, 100.0), trials=2, needles=3, retrieve=3)
    cases = build_video_cases(pool, vqgan, tok, grid)
    assert len(cases) == 2 * 3 * 2
    head = prompt_head(tok)
    for c in cases:
        assert len(c.prompt) + c.answer_tokens <= c.length and c.prompt[: len(head)] == head
        ((start, end),) = find_blocks(np.asarray(c.vision))
        frames = split_frames(np.asarray(c.prompt[start:end]), layout)
        assert len(frames) == c.n_frames == (5 if c.length == lengths[0] else 9)
        needles = vqgan.encode(np.stack([render_needle(n) for n in c.asked]))
        at = [int(np.flatnonzero((frames == code).all(axis=1))[0]) for code in needles]
        assert at == sorted(at) == list(c.frames)  # asked in the order they appear
        first = c.asked.index(c.needle.number)  # the needle at the cell's depth
        assert at[first] == round(c.depth / 100 * (c.n_frames - 3)) + sum(a < at[first] for a in at)
    assert cases == build_video_cases(pool, vqgan, tok, grid)  # deterministic
    with pytest.raises(ValueError, match="retrieve"):
        build_video_cases(pool, vqgan, tok, NeedleGrid(lengths, needles=2, retrieve=1))


def test_multi_needle_scoring_and_recall_by_needle(botchan: str, tok: TextTokenizer):
    c = NeedleCase(1024, 0.0, 0, Needle("", "4821"), [1], asked=("4821", "1357", "2468"))
    c.score("The secret numbers are 4821, 2468.")
    assert c.found == [True, False, True] and not c.correct
    c.score("The secret numbers are 1357, 4821, 2468.")
    assert c.found == [True, True, True] and not c.correct  # all there, out of order
    c.score("4821 1357 2468")
    assert c.correct and c.digits == 1.0
    d = NeedleCase(1024, 0.0, 1, Needle("", "4821"), [1], asked=("4821", "1357", "2468"))
    d.score("4821 9999")
    assert recall_by_needle([c, d], 3) == [1.0, 0.5, 0.5]
    # text: each asked needle is its own case; recall of needle k pools the cases asking it
    grid = NeedleGrid((256,), (0.0, 100.0), trials=2, needles=3, retrieve=2)
    cases = build_cases(Haystack(botchan, tok), grid)
    assert [c.needle_index for c in cases] == [0, 1] * 4
    for c in cases:
        c.score(f"is: {c.needle.number}" if c.needle_index == 0 else "no idea")
    report = NeedleReport([256], [0.0, 100.0], [[1.0, 1.0]], cases, needles=3, retrieve=2)
    s = report.summary()
    assert (
        s["recall_by_needle"] == [1.0, 0.0] and s["recall"] == [[0.5, 0.5]] and s["cell_counts"] == [[4, 4]]
    )
    assert s["modality"] == "text"


def _vision_checkpoint(root: Path, tok: TextTokenizer, **model: int) -> Path:
    """A real trainer checkpoint of a tiny vision model (random weights; ``model`` overrides fields)."""
    from dataclasses import replace

    from lwmkit.schemas import CheckpointConfig, StageConfig, TrainConfig
    from lwmkit.trainer.convert_checkpoint import write_checkpoint
    from lwmkit.trainer.model import init_params

    stage = StageConfig(name="v2k", seq_len=2048, rope_theta=10000.0, data="unused", steps=1, batch_size=1)
    config = replace(TINY_VISION, **model)
    cfg = TrainConfig(model=config, stages=(stage,), checkpoint=CheckpointConfig(dir=str(root)))
    params = init_params(config, jax.random.PRNGKey(0))
    write_checkpoint(
        str(root), cfg, params, [{"stage": "v2k", "tokenizer_id": tok.id}], note="random init", step=1
    )
    return root / "v2k"


def test_eval_cli_video_end_to_end(tmp_path: Path, vision_records: list[str], tok: TextTokenizer, capsys):
    from lwmkit.cli import main

    ckpt = _vision_checkpoint(tmp_path / "ck", tok)
    out = tmp_path / "eval"
    records = str(Path(vision_records[0]).parent / "*.parquet")
    main(
        [
            "eval",
            "needle",
            "--modality",
            "video",
            "--checkpoint",
            str(ckpt),
            "--records",
            records,
            "--frames",
            "3,6",
            "--depths",
            "0,100",
            "--trials",
            "2",
            "--needles",
            "2",
            "--retrieve",
            "2",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    s = json.loads((out / "needle.json").read_text())
    assert s["modality"] == "video" and s["frames"] == [3, 6] and s["needles"] == s["retrieve"] == 2
    assert s["lengths"] == [length_of_frames(tok, f, 2) for f in (3, 6)] and s["cases"] == 8
    assert s["cell_counts"] == [[2, 2], [2, 2]] and len(s["recall_by_needle"]) == 2
    assert all(0.0 <= a <= 1.0 for row in s["accuracy"] + s["recall"] for a in row)
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["asked"]) == len(r["found"]) == 2 for r in rows)
    assert all(r["prompt_tokens"] < r["length"] and r["n_frames"] in (3, 6) for r in rows)
    for name in ("needle_heatmap.png", "needle_digits_heatmap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a text-only model cannot read video; video without its records: one clear error each
    text_only = _vision_checkpoint(tmp_path / "ck-text", tok, vision_vocab_size=0)
    with pytest.raises(SystemExit) as err:
        main(["eval", "needle", "--modality", "video", "--checkpoint", str(text_only), "--records", records,
              "--frames", "3", "--depths", "0", "--trials", "1", "--out", str(tmp_path / "t")])  # fmt: skip
    assert err.value.code == 2 and "no vision vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(
            ["eval", "needle", "--checkpoint", str(ckpt), "--modality", "video", "--out", str(tmp_path / "o")]
        )
    assert err.value.code == 2  # --records missing
