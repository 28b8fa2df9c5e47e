"""Reading books and cutting them into token-budget chunks.

Policy, in order:

1. **Decode** bytes as UTF-8, or the ``encoding`` named (``latin-1``, ``cp1252``, any Python
   codec), or ``auto`` (UTF-8 when the bytes are UTF-8, else cp1252, the superset of Latin-1
   that Western European text files use); a leading BOM is dropped, ``\\r\\n`` and ``\\r``
   become ``\\n``. Undecodable bytes are replaced with U+FFFD as long as they are rare
   (``max_bad_bytes_fraction``) and counted (:func:`read_book`; the job reports them per
   book); more than that, or any NUL byte, means the input is not a text book and
   :class:`BookError` says why (the job dead-letters it). ``errors="strict"`` refuses any bad
   byte instead.
2. **Strip Project Gutenberg boilerplate**: text before the ``*** START OF ... ***`` line and
   from the ``*** END OF ... ***`` line (or the older ``End of [the] Project Gutenberg``
   line) on. Books without those markers are kept whole.
3. **Chunk** by the text tokenizer into chunks of at most ``budget`` tokens each. Cuts fall
   on sentence ends; a paragraph end (a blank line) is preferred when one lies in the last
   half of the chunk. A sentence longer than the budget is cut between words, a word
   longer than that between characters. Every chunk's ``n_tokens`` is the exact token
   count of its text and never exceeds the budget.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

NUL = "\x00"
_START = re.compile(r"^\*{3}\s*START OF (?:THE |THIS )?PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(
    r"^(?:\*{3}\s*END OF (?:THE |THIS )?PROJECT GUTENBERG.*|End of (?:the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE,
)
# A sentence ends at . ! ? (or an ellipsis), optionally followed by closing quotes/brackets,
# then whitespace. Abbreviations ("Mr. Natsume") cause an early cut, which is harmless:
# the cut only has to be at *a* boundary a reader would accept.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"\S+")
_ESCAPED = re.compile("[\udc80-\udcff]")


class BookError(ValueError):
    """An input that is not a usable book (binary, empty, badly encoded); the job dead-letters it."""


class Counter(Protocol):
    def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class ReadPolicy:
    """How bytes become book text.

    errors: ``"replace"`` (bad bytes become U+FFFD, up to ``max_bad_bytes_fraction`` of the
    input) or ``"strict"`` (any bad byte rejects the book).
    strip_gutenberg: drop Project Gutenberg headers and licence footers when present.
    min_chars: a book shorter than this after cleaning is rejected as empty.
    encoding: ``utf-8`` (default), any Python codec name (``latin-1``, ``cp1252``), or ``auto``.
    """

    errors: str = "replace"
    max_bad_bytes_fraction: float = 0.001
    strip_gutenberg: bool = True
    min_chars: int = 1
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(
                    f"ReadPolicy.encoding: unknown encoding {self.encoding!r} (or 'auto')"
                ) from None
        if self.errors not in ("replace", "strict"):
            raise ValueError(f"ReadPolicy.errors must be 'replace' or 'strict', got {self.errors!r}")
        if not 0.0 <= self.max_bad_bytes_fraction <= 1.0:
            raise ValueError("ReadPolicy.max_bad_bytes_fraction must lie in [0, 1]")
        if self.min_chars < 1:
            raise ValueError("ReadPolicy.min_chars must be >= 1")


@dataclass(frozen=True)
class Chunk:
    """One chunk: its index in the book, its text and that text's exact token count."""

    index: int
    text: str
    n_tokens: int


def decode_text(data: bytes, policy: ReadPolicy = ReadPolicy()) -> str:
    """Bytes → text with newlines normalised; raises :class:`BookError` for binary or bad input."""
    return decode_counted(data, policy)[0]


def decode_counted(data: bytes, policy: ReadPolicy = ReadPolicy()) -> tuple[str, int]:
    """Like :func:`decode_text`, also returning how many bytes were undecodable (now U+FFFD)."""
    if b"\x00" in data:
        raise BookError(f"binary input: NUL byte at offset {data.index(bytes(1))}")
    encoding = policy.encoding
    if encoding == "auto":
        encoding = "utf-8" if _is_utf8(data) else "cp1252"
    utf8 = codecs.lookup(encoding).name == "utf-8"
    codec, name = ("utf-8-sig", "UTF-8") if utf8 else (encoding, encoding)
    try:
        text, bad = data.decode(codec), 0
    except UnicodeDecodeError as err:
        if policy.errors == "strict":
            raise BookError(f"not valid {name} at byte {err.start} (policy: strict)") from None
        text = data.decode(codec, errors="replace")
        # surrogateescape turns each undecodable byte into one lone surrogate: an exact byte count
        bad = len(_ESCAPED.findall(data.decode(codec, errors="surrogateescape")))
        if bad > policy.max_bad_bytes_fraction * max(len(data), 1):
            hint = " (try --encoding cp1252, latin-1 or auto)" if utf8 else ""
            raise BookError(
                f"{bad} undecodable bytes in {len(data)} (more than {policy.max_bad_bytes_fraction:.2%}): "
                f"binary or not {name}{hint}"
            ) from None
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n"), bad


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's START and END markers (the text itself if none)."""
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text


