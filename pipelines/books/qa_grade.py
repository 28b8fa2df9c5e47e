"""The QA quality gate: each generated pair is graded against its chunk; only grounded pairs are kept.

A pair is dropped, for the first reason that applies, in this order:

* ``debris``: markup, JSON or code in the question or answer (``}]}``, a code fence, a
  ``"question":`` key, angle brackets) -- what a small model leaks from its JSON mode;
* ``length``: a question of fewer than 3 or more than 40 words, an answer of more than 40
  words or 300 characters;
* ``trivial``: answerable from nothing -- the answer has no content word (``Yes.``, ``He
  did.``) or all its content words are already in the question;
* ``ungrounded``: under ``min_grounding`` of the answer's content words occur in the chunk, the
  answer is not taken from it (its longest run of words found verbatim in the chunk covers
  under ``min_span`` of it: the prompt asks for answers from the passage), or the question
  shares no content word with the chunk (an invented answer, another story).

A pair's **grounding** is the share of its answer's content words (lower-cased, stop words
removed, simple suffixes stripped) found among the chunk's; it travels with the kept pair in
the ``BOOK_CHUNK`` record (``qa[].grounding``). A chunk whose pairs all fail is asked again
with another seed (``regrades`` times at most) and then dead-lettered as ``Ungrounded``.
Everything here is a pure function of the texts, so grading is the same on every run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lwmkit.schemas.jobs import QA_MIN_GROUNDING, QA_MIN_SPAN, QA_REGRADES

REASONS = ("debris", "length", "trivial", "ungrounded")
# JSON/code/markup leaking from a model's JSON mode; brackets are left alone (books use them).
_DEBRIS = re.compile(
    r"[{}<>`\\]|\"\s*(?:question|answer|qa)\s*\"\s*:|https?://|^\s*(?:def|import)\s+\w", re.I
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_SUFFIXES = ("ing", "ed", "es", "s", "ly", "'s", "'d")
_STOP = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing done down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now
    of off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves thou thee thy thine
    hath doth art shall may might must upon unto o oh yes yea nay say said says tell told passage text book story
    question answer one ones also whose""".split()
)


