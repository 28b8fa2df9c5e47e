"""Retrieval-bearing training data: book haystacks with needles, as ``BOOK_CHUNK`` rows.

Each haystack is written as one "book" (``book_id = needles-<seq_len>-<i>``): consecutive
sentences of a real book cut into chunks, needles (LWM's ``The special magic {city} number
is: {digits}.``) inserted at random depths, and one QA pair per needle on the chunk that
holds it (question: LWM's needle question; answer: the needle sentence restated, which holds
the digits LWM's scoring looks for). The real pack job's
``book_qa_chat`` source then concatenates each book's chunks into one long chat with the
questions as turns, loss on the answers only (shared/LWM_FACTS.md §5) — exactly the format
``lwmkit eval needle`` asks in. Haystack lengths are drawn in ``[min_fill, 1] * seq_len`` so a
stage sees every distance up to its context, and each chat is sized to fit ``seq_len``.

A share of the haystacks (``repeat_share``) can instead be *repeat* tasks: a passage (the
book's words in random order, random numbers among them), then the request to repeat it word
for word, the passage as the answer. Every answer token is then a copy from the context that
no language model could predict otherwise, so these chats give the model dense practice of the
look-back-and-copy (induction) circuit that needle retrieval needs — digits included; a needle
answer supervises only its 7 digits. Without them a tiny model stalls for thousands of steps on a
"right digits, wrong order" plateau (benchmarks/RESULTS.md, the long-context proof).

A share of the needle haystacks (``far_share``) can be *far* needles: the haystack fills the
stage (``[far_fill, 1] * seq_len``) and the needle sits in its first ``far_depth``, so the
question lies nearly ``seq_len`` tokens after it. Uniform lengths and depths put few needles at
those distances, and a model trained only on them fails at the edge of its context (at 4K,
depth 0 %: benchmarks/RESULTS.md, the long-context proof). With several needles, ``far_needles``
sends only that many of them to the far end and spreads the others over the haystack, the way a
multi-needle eval asks (one needle at the cell's depth, the others anywhere); 0 sends them all.

Deterministic: the same arguments give the same rows (seeded by ``seed`` and ``seq_len``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import BOOK_CHUNK, chunk_id, stable_id, write_table
from lwmkit.schemas.strict import require
from lwmkit.tokenizers.needle_text import Haystack, Needle, draw_needles
from lwmkit.tokenizers.text import ASSISTANT, SYSTEM_PROMPT, USER, TextTokenizer

MODEL_NAME = "lwmkit-needles"  # recorded in BOOK_CHUNK.model: these QA pairs are synthetic
PROMPT_VERSION = "needle-v1"
REPEAT_QUESTION = "Repeat the text above word for word."


@dataclass(frozen=True)
class NeedleDataConfig:
    """How many haystacks of which size, and how many needles each."""

    seq_len: int  # the stage length every chat must fit
    examples: int  # haystacks (one chat each)
    needles_min: int = 1
    needles_max: int = 4
    min_fill: float = 0.3  # shortest haystack as a share of seq_len
    chunk_tokens: int = 1000  # LWM's book chunk size
    seed: int = 0
    source: str = "needles"
    repeat_share: float = 0.0  # share of haystacks that are repeat tasks instead of needle tasks
    far_share: float = 0.0  # share of needle haystacks that are far needles (module docstring)
    far_fill: float = 0.95  # a far needle's haystack fills at least this share of seq_len ...
    far_depth: float = 0.15  # ... and the needle sits in its first far_depth
    far_needles: int = 0  # how many of a far haystack's needles sit there (0: all; the rest anywhere)

    def __post_init__(self) -> None:
        require(self.seq_len >= 128, "seq_len", f"must be >= 128, got {self.seq_len}")
        require(self.examples >= 1, "examples", f"must be >= 1, got {self.examples}")
        require(1 <= self.needles_min <= self.needles_max, "needles_min",
                f"need 1 <= needles_min <= needles_max, got {self.needles_min}, {self.needles_max}")  # fmt: skip
        require(0.0 < self.min_fill <= 1.0, "min_fill", f"must lie in (0, 1], got {self.min_fill}")
        require(self.chunk_tokens >= 32, "chunk_tokens", f"must be >= 32, got {self.chunk_tokens}")
        require(0.0 <= self.repeat_share <= 1.0, "repeat_share", f"must lie in [0, 1], got {self.repeat_share}")
        require(0.0 <= self.far_share <= 1.0, "far_share", f"must lie in [0, 1], got {self.far_share}")
        require(0.0 < self.far_fill <= 1.0, "far_fill", f"must lie in (0, 1], got {self.far_fill}")
        require(0.0 < self.far_depth <= 1.0, "far_depth", f"must lie in (0, 1], got {self.far_depth}")
        require(self.far_needles >= 0, "far_needles", f"must be >= 0 (0: all of them), got {self.far_needles}")


def needle_depths(rng: np.random.Generator, k: int, far: bool, far_depth: float, far_needles: int = 0) -> np.ndarray:
    """Depths (shares of the haystack) of ``k`` needles: uniform, or for a far haystack the first
    ``far_needles`` (0: all) in its first ``far_depth`` and the rest uniform. With ``far_needles`` 0
    the draws are the ones this module always made, so earlier data sets stay reproducible."""
    if not far:
        return rng.uniform(0.0, 1.0, size=k)
    if far_needles == 0 or far_needles >= k:
        return rng.uniform(0.0, far_depth, size=k)
    depths = rng.uniform(0.0, 1.0, size=k)
    depths[:far_needles] *= far_depth
    return depths


def _qa_cost(tok: TextTokenizer, needles: list[Needle]) -> int:
    """Tokens the QA turns add to the chat (as the pack job formats them, plus EOS each)."""
    return sum(len(tok.encode(f"{USER} {n.question} {ASSISTANT}")) + len(tok.encode(n.sentence)) + 1 for n in needles)


def _fit_haystack(hay: Haystack, needles: list[Needle], depths: list[float], start: int, room: int,
                  chunk_tokens: int) -> list[str]:
    """The haystack's chunks, as long as fits: the chunks' tokens (counted as the pack job
    counts them, chunk by chunk) plus the QA turns must not pass ``room``. The haystack is
    measured and shrunk until it fits rather than given a fixed slack, so a context-filling
    haystack reaches the same needle distances the eval's haystacks do."""
    qa = _qa_cost(hay.tok, needles)
    budget = room - qa
    for _ in range(16):
        document = hay.document(max(budget, 32), needles, depths, start)
        chunks = _chunks(hay, document, chunk_tokens)
        over = sum(len(hay.tok.encode(c)) for c in chunks) + qa - room
        if over <= 0 or budget <= 32:
            return chunks
        # whole sentences: a budget cut smaller than the last one leaves the document as it was
        budget = min(budget, len(hay.tok.encode(document))) - over
    raise ContractError(f"could not fit a haystack into {room} tokens", field="seq_len")


