from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from lwmkit.schemas import ContractError
from lwmkit.tokenizers.text import VISION_END, VISION_START, TextTokenizer, default_model_path


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


def test_default_is_shipped_and_small(tok):
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 500_000
    assert tok.vocab_size == 8000 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert len(tok.id) == 64


def test_default_round_trips_the_sample_book(tok, botchan):
    ids = tok.encode(botchan)
    assert 1 not in ids and 2 not in ids  # no automatic BOS/EOS (LWM inserts BOS explicitly)
    assert tok.decode(ids) == unicodedata.normalize("NFC", botchan) or tok.decode(ids) == botchan
    assert len(ids) < len(botchan) / 3  # a real subword model, not bytes


def test_vision_markers_are_plain_text(tok):
    assert tok.decode(tok.vision_start_ids) == VISION_START
    assert tok.decode(tok.vision_end_ids) == VISION_END
    assert tok.encode(f"a {VISION_START}")[-1] == tok.vision_start_ids[-1]
    layout = tok.vocab_layout()
    assert layout.vision_start_ids == tok.vision_start_ids and layout.end_of_vision_id == 8193


def test_unicode_and_digits_survive(tok):
    text = "Naïve café — 東京 1234567 emoji 🎉"
    assert tok.decode(tok.encode(text)) == text  # byte fallback: nothing becomes <unk>
    assert 0 not in tok.encode(text)


def test_cli_trains_on_the_sample_book(tmp_path, sample_dir):
    out = tmp_path / "tok"
    book = sample_dir / "books" / "botchan.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "lwmkit.cli", "tokenizer", "train", str(book), "--out", str(out), "--vocab-size", "2000"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tok = TextTokenizer.load(out.with_suffix(".model"))
    assert tok.vocab_size == 2000
    text = book.read_text(encoding="utf-8")[:20000]
    assert tok.decode(tok.encode(text)) == text


def test_bad_model_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ContractError, match="bad.model: is not a SentencePiece model"):
        TextTokenizer.load(bad)
    with pytest.raises(ContractError, match="tokenizer model not found"):
        TextTokenizer.load(tmp_path / "missing.model")