@dataclass(frozen=True)
class GradeConfig:
    """How strict the gate is (``--qa-min-grounding``, ``--qa-regrades``)."""

    min_grounding: float = QA_MIN_GROUNDING
    """Least share of the answer's content words that must occur in the chunk."""
    min_span: float = QA_MIN_SPAN
    """Least share of the answer's words that one verbatim run of the chunk must cover."""
    regrades: int = QA_REGRADES
    """Extra requests (another seed, temperature >= 0.7) for a chunk whose pairs all fail."""
    min_question_words: int = 3
    max_question_words: int = 40
    max_answer_words: int = 40
    max_answer_chars: int = 300

    def __post_init__(self) -> None:
        for name in ("min_grounding", "min_span"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.regrades < 0:
            raise ValueError(f"regrades must be >= 0, got {self.regrades}")


def content_words(text: str) -> set[str]:
    """The text's content words: lower-cased, stop words dropped, common suffixes stripped."""
    out = set()
    for word in _WORD.findall(text.lower().replace("\u2019", "'")):
        if word in _STOP or (len(word) < 2 and not word.isdigit()):
            continue
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        out.add(word)
    return out


@dataclass(frozen=True)
class ChunkIndex:
    """What pairs are graded against: the chunk's content words and its words, normalised."""

    words: frozenset[str]
    flat: str  # " w1 w2 ... " lower-cased, punctuation dropped

    @classmethod
    def of(cls, text: str) -> ChunkIndex:
        return cls(frozenset(content_words(text)), f" {' '.join(_flat_words(text))} ")


def _flat_words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def span_share(answer: str, chunk: ChunkIndex) -> float:
    """Share of the answer's words covered by its longest run found verbatim in the chunk."""
    words, best = _flat_words(answer), 0
    for i in range(len(words)):
        for j in range(len(words), i + best, -1):  # longest run from i first; stop below the best
            if f" {' '.join(words[i:j])} " in chunk.flat:
                best = j - i
                break
    return best / len(words) if words else 0.0


def grade_pair(
    question: str, answer: str, chunk: ChunkIndex, cfg: GradeConfig
) -> tuple[str | None, float, bool]:
    """``(reason it is dropped or None, grounding, grounded)`` for one pair against its chunk;
    ``grounded`` is the grounding test at the default thresholds, whatever ``cfg`` says, so the
    summary's grounded share compares across runs."""
    a_words, q_words = content_words(answer), content_words(question)
    grounding = round(len(a_words & chunk.words) / len(a_words), 3) if a_words else 0.0
    span = span_share(answer, chunk)
    grounded = grounding >= _DEFAULT.min_grounding and span >= _DEFAULT.min_span
    if _DEBRIS.search(question) or _DEBRIS.search(answer):
        return "debris", grounding, grounded
    n_q, n_a = len(question.split()), len(answer.split())
    if not cfg.min_question_words <= n_q <= cfg.max_question_words or n_a > cfg.max_answer_words:
        return "length", grounding, grounded
    if len(answer) > cfg.max_answer_chars:
        return "length", grounding, grounded
    if not a_words or a_words <= q_words:
        return "trivial", grounding, grounded
    # both thresholds at 0 turn the grounding test off (the demo's tiny model; tests of other things)
    checks_grounding = cfg.min_grounding > 0 or cfg.min_span > 0
    off_topic = checks_grounding and bool(q_words) and not q_words & chunk.words
    if grounding < cfg.min_grounding or span < cfg.min_span or off_topic:
        return "ungrounded", grounding, grounded
    return None, grounding, grounded


@dataclass
class Graded:
    """One chunk's pairs after the gate: the kept ones (with ``grounding``) and what was dropped.

    ``graded``/``grounded``/``dropped`` add up over every attempt, so the job's counts cover
    every pair the model wrote; ``attempts`` counts replies graded (1 + regrades used).
    """

    kept: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    graded: int = 0
    grounded: int = 0
    attempts: int = 0

    def add(self, pairs: Sequence[Mapping[str, str]], chunk_text: str, cfg: GradeConfig) -> None:
        """Grade one reply's ``pairs``; its kept pairs replace any earlier (there are none then)."""
        chunk = ChunkIndex.of(chunk_text)
        self.attempts += 1
        kept = []
        for p in pairs:
            reason, grounding, grounded = grade_pair(p["question"], p["answer"], chunk, cfg)
            self.graded += 1
            self.grounded += int(grounded)
            if reason is None:
                kept.append({"question": p["question"], "answer": p["answer"], "grounding": grounding})
            else:
                self.dropped[reason] += 1
        self.kept = kept

    def reason(self) -> str:
        """Why nothing was kept, for the dead letter: ``"every pair failed the gate in 3 replies: ..."``."""
        parts = ", ".join(f"{self.dropped[r]} {r}" for r in REASONS if self.dropped[r])
        return f"every QA pair failed the quality gate in {self.attempts} replies ({parts or 'no pairs'})"


_DEFAULT = GradeConfig()


def grade_summary(counters: Mapping[str, int]) -> dict:
    """The ``qa_grade`` block of the books summary, from the job's counters."""
    graded = counters.get("qa_graded", 0)
    return {
        "pairs_graded": graded,
        "pairs_kept": counters.get("qa_pairs", 0),
        "dropped": {r: counters.get(f"qa_dropped_{r}", 0) for r in REASONS},
        "grounded_share": round(counters.get("qa_grounded", 0) / graded, 4) if graded else None,
        "regrades": counters.get("qa_regrades", 0),
        "chunks_ungrounded": counters.get("chunks_ungrounded", 0),
    }


def summary_line(block: Mapping) -> str:
    """One progress line: kept/dropped per reason and the grounded share."""
    dropped = ", ".join(f"{n} {r}" for r, n in block["dropped"].items() if n) or "none"
    share = "n/a" if block["grounded_share"] is None else f"{block['grounded_share']:.0%}"
    return (f"qa gate: {block['pairs_kept']} of {block['pairs_graded']} pairs kept (dropped: {dropped}); "
            f"{share} of all pairs grounded in their chunk; {block['regrades']} regrades, "
            f"{block['chunks_ungrounded']} chunks dead-lettered as Ungrounded")  # fmt: skip
