"""Book reading policy and token-budget chunking (pipelines/books/chunking.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwmkit.pipelines.books.chunking import (
    BookError,
    ReadPolicy,
    chunk_text,
    clean_book,
    decode_text,
    strip_gutenberg,
)
from lwmkit.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.load()


def _content(s: str) -> str:
    return re.sub(r"\s+", "", s)


def test_decode_policy():
    assert decode_text("\ufeffa\r\nb\rc".encode()) == "a\nb\nc"
    rare = b"x" * 5000 + b"\xff" + b"y" * 5000
    assert decode_text(rare).count("\ufffd") == 1
    with pytest.raises(BookError, match="policy: strict"):
        decode_text(rare, ReadPolicy(errors="strict"))
    with pytest.raises(BookError, match="binary or not UTF-8"):
        decode_text("café crème".encode("latin-1"))
    with pytest.raises(BookError, match="NUL byte at offset 3"):
        decode_text(b"abc\x00def")
    assert decode_text("naïve — “quoted”".encode()) == "naïve — “quoted”"  # real multibyte text is fine
    with pytest.raises(ValueError, match="errors"):
        ReadPolicy(errors="ignore")


def test_gutenberg_header_and_footer_are_stripped_from_botchan(botchan):
    text = clean_book(botchan.encode())
    assert text.startswith("Produced by David Starner")
    assert "PROJECT GUTENBERG" not in text.upper().replace("PROJECT GUTENBERG-TM", "")
    assert "FULL LICENSE" not in text and len(text) > 0.8 * len(botchan) - 20000
    kept = clean_book(botchan.encode(), ReadPolicy(strip_gutenberg=False))
    assert kept.startswith("Project Gutenberg's Botchan")


def test_strip_gutenberg_variants_and_plain_text():
    old = "Header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nBody.\nEnd of the Project Gutenberg EBook of X\nLicence"
    assert strip_gutenberg(old).strip() == "Body."
    assert strip_gutenberg("Just a story. No markers.") == "Just a story. No markers."
    with pytest.raises(BookError, match="empty book"):
        clean_book(
            "*** START OF THIS PROJECT GUTENBERG EBOOK Y ***\n\n*** END OF THIS PROJECT GUTENBERG EBOOK Y ***"
        )
    with pytest.raises(BookError, match="NUL"):
        clean_book("text\x00more")


def test_botchan_chunks_respect_the_budget_and_cover_the_book(botchan, tok):
    text = clean_book(botchan.encode())
    chunks = chunk_text(text, tok, 1000)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.n_tokens == tok.count(c.text) <= 1000 for c in chunks)
    assert sum(c.n_tokens for c in chunks) >= 0.99 * tok.count(text)  # nothing dropped
    assert _content("".join(c.text for c in chunks)) == _content(text)
    assert sum(c.n_tokens >= 900 for c in chunks) >= 0.9 * (len(chunks) - 1)  # chunks are full
    # Every chunk but the last ends a sentence (botchan has no paragraph breaks).
    assert all(re.search(r"[.!?][\"')\]]*$", c.text) for c in chunks[:-1])
    assert chunk_text(text, tok, 1000) == chunks  # deterministic


def test_paragraph_ends_are_preferred_when_the_chunk_is_half_full(tok):
    para = "The cat sat on the mat. " * 6
    text = f"{para.strip()}\n\n{para.strip()}\n\n{para.strip()}"
    n_para = tok.count(para.strip())
    chunks = chunk_text(text, tok, int(n_para * 1.7))
    assert len(chunks) == 3 and all(c.text == para.strip() for c in chunks)


def test_overlong_sentences_and_words_are_cut(tok):
    words = " ".join(f"word{i}" for i in range(200))  # one sentence, far over budget
    chunks = chunk_text(words, tok, 40)
    assert len(chunks) > 1 and all(c.n_tokens <= 40 for c in chunks)
    assert _content("".join(c.text for c in chunks)) == _content(words)
    blob = "x9" * 500  # one "word" over budget: cut between characters
    chunks = chunk_text(blob, tok, 30)
    assert all(c.n_tokens <= 30 for c in chunks) and "".join(c.text for c in chunks) == blob
    with pytest.raises(ValueError, match="budget"):
        chunk_text("a", tok, 0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60
        ),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.sampled_from([". ", "! ", "? ", "\n\n", " ", "\n"]), min_size=30, max_size=30),
    st.integers(min_value=8, max_value=80),  # one character can cost 5 tokens (byte fallback)
)
def test_any_text_chunks_within_budget_without_loss(pieces, seps, budget):
    tok = TextTokenizer.load()
    text = "".join(p + s for p, s in zip(pieces, seps, strict=False)).strip()
    if not text:
        return
    chunks = chunk_text(text, tok, budget)
    assert all(c.n_tokens == tok.count(c.text) and c.n_tokens <= budget for c in chunks)
    assert _content("".join(c.text for c in chunks)) == _content(text)


def test_encodings_and_replaced_byte_counts():
    from lwmkit.pipelines.books.chunking import decode_counted, read_book

    latin = "Café crème, naïve façade — 50 €".encode("cp1252")
    assert decode_counted(latin, ReadPolicy(encoding="cp1252")) == ("Café crème, naïve façade — 50 €", 0)
    assert decode_counted(latin, ReadPolicy(encoding="auto"))[0] == "Café crème, naïve façade — 50 €"
    assert decode_counted("Grüße".encode(), ReadPolicy(encoding="auto")) == ("Grüße", 0)
    assert decode_counted("Café".encode("latin-1"), ReadPolicy(encoding="latin-1")) == ("Café", 0)
    rare = b"x" * 5000 + b"\xff\xfe" + b"y" * 5000  # one bad sequence of two bytes
    assert decode_counted(rare)[1] == 2
    assert read_book(rare) == (decode_text(rare).strip(), 2)
    with pytest.raises(ValueError, match="unknown encoding"):
        ReadPolicy(encoding="klingon")
