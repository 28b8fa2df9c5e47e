"""Needle training data: valid BOOK_CHUNK rows whose haystacks the pack job's book_qa_chat
formatting turns into one chat each, within the stage length, loss on the answers only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lwmkit.needle_data import (
    REPEAT_QUESTION,
    NeedleDataConfig,
    haystack_rows,
    needle_depths,
    write_needle_data,
)
from lwmkit.pipelines.pack.formatting import book_chat_examples
from lwmkit.schemas.mixture import SourceConfig
from lwmkit.schemas.records import BOOK_CHUNK, read_table
from lwmkit.tokenizers.needle_text import Haystack
from lwmkit.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.mark.parametrize("seq_len,chunk_tokens", [(256, 1000), (2048, 500)])
def test_each_haystack_is_one_chat_within_seq_len(botchan: str, tok: TextTokenizer, seq_len: int, chunk_tokens: int):
    hay = Haystack(botchan, tok)
    cfg = NeedleDataConfig(seq_len=seq_len, examples=12, needles_max=3, chunk_tokens=chunk_tokens, seed=1)
    source = SourceConfig(name="needles", kind="book_qa_chat", path="x", weight=1.0)
    for i in range(cfg.examples):
        rows = haystack_rows(hay, cfg, i)
        assert len({r["book_id"] for r in rows}) == 1
        if seq_len >= 2 * chunk_tokens:
            assert sum(r["n_tokens"] for r in rows) > chunk_tokens * 0.3 * len(rows) - chunk_tokens
        examples = book_chat_examples(source, rows, tok, seq_len)
        assert len(examples) == 1, [r["n_tokens"] for r in rows]
        ex = examples[0]
        assert ex.n_tokens <= seq_len
        qa = [p for r in rows for p in r["qa"]]
        assert 1 <= len(qa) <= 3
        # the loss-bearing tokens are exactly the answers (needle sentences) and their EOS
        answer_ids = ex.ids[ex.loss]
        assert int((answer_ids == tok.eos_id).sum()) == len(qa)
        text = tok.decode([t for t in answer_ids if t != tok.eos_id])
        for p in qa:
            assert p["answer"] in text and p["answer"] in " ".join(r["text"] for r in rows)
            assert p["question"].startswith("What is the special magic")


def test_write_is_deterministic_and_valid(tmp_path: Path, botchan: str, tok: TextTokenizer):
    cfg = NeedleDataConfig(seq_len=512, examples=5)
    a, b = tmp_path / "a" / "n.parquet", tmp_path / "b" / "n.parquet"
    assert write_needle_data(botchan, str(a), cfg, tok) == write_needle_data(botchan, str(b), cfg, tok)
    ta, tb = read_table(str(a), BOOK_CHUNK), read_table(str(b), BOOK_CHUNK)
    assert ta.equals(tb)
    rows = ta.to_pylist()
    assert all(r["tokenizer_id"] == tok.id and r["model"] == "lwmkit-needles" for r in rows)
    lengths = [sum(r["n_tokens"] for r in rows if r["book_id"] == b) for b in {r["book_id"] for r in rows}]
    assert np.ptp(lengths) > 0  # haystack lengths vary within the stage


@pytest.mark.parametrize("seq_len", [256, 4096])
def test_repeat_tasks_copy_their_passage_within_seq_len(botchan: str, tok: TextTokenizer, seq_len: int):
    hay = Haystack(botchan, tok)
    cfg = NeedleDataConfig(seq_len=seq_len, examples=40, needles_max=1, repeat_share=0.5, seed=3)
    source = SourceConfig(name="needles", kind="book_qa_chat", path="x", weight=1.0)
    kinds = []
    for i in range(cfg.examples):
        rows = haystack_rows(hay, cfg, i)
        repeat = any(p["question"] == REPEAT_QUESTION for r in rows for p in r["qa"])
        kinds.append(repeat)
        (ex,) = book_chat_examples(source, rows, tok, seq_len)
        assert ex.n_tokens <= seq_len
        if repeat:
            (row,) = rows
            assert row["qa"][0]["answer"] == row["text"] and "/repeat-" not in row["book_id"]
            # the loss-bearing tokens are the passage, token for token, then EOS
            assert ex.ids[ex.loss].tolist() == [*tok.encode(row["text"]), tok.eos_id]
            assert row["n_tokens"] > 0
    assert 10 <= sum(kinds) <= 30  # about half, drawn per example from the seed


def test_far_needles_fill_the_context_and_sit_near_its_start(botchan: str, tok: TextTokenizer):
    seq_len = 2048
    hay = Haystack(botchan, tok)
    source = SourceConfig(name="needles", kind="book_qa_chat", path="x", weight=1.0)
    near = NeedleDataConfig(seq_len=seq_len, examples=12, needles_max=1, seed=5)
    far = NeedleDataConfig(seq_len=seq_len, examples=12, needles_max=1, seed=5, far_share=1.0)
    edge = NeedleDataConfig(seq_len=seq_len, examples=12, needles_max=1, seed=5, far_share=1.0, far_fill=0.99,
                            far_depth=0.03)
    distances, lengths = {}, {}
    for name, cfg in (("near", near), ("far", far), ("edge", edge)):
        lengths[name] = []
        distances[name] = []
        for i in range(cfg.examples):
            rows = haystack_rows(hay, cfg, i)
            (ex,) = book_chat_examples(source, rows, tok, seq_len)
            assert ex.n_tokens <= seq_len
            (needle,) = [p["answer"] for r in rows for p in r["qa"]]
            ids = ex.ids.tolist()
            digits = tok.encode(needle.split(": ")[1])
            at = next(j for j in range(len(ids)) if ids[j:j + len(digits)] == digits)  # in the haystack
            question = int(np.flatnonzero(ex.loss)[0])  # the answer starts right after the question
            distances[name].append(question - at)
            lengths[name].append(ex.n_tokens)
    # far needles fill the context (but for the slack kept for the tokenizer's joins, and whole
    # sentences) with the needle near the start; --far-fill/--far-depth move them to the very edge
    assert min(lengths["far"]) >= 0.9 * seq_len and min(distances["far"]) >= 0.75 * seq_len
    assert min(lengths["edge"]) >= 0.93 * seq_len and min(distances["edge"]) >= 0.9 * seq_len
    assert np.mean(distances["edge"]) > np.mean(distances["far"])
    # far needles are what uniform depths and lengths rarely give: the longest distances
    assert min(distances["far"]) > np.median(distances["near"])
    # far_share 0 leaves the data as it was
    assert haystack_rows(hay, near, 3) == haystack_rows(hay, NeedleDataConfig(seq_len=seq_len, examples=12,
                                                                             needles_max=1, seed=5, far_share=0.0), 3)


def test_far_needles_sends_only_that_many_to_the_start(botchan: str, tok: TextTokenizer):
    """--far-needles 1: one needle of a far haystack sits at its very start, the others anywhere
    (as the multi-needle eval places them); 0 (the default) keeps every needle at the start."""
    hay = Haystack(botchan, tok)
    spec = dict(seq_len=2048, examples=10, needles_min=4, needles_max=4, seed=3, far_share=1.0, far_fill=0.99,
                far_depth=0.02)
    near_start = {}
    for far_needles in (0, 1):
        cfg = NeedleDataConfig(**spec, far_needles=far_needles)
        counts = []
        for i in range(cfg.examples):
            rows = haystack_rows(hay, cfg, i)
            text = "".join(r["text"] for r in rows)
            answers = [p["answer"] for r in rows for p in r["qa"]]
            assert len(answers) == 4
            counts.append(sum(text.index(a) < 0.1 * len(text) for a in answers))  # the needles' own text pushes them on
        near_start[far_needles] = counts
    assert near_start[0] == [4] * 10
    assert all(n >= 1 for n in near_start[1]) and sum(near_start[1]) <= 20  # ~1 each; a spread one may land there


def test_needle_depths_keep_the_old_draws_by_default():
    def draw(*args):
        return needle_depths(np.random.default_rng(7), *args)

    old = np.random.default_rng(7)
    assert np.array_equal(draw(4, True, 0.1), old.uniform(0.0, 0.1, size=4))  # data made before the option
    assert np.array_equal(draw(4, True, 0.1, 4), draw(4, True, 0.1))  # as many as there are: all
    assert np.array_equal(draw(3, False, 0.1, 1), np.random.default_rng(7).uniform(0.0, 1.0, size=3))
    some = draw(4, True, 0.1, 2)
    assert (some[:2] <= 0.1).all() and np.array_equal(some[2:], np.random.default_rng(7).uniform(0, 1, 4)[2:])


def test_config_is_validated():
    with pytest.raises(ValueError, match="far_needles"):
        NeedleDataConfig(seq_len=512, examples=1, far_needles=-1)
    with pytest.raises(ValueError, match="far_share"):
        NeedleDataConfig(seq_len=512, examples=1, far_share=-0.1)
    with pytest.raises(ValueError, match="far_fill"):
        NeedleDataConfig(seq_len=512, examples=1, far_fill=1.2)
    with pytest.raises(ValueError, match="far_depth"):
        NeedleDataConfig(seq_len=512, examples=1, far_depth=0.0)
    with pytest.raises(ValueError, match="repeat_share"):
        NeedleDataConfig(seq_len=512, examples=1, repeat_share=1.5)
    with pytest.raises(ValueError, match="needles_min"):
        NeedleDataConfig(seq_len=512, examples=1, needles_min=3, needles_max=2)
    with pytest.raises(ValueError, match="seq_len"):
        NeedleDataConfig(seq_len=16, examples=1)


def test_cli_far_needles(tmp_path: Path, capsys):
    """`lwmkit needle-data --far-needles`: passed through to the data (other rows than the default's) and named
    in the progress line; a negative count is refused by name."""
    from lwmkit.cli import main

    def run(*extra: str) -> list[dict]:
        out = tmp_path / f"n{len(list(tmp_path.iterdir()))}.parquet"
        main(["needle-data", "--seq-len", "1024", "--examples", "3", "--needles-min", "3", "--needles-max", "3",
              "--far-share", "1", "--out", str(out), *extra])
        return read_table(str(out), BOOK_CHUNK).to_pylist()

    every = run()
    capsys.readouterr()
    one = run("--far-needles", "1")
    said = capsys.readouterr()
    assert "1 needle(s) at depth <= 0.15" in said.err + said.out
    assert every != one and every == run("--far-needles", "0")
    with pytest.raises(SystemExit) as err:
        run("--far-needles", "-1")
    assert err.value.code == 2 and "far_needles" in capsys.readouterr().err