def _chunks(hay: Haystack, document: str, chunk_tokens: int) -> list[str]:
    """Split a haystack document at sentence ends into chunks of about ``chunk_tokens``."""
    out, cur, used = [], [], 0
    for sentence in document.split(". "):
        piece = sentence if sentence.endswith(".") else sentence + "."
        n = len(hay.tok.encode(piece))
        if cur and used + n > chunk_tokens:
            out.append(" ".join(cur))
            cur, used = [], 0
        cur.append(piece)
        used += n
    if cur:
        out.append(" ".join(cur))
    return out


def _row(hay: Haystack, cfg: NeedleDataConfig, book_id: str, i: int, text: str, qa: list[dict]) -> dict:
    return {"book_id": book_id, "chunk_index": i, "chunk_id": chunk_id(book_id, i), "source": cfg.source,
            "text": text, "n_tokens": len(hay.tok.encode(text)), "text_sha256": stable_id(text, length=64),
            "qa": qa, "model": MODEL_NAME, "prompt_version": PROMPT_VERSION, "tokenizer_id": hay.tok.id}


def repeat_passage(hay: Haystack, rng: np.random.Generator, budget: int) -> str:
    """About ``budget`` tokens of the book's words in random order, with random numbers
    (1-7 digits) among them: text no language model can predict, so only copying helps."""
    words = hay.words()
    out: list[str] = []
    used = 0
    while True:
        w = str(int(rng.integers(0, 10 ** int(rng.integers(1, 8))))) if rng.random() < 0.15 else words[int(rng.integers(0, len(words)))]
        n = len(hay.tok.encode(w))
        if out and used + n > budget:
            return " ".join(out)
        out.append(w)
        used += n


