"""Needle eval: haystacks at exact token budgets, greedy decoding equal to a naive loop (with
left padding), exact-retrieval scoring, heatmap, and the CLI on a checkpoint with the
sequence sharded (ring attention) giving the same replies as one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.schemas import ModelConfig
from lwmkit.tokenizers.needle_text import Haystack, Needle, draw_needles
from lwmkit.tokenizers.text import TextTokenizer
from lwmkit.trainer.generate import LoadedModel, greedy_generate, left_pad
from lwmkit.trainer.model import LWMModel, init_params
from lwmkit.trainer.needle import (
    NeedleGrid,
    NeedleReport,
    _trials,
    answer_budget,
    build_cases,
    digit_score,
    is_correct,
    plot_heatmap,
    score,
)

TINY = ModelConfig(text_vocab_size=8000, vision_vocab_size=0, d_model=32, n_layers=2, n_heads=2, mlp_dim=64,
                   attention_block=64, loss_chunk=64)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.fixture(scope="module")
def hay(botchan: str, tok: TextTokenizer) -> Haystack:
    return Haystack(botchan, tok)


def test_document_fits_budget_and_places_needles_by_depth(hay: Haystack, tok: TextTokenizer):
    rng = np.random.default_rng(0)
    needles = draw_needles(rng, 3)
    assert len({n.city for n in needles}) == 3 and all(len(n.number) == 7 for n in needles)
    doc = hay.document(1000, needles, [0.0, 0.5, 1.0], start=200)
    n = len(tok.encode(doc))
    assert 900 <= n <= 1000
    at = [doc.index(x.sentence) / len(doc) for x in needles]
    assert at[0] < 0.02 and abs(at[1] - 0.5) < 0.05 and at[2] > 0.95
    assert doc == hay.document(1000, needles, [0.0, 0.5, 1.0], start=200)  # deterministic


def test_cases_fill_their_length_and_hold_their_needle(hay: Haystack, tok: TextTokenizer):
    grid = NeedleGrid(lengths=(256, 1024), depths=(0.0, 50.0, 100.0), trials=2, needles=3, retrieve=2)
    cases = build_cases(hay, grid)
    assert len(cases) == 2 * 3 * 2 * 2
    for c in cases:
        total = len(c.prompt) + answer_budget(tok, c.needle)
        assert 0.85 * c.length <= total <= c.length, (c.length, total)
        text = tok.decode(c.prompt)
        assert c.needle.sentence in text and c.needle.question in text
        assert c.prompt[0] == tok.bos_id and text.rstrip().endswith("ASSISTANT:")
    assert [c.prompt for c in cases] == [c.prompt for c in build_cases(hay, grid)]
    with pytest.raises(ValueError):
        NeedleGrid(lengths=(256,), needles=1, retrieve=2)


def test_scoring_and_heatmap(tmp_path: Path, hay: Haystack):
    needle = Needle("Paris", "1234567")
    assert is_correct("The special magic Paris number is: 1234567.", needle)
    assert not is_correct("The special magic Paris number is: 1234568.", needle)
    assert digit_score("The special magic Paris number is: 1234567.", needle) == 1.0
    assert digit_score("is: 1234000", needle) == pytest.approx(4 / 7)
    assert digit_score("no digits", needle) == 0.0
    grid = NeedleGrid(lengths=(256, 512), depths=(0.0, 100.0), trials=1)
    cases = build_cases(hay, grid)
    for c in cases:
        c.correct = c.length == 256
    acc = score(cases, grid)
    assert acc == [[1.0, 1.0], [0.0, 0.0]]
    report = NeedleReport([256, 512], [0.0, 100.0], acc, cases, stage="s", trained_seq_len=256)
    plot_heatmap(report, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.overall == 0.5
    assert _trials(report).tolist() == [[1, 1], [1, 1]]  # printed in each cell as n=1
    # trained at the largest length: the dashed line sits on the border, so the legend names it
    import matplotlib.pyplot as plt

    seen = []
    real_savefig = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (seen.append(fig.axes[0].get_legend()), real_savefig(fig, *a, **k))[1]
    try:
        plot_heatmap(NeedleReport([256, 512], [0.0, 100.0], acc, cases, stage="s", trained_seq_len=512), str(tmp_path / "w.png"))
    finally:
        plt.Figure.savefig = real_savefig
    (legend,) = seen
    assert [t.get_text() for t in legend.get_texts()] == ["trained context 512, every column within it"]


def _naive_greedy(config: ModelConfig, params, prompt: list[int], n: int, width: int = 32) -> list[int]:
    """Reference: no left padding, no segments: the sequence right-padded to a fixed width (causal
    attention never looks right), full logits, argmax at the last real position."""
    net = LWMModel(config, 10000.0)

    @jax.jit
    def logits_at(ids, last):
        x = ids[None]
        text, _ = net.apply({"params": params}, x, jnp.zeros_like(x, bool), jnp.arange(width)[None],
                            jnp.ones_like(x), method=LWMModel.logits)
        return jnp.argmax(text[0, last])

    ids = list(prompt)
    for _ in range(n):
        buf = jnp.asarray(ids + [0] * (width - len(ids)), jnp.int32)
        ids.append(int(logits_at(buf, len(ids) - 1)))
    return ids[len(prompt):]


def test_greedy_generate_matches_naive_loop_despite_left_padding():
    params = init_params(TINY, jax.random.PRNGKey(3))
    model = LoadedModel(params, TINY, 10000.0, "s", 256, None, "mem", 0)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 8000, size=n).tolist() for n in (21, 9)]
    got = greedy_generate(model, prompts, max_new=4, eos_id=2, pad_id=0, block=32)
    for prompt, reply in zip(prompts, got, strict=True):
        want = _naive_greedy(TINY, params, prompt, 4)
        if 2 in want:
            want = want[: want.index(2)]
        assert reply == want


def test_left_pad_layout():
    ids, seg, pos, end = left_pad([[5, 6, 7], [9]], 6, 0)
    assert end == 3
    assert ids.tolist() == [[5, 6, 7, 0, 0, 0], [0, 0, 9, 0, 0, 0]]
    assert seg.tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]


def _save_checkpoint(root: Path, tok: TextTokenizer) -> Path:
    """A real trainer checkpoint (random weights), written the way the trainer writes one."""
    from lwmkit.schemas import CheckpointConfig, StageConfig, TrainConfig
    from lwmkit.trainer.convert_checkpoint import write_checkpoint

    model = ModelConfig(**{**TINY.__dict__, "attention_block": 64})
    stage = StageConfig(name="s256", seq_len=256, rope_theta=10000.0, data="unused", steps=1, batch_size=1)
    cfg = TrainConfig(model=model, stages=(stage,), checkpoint=CheckpointConfig(dir=str(root)))
    params = init_params(model, jax.random.PRNGKey(0))
    write_checkpoint(str(root), cfg, params, [{"stage": "s256", "tokenizer_id": tok.id}], note="random init", step=1)
    return root / "s256"


@pytest.mark.slow
def test_eval_cli_single_device_and_ring_agree(tmp_path: Path, tok: TextTokenizer):
    """One device (cached), the sequence over 2 devices with the cache sharded by slots, and
    the same mesh with a full ring-attention pass per token: the same replies."""
    ckpt = _save_checkpoint(tmp_path / "ck", tok)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    outs = {}
    for sp, cache in ((1, "--kv-cache"), (2, "--kv-cache"), (2, "--no-kv-cache")):
        out = tmp_path / f"eval-sp{sp}{cache}"
        cmd = [sys.executable, "-m", "lwmkit.cli", "eval", "needle", "--checkpoint", str(ckpt), "--lengths", "192",
               "--depths", "0,100", "--trials", "1", "--batch-size", "2", "--out", str(out), "--sequence-parallel", str(sp),
               cache]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "needle.json").read_text())
        assert summary["lengths"] == [192] and len(summary["accuracy"][0]) == 2 and summary["cases"] == 2
        assert summary["trained_seq_len"] == 256 and summary["stage"] == "s256"
        assert (out / "needle_heatmap.png").stat().st_size > 1000
        outs[sp, cache] = [json.loads(line)["reply"] for line in (out / "cases.jsonl").read_text().splitlines()]
    assert outs[1, "--kv-cache"] == outs[2, "--kv-cache"] == outs[2, "--no-kv-cache"], outs


def test_eval_cli_refuses_a_foreign_tokenizer(tmp_path: Path, tok: TextTokenizer):
    from lwmkit.cli import main

    ckpt = _save_checkpoint(tmp_path / "ck", tok)
    bogus = tmp_path / "tok.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(SystemExit) as err:
        main(["eval", "needle", "--checkpoint", str(ckpt), "--tokenizer", str(bogus), "--out", str(tmp_path / "o")])
    assert err.value.code == 2