def clean_book(data: bytes | str, policy: ReadPolicy = ReadPolicy()) -> str:
    """Decode (if bytes), strip boilerplate and surrounding whitespace; reject empty books."""
    return read_book(data, policy)[0]


def read_book(data: bytes | str, policy: ReadPolicy = ReadPolicy()) -> tuple[str, int]:
    """:func:`clean_book`'s text and the number of undecodable bytes replaced on the way."""
    bad = 0
    if isinstance(data, bytes):
        text, bad = decode_counted(data, policy)
    else:
        if NUL in data:
            raise BookError("binary input: NUL character in text")
        text = data.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    if policy.strip_gutenberg:
        text = strip_gutenberg(text)
    text = text.strip()
    if len(text) < policy.min_chars:
        raise BookError(f"empty book: {len(text)} characters of text (minimum {policy.min_chars})")
    return text, bad


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    n_tokens: int
    ends_paragraph: bool


def _sentence_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, ends_paragraph) for each sentence, whitespace between them excluded."""
    for para in _paragraph_spans(text):
        p_start, p_end = para
        pos = p_start
        for m in _SENTENCE_END.finditer(text, p_start, p_end):
            yield pos, m.end(), False
            pos = m.end()
            while pos < p_end and text[pos].isspace():
                pos += 1
        if pos < p_end:
            yield pos, p_end, True
        else:  # the paragraph ended exactly on a sentence end: mark that sentence
            yield -1, -1, True


def _paragraph_spans(text: str) -> Iterator[tuple[int, int]]:
    pos = 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        if text[pos : m.start()].strip():
            yield pos, m.start()
        pos = m.end()
    if text[pos:].strip():
        yield pos, len(text.rstrip())


def _units(text: str, counter: Counter, budget: int) -> list[_Unit]:
    units: list[_Unit] = []
    for start, end, ends_para in _sentence_spans(text):
        if start < 0:  # paragraph end marker for the previous sentence
            if units:
                last = units[-1]
                units[-1] = _Unit(last.start, last.end, last.n_tokens, True)
            continue
        while start < end and text[start].isspace():
            start += 1
        if start >= end:
            continue
        n = counter.count(text[start:end])
        if n <= budget:
            units.append(_Unit(start, end, n, ends_para))
        else:
            pieces = list(_split_long(text, start, end, counter, budget))
            units.extend(pieces[:-1])
            last = pieces[-1]
            units.append(_Unit(last.start, last.end, last.n_tokens, ends_para))
    return units


def _split_long(text: str, start: int, end: int, counter: Counter, budget: int) -> Iterator[_Unit]:
    """Cut an over-budget sentence between words (a too-long word between characters)."""
    for m in _WORD.finditer(text, start, end):
        n = counter.count(m.group())
        if n <= budget:
            yield _Unit(m.start(), m.end(), n, False)
            continue
        pos = m.start()
        while pos < m.end():  # halve the piece until it fits; tokens >= 1 char, so this ends
            stop = m.end()
            while counter.count(text[pos:stop]) > budget and stop - pos > 1:
                stop = pos + (stop - pos) // 2
            yield _Unit(pos, stop, counter.count(text[pos:stop]), False)
            pos = stop


def chunk_text(
    text: str, counter: Counter, budget: int = 1000, *, paragraph_fill: float = 0.5
) -> list[Chunk]:
    """Cut ``text`` into chunks of at most ``budget`` tokens (exact counts by ``counter``).

    Greedy over sentences; when the next sentence does not fit, the chunk ends at the last
    paragraph end if that keeps at least ``paragraph_fill`` of the budget, else at the last
    sentence end. Returns chunks in order, indexed from 0.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token, got {budget}")
    units = _units(text, counter, budget)
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, total, para_cut = i, 0, -1
        while j < len(units) and (j == i or total + units[j].n_tokens <= budget):
            total += units[j].n_tokens
            if units[j].ends_paragraph and total >= paragraph_fill * budget:
                para_cut = j
            j += 1
        if j < len(units) and para_cut >= 0:
            j = para_cut + 1
        j = _fit(text, units, i, j, counter, budget, chunks)
        i = j
    return chunks


def _fit(
    text: str, units: list[_Unit], i: int, j: int, counter: Counter, budget: int, out: list[Chunk]
) -> int:
    """Emit units[i:j] as one chunk, dropping trailing units while the joined text is over budget.

    Joined text can count a token or two more than the sum of its sentences (whitespace and
    merges at the seams), so the exact count decides. Returns the index after the chunk.
    """
    while True:
        piece = text[units[i].start : units[j - 1].end]
        n = counter.count(piece)
        if n <= budget or j - 1 == i:
            break
        j -= 1
    out.append(Chunk(len(out), piece, n))
    return j
