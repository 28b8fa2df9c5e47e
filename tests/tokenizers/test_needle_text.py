"""The needle text format shared by the needle training data and the needle eval: needles,
sentence splitting, and haystacks of a token budget with needles at their depths."""

from __future__ import annotations

import numpy as np
import pytest

from lwmkit.tokenizers.needle_text import CITIES, Haystack, Needle, draw_needles, split_sentences
from lwmkit.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def hay(botchan: str) -> Haystack:
    return Haystack(botchan, TextTokenizer.load())


def test_needles_have_distinct_cities_and_seven_digits():
    rng = np.random.default_rng(0)
    for k in (1, 4, len(CITIES)):
        needles = draw_needles(rng, k)
        assert len({n.city for n in needles}) == k
        assert all(len(n.number) == 7 and n.number[0] != "0" and n.number.isdigit() for n in needles)
    n = Needle("Paris", "1234567")
    assert n.sentence == "The special magic Paris number is: 1234567."
    assert n.question.startswith("What is the special magic Paris number?")
    for bad in (0, len(CITIES) + 1):
        with pytest.raises(ValueError, match="needles per haystack"):
            draw_needles(rng, bad)


def test_split_sentences_collapses_whitespace_and_drops_empty_or_huge():
    text = "One fine day.\n\nTwo  words here!   Why? " + "x" * 2500 + "."
    assert split_sentences(text) == ["One fine day.", "Two words here!", "Why?"]


def test_too_short_a_text_is_refused():
    with pytest.raises(ValueError, match="fewer than two sentences"):
        Haystack("Just one sentence.", TextTokenizer.load())


@pytest.mark.parametrize("budget", [200, 1000, 4000])
def test_document_fits_its_budget_and_places_needles_by_depth(hay: Haystack, budget: int):
    needles = [Needle("Paris", "1234567"), Needle("Oslo", "7654321"), Needle("Rome", "5555555")]
    depths = [0.0, 0.5, 1.0]
    doc = hay.document(budget, needles, depths, start=100)
    n_tokens = len(hay.tok.encode(doc))
    assert budget * 0.8 <= n_tokens <= budget + 8  # filled, within a few tokens of the joins
    at = [doc.index(n.sentence) for n in needles]
    assert at[0] == 0  # depth 0: the first sentence
    assert doc.endswith(needles[2].sentence)  # depth 100%: the last
    assert at[0] < at[1] < at[2]
    assert abs(at[1] / len(doc) - 0.5) < 0.15  # depth 50%: about the middle (sentence ends)
    # the haystack is the book's own consecutive sentences from the start index
    rest = doc
    for n in needles:
        rest = rest.replace(n.sentence + " ", "").replace(" " + n.sentence, "")
    assert rest.startswith(hay.sentences[100])


def test_document_is_deterministic_and_wraps_around_the_book(hay: Haystack):
    needle = [Needle("Lima", "1000001")]
    last = len(hay.sentences) - 2
    doc = hay.document(600, needle, [0.3], start=last)
    assert doc == hay.document(600, needle, [0.3], start=last)
    assert hay.sentences[0] in doc  # ran past the end of the book and went on at its start


def test_document_rejects_bad_arguments(hay: Haystack):
    needle = [Needle("Lima", "1000001")]
    with pytest.raises(ValueError, match="one depth per needle"):
        hay.document(500, needle, [0.1, 0.2], start=0)
    with pytest.raises(ValueError, match="outside"):
        hay.document(500, needle, [1.5], start=0)
    with pytest.raises(ValueError, match="no room"):
        hay.document(12, needle, [0.5], start=0)


def test_words_are_distinct_in_first_seen_order(hay: Haystack):
    words = hay.words()
    assert len(words) == len(set(words)) > 1000
    first = hay.sentences[0].split()
    assert words[: len(dict.fromkeys(first))] == list(dict.fromkeys(first))
