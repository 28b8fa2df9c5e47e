"""The QA quality gate on pairs written the ways a small model writes them."""

from __future__ import annotations

import pytest

from lwmkit.pipelines.books.qa_grade import (
    ChunkIndex,
    GradeConfig,
    Graded,
    content_words,
    grade_pair,
    grade_summary,
    span_share,
)
from lwmkit.pipelines.books.qa_prompt import ParseError, parse_qa

CHUNK = (
    "Titus Andronicus returned to Rome after ten years of war against the Goths. He buried his sons in the "
    "family tomb, and his brother Marcus offered him the empire, which he refused in favour of Saturninus."
)
WORDS = ChunkIndex.of(CHUNK)


@pytest.mark.parametrize(
    ("question", "answer", "reason"),
    [
        ("Who returned to Rome after the war?", "Titus Andronicus", None),
        ("How long did the war against the Goths last?", "Ten years.", None),
        ("Who offered Titus the empire?", "his brother Marcus", None),
        # words from the chunk, but not taken from it
        ("Who was offered the empire?", "Titus, by his brother Marcus.", "ungrounded"),
        # invented: not in the chunk (the example)
        ("Who killed Lucius Marcellus?", "The Roman Emperor Titus killed him in battle.", "ungrounded"),
        # answerable from nothing: no content word, or all of them in the question
        ("Did Titus refuse the empire?", "Yes.", "trivial"),
        ("Whom did Titus bury in the family tomb?", "Titus", "trivial"),
        # JSON / code leaking from the reply
        ("What happened?", '} {"', "debris"),
        ("Who is Marcus?", "}]} ```python # Example of a JSON object", "debris"),
        ("Rome?", "Titus", "length"),
        ("Who refused the empire?", " ".join(["Titus"] * 45), "length"),
        # a question about something else entirely
        ("What colour was the dragon's treasure chest?", "Goths", "ungrounded"),
    ],
)
def test_pairs_are_kept_or_dropped_for_the_first_reason(question, answer, reason):
    assert grade_pair(question, answer, WORDS, GradeConfig())[0] == reason


def test_the_answer_must_be_taken_from_the_chunk():
    assert span_share("ten years of war", WORDS) == 1.0
    assert span_share("Ten years of war, against the Goths!", WORDS) == 1.0  # case and punctuation aside
    assert span_share("war of ten years", WORDS) == 0.5
    assert (
        grade_pair("How long was the war?", "ten years of war", WORDS, GradeConfig(min_span=1.0))[0] is None
    )


def test_grounding_is_the_share_of_answer_words_in_the_chunk():
    assert grade_pair("Who came back?", "Titus Andronicus", WORDS, GradeConfig())[1] == 1.0
    assert (
        grade_pair("Who came back?", "Titus and Lavinia", WORDS, GradeConfig())[1] == 0.5
    )  # and: a stop word
    assert content_words("The sons' buried brothers, returning") == {"son", "buri", "brother", "return"}


def test_a_chunk_counts_every_pair_and_keeps_only_the_last_replys_good_ones():
    g = Graded()
    g.add([{"question": "Who killed Lucius Marcellus?", "answer": "Emperor Nero"}], CHUNK, GradeConfig())
    assert g.kept == [] and g.dropped["ungrounded"] == 1
    assert g.reason() == "every QA pair failed the quality gate in 1 replies (1 ungrounded)"
    g.add([{"question": "Who refused the empire?", "answer": "Titus"}], CHUNK, GradeConfig())
    assert g.kept == [{"question": "Who refused the empire?", "answer": "Titus", "grounding": 1.0}]
    assert (g.graded, g.grounded, g.attempts) == (2, 1, 2)
    block = grade_summary({"qa_graded": 2, "qa_grounded": 1, "qa_pairs": 1, "qa_dropped_ungrounded": 1})
    assert block["grounded_share"] == 0.5 and block["dropped"]["ungrounded"] == 1 and block["pairs_kept"] == 1


def test_replies_whose_pairs_clean_to_nothing_are_no_answer():
    with pytest.raises(ParseError):  # was returned as zero pairs, i.e. "answered" and cached
        parse_qa('{"qa": [{"question": "What happened?", "answer": "} {"}]}')
    # a JSON object that cleans to nothing no longer hides the usable lines after it
    reply = '{"question": "...", "answer": "..."}\nQ: Who won the war?\nA: Titus'
    assert parse_qa(reply) == [{"question": "Who won the war?", "answer": "Titus"}]


def test_config_is_validated():
    with pytest.raises(ValueError, match="min_grounding"):
        GradeConfig(min_grounding=1.5)
    with pytest.raises(ValueError, match="min_span"):
        GradeConfig(min_span=-0.1)
    with pytest.raises(ValueError, match="regrades"):
        GradeConfig(regrades=-1)