def repeat_rows(hay: Haystack, cfg: NeedleDataConfig, index: int) -> list[dict]:
    """A repeat task as one ``BOOK_CHUNK`` row: a passage (:func:`repeat_passage`), and a QA
    pair asking for it verbatim. The passage fills about half the chat (it appears twice),
    at most one chunk."""
    tok = hay.tok
    rng = np.random.default_rng([cfg.seed, cfg.seq_len, index, 1])
    head = 1 + len(tok.encode(f"{SYSTEM_PROMPT} {USER}"))
    ask = len(tok.encode(f"{USER} {REPEAT_QUESTION} {ASSISTANT}")) + 1
    fixed = head + ask + 16  # 16: slack for the tokenizer's joins
    target = max(int(cfg.seq_len * rng.uniform(cfg.min_fill, 1.0)), fixed + 64)  # a passage of >= 32 tokens
    budget = min(cfg.chunk_tokens, (target - fixed) // 2)
    passage = repeat_passage(hay, rng, budget)
    return [_row(hay, cfg, f"{cfg.source}-{cfg.seq_len}-repeat-{index:06d}", 0, passage,
                 [{"question": REPEAT_QUESTION, "answer": passage}])]


def haystack_rows(hay: Haystack, cfg: NeedleDataConfig, index: int) -> list[dict]:
    """The ``BOOK_CHUNK`` rows of example ``index``: a needle haystack or, for a ``repeat_share``
    of the indices (drawn from the seed), a repeat task."""
    tok = hay.tok
    if cfg.repeat_share > 0 and np.random.default_rng([cfg.seed, index, 2]).random() < cfg.repeat_share:
        return repeat_rows(hay, cfg, index)
    rng = np.random.default_rng([cfg.seed, cfg.seq_len, index])
    needles = draw_needles(rng, int(rng.integers(cfg.needles_min, cfg.needles_max + 1)))
    head = 1 + len(tok.encode(f"{SYSTEM_PROMPT} {USER}"))

    def fixed(ns: list[Needle]) -> int:  # the chat without its haystack sentences
        return head + _qa_cost(tok, ns) + sum(len(tok.encode(n.sentence)) for n in ns)

    while len(needles) > 1 and fixed(needles) + 48 > cfg.seq_len:
        needles = needles[:-1]  # a short stage holds fewer needles: every question must fit
    if fixed(needles) + 48 > cfg.seq_len:
        raise ContractError(f"{cfg.seq_len} cannot hold a haystack with a needle and its question", field="seq_len")
    far = cfg.far_share > 0 and np.random.default_rng([cfg.seed, index, 3]).random() < cfg.far_share
    floor = fixed(needles) + 128  # prefer some haystack around the needles
    fill = rng.uniform(max(cfg.min_fill, cfg.far_fill), 1.0) if far else rng.uniform(cfg.min_fill, 1.0)
    target = min(cfg.seq_len, max(floor, int(cfg.seq_len * fill)))
    depths = needle_depths(rng, len(needles), far, cfg.far_depth, cfg.far_needles)
    start = int(rng.integers(0, len(hay.sentences)))
    chunks = _fit_haystack(hay, needles, list(depths), start, target - head, cfg.chunk_tokens)
    book_id = f"{cfg.source}-{cfg.seq_len}-{index:06d}"
    rows = []
    for i, text in enumerate(chunks):
        asked = [n for n in needles if n.sentence in text]
        rng.shuffle(asked)  # question order is not the needles' order
        rows.append(_row(hay, cfg, book_id, i, text, [{"question": n.question, "answer": n.sentence} for n in asked]))
    return rows


def write_needle_data(book_text: str, out_path: str, cfg: NeedleDataConfig, tok: TextTokenizer | None = None) -> int:
    """Write ``cfg.examples`` haystacks as one ``BOOK_CHUNK`` Parquet file; returns the row count."""
    tok = tok or TextTokenizer.load()
    hay = Haystack(book_text, tok)
    rows = [row for i in range(cfg.examples) for row in haystack_rows(hay, cfg, i)]
    if "://" not in out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, BOOK_CHUNK, out_path)
    return len(rows)
