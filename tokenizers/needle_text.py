"""The needle-in-a-haystack text format (shared/LWM_FACTS.md §7), shared by the needle
training data (``lwmkit/needle_data.py``) and the needle eval (``trainer/needle.py``).

A needle is LWM's sentence ``The special magic {city} number is: {7 digits}.``; its question
is ``What is the special magic {city} number?`` followed by LWM's instruction to answer
briefly. A haystack is consecutive sentences of a book, trimmed to a token budget, with the
needles inserted just after the sentence end nearest to their depth (0% = first sentence,
100% = last). Lengths are measured with the text tokenizer, so "a 4K haystack" means 4K of
*its* tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lwmkit.tokenizers.text import TextTokenizer

NEEDLE_TEMPLATE = "The special magic {city} number is: {number}."
QUESTION_TEMPLATE = (
    "What is the special magic {city} number? Don't give information outside the document or "
    "repeat your findings. Keep your response short and direct."
)
# Single-word city names (LWM draws from a list of world cities); distinct needles in one
# haystack always use distinct cities, so every question has exactly one answer.
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico", "Seattle", "Lagos",
    "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia", "Victoria",
    "Tashkent", "Mumbai", "Barcelona", "Berlin", "Lisbon", "Madrid", "Paris", "Rome", "Vienna",
    "Warsaw", "Prague", "Budapest", "Dublin", "Oslo", "Stockholm", "Helsinki", "Copenhagen",
    "Athens", "Istanbul", "Tehran", "Karachi", "Delhi", "Dhaka", "Bangkok", "Hanoi", "Manila",
    "Jakarta", "Seoul", "Tokyo", "Osaka", "Beijing", "Shanghai", "Lima", "Bogota", "Santiago",
    "Quito", "Caracas", "Havana", "Toronto", "Montreal", "Boston", "Denver", "Houston", "Phoenix",
)


@dataclass(frozen=True)
class Needle:
    city: str
    number: str  # 7 digits, first one non-zero

    @property
    def sentence(self) -> str:
        return NEEDLE_TEMPLATE.format(city=self.city, number=self.number)

    @property
    def question(self) -> str:
        return QUESTION_TEMPLATE.format(city=self.city)


def draw_needles(rng: np.random.Generator, k: int) -> list[Needle]:
    """``k`` needles with distinct cities and random 7-digit numbers."""
    if not 1 <= k <= len(CITIES):
        raise ValueError(f"needles per haystack must lie in [1, {len(CITIES)}], got {k}")
    cities = rng.choice(len(CITIES), size=k, replace=False)
    return [Needle(CITIES[int(c)], str(int(rng.integers(1_000_000, 10_000_000)))) for c in cities]


def split_sentences(text: str) -> list[str]:
    """Sentences of a book (whitespace collapsed), dropping empty and very long ones."""
    flat = re.sub(r"\s+", " ", text).strip()
    parts = re.split(r"(?<=[.!?])\s+", flat)
    return [p for p in parts if 0 < len(p) <= 2000]


class Haystack:
    """A book as sentences with their token counts, for building haystacks of a token budget."""

    def __init__(self, text: str, tok: TextTokenizer):
        self.sentences = split_sentences(text)
        if len(self.sentences) < 2:
            raise ValueError("the haystack text has fewer than two sentences")
        self.tok = tok
        self.counts = np.array([len(ids) for ids in tok.encode_batch(self.sentences)], dtype=np.int64)
        self.total_tokens = int(self.counts.sum())
        self._words: list[str] | None = None

    def words(self) -> list[str]:
        """The book's distinct words (whitespace-separated, punctuation kept), in first-seen order."""
        if self._words is None:
            self._words = list(dict.fromkeys(w for s in self.sentences for w in s.split()))
        return self._words

    def document(self, budget: int, needles: Sequence[Needle], depths: Sequence[float], start: int) -> str:
        """Sentences from index ``start`` (wrapping around the book) filling ``budget`` tokens
        together with the needles; needle i goes after the sentence end nearest ``depths[i]``.

        The result's exact token count can differ by a few from the sum of its parts (the
        tokenizer joins across the spaces); callers that need an exact bound measure it.
        """
        if len(needles) != len(depths):
            raise ValueError("one depth per needle")
        needle_cost = sum(len(self.tok.encode(n.sentence)) for n in needles)
        room = budget - needle_cost
        picked: list[int] = []
        used, i = 0, start % len(self.sentences)
        for _ in range(2 * len(self.sentences)):
            if len(picked) == len(self.sentences):
                break
            c = int(self.counts[i])
            if used + c > room:
                if picked:
                    break
                i = (i + 1) % len(self.sentences)  # a long first sentence: start at the next one
                continue
            picked.append(i)
            used += c
            i = (i + 1) % len(self.sentences)
        if not picked:
            raise ValueError(f"budget {budget} leaves no room for haystack sentences")
        cum = np.concatenate([[0], np.cumsum(self.counts[picked])]) / max(used, 1)
        slots: dict[int, list[str]] = {}
        for needle, depth in sorted(zip(needles, depths, strict=True), key=lambda p: p[1]):
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"depth {depth} is outside [0, 1]")
            at = int(np.argmin(np.abs(cum - depth)))  # boundary index 0..len(picked)
            slots.setdefault(at, []).append(needle.sentence)
        out: list[str] = []
        for j in range(len(picked) + 1):
            out.extend(slots.get(j, []))
            if j < len(picked):
                out.append(self.sentences[picked[j]])
        return " ".join(out)
