"""Formatting in LWM's templates: where the loss is, what the vision mask covers."""

from __future__ import annotations

import numpy as np
import pytest

from lwmkit.pipelines.pack.formatting import book_chat_examples, format_text, format_vision, vision_example
from lwmkit.schemas import ContractError, SourceConfig
from lwmkit.tokenizers.text import ASSISTANT, TextTokenizer
from lwmkit.tokenizers.vision_layout import decode_block, find_blocks


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.load()


def _codes(n_frames: int) -> np.ndarray:
    return np.random.default_rng(n_frames).integers(0, 8192, (n_frames, 256))


def test_text_document(tok):
    ids, loss, vision = format_text("Botchan went to Shikoku.", tok)
    assert (
        ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids[1:-1]) == "Botchan went to Shikoku."
    )
    assert not loss[0] and loss[1:].all() and not vision.any()


@pytest.mark.parametrize("n_frames,kind", [(1, "image"), (3, "video")])
def test_understanding_loss_on_the_caption_only(tok, n_frames, kind):
    layout = tok.vocab_layout()
    codes = _codes(n_frames)
    ids, loss, vision = format_vision(
        codes, "a cat on a mat", kind=kind, direction="understanding", tok=tok, layout=layout
    )
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    ((start, end),) = find_blocks(vision)
    n_open = len(layout.vision_start_ids)
    block = ids[start - n_open : end + len(layout.vision_end_ids)]
    assert np.array_equal(
        decode_block(block, vision[start - n_open : end + len(layout.vision_end_ids)], layout), codes
    )
    assert end - start == n_frames * 257  # 256 codes + one marker per frame, LWM's layout
    assert ids[end - 1] == 8193 and (n_frames == 1 or ids[start + 256] == 8192)
    assert not loss[: end + len(layout.vision_end_ids)].any()  # prompt, question and vision: no loss
    assert tok.decode(ids[loss][:-1]) == "a cat on a mat" and loss[-1]
    text_before = tok.decode(ids[1 : start - n_open])
    assert text_before.startswith(
        "You are a helpful assistant. USER: Describe this"
    ) and text_before.endswith("\n")
    assert (
        tok.decode(ids[end + len(layout.vision_end_ids) :][~loss[end + len(layout.vision_end_ids) :]]).strip()
        == ASSISTANT
    )


def test_generation_loss_on_the_vision_block(tok):
    layout = tok.vocab_layout()
    ids, loss, vision = format_vision(
        _codes(2), "a red kite", kind="video", direction="generation", tok=tok, layout=layout
    )
    ((start, end),) = find_blocks(vision)
    assert loss[start:end].all() and loss[-1]  # codes, markers, EOS
    assert not loss[:start].any()  # prompt and "<vision>" are context
    assert tok.decode(ids[1:start]).startswith(
        "You are a helpful assistant. USER: Generate a video of a red kite ASSISTANT:"
    )
    assert np.array_equal(ids[end : end + len(layout.vision_end_ids)], layout.vision_end_ids)


def test_direction_is_seeded_and_follows_the_share(tok):
    layout = tok.vocab_layout()
    src = SourceConfig(name="imgs", kind="image_text", path="x", weight=1.0, understanding_share=0.3)
    rows = [
        {
            "id": f"{i:032x}",
            "kind": "image",
            "n_frames": 1,
            "tokens": _codes(1).ravel(),
            "caption": "a dog",
            "tokenizer_id": "v",
        }
        for i in range(400)
    ]
    dirs = [vision_example(src, r, tok, layout, seed=1).example_id[-1] for r in rows]
    assert dirs == [vision_example(src, r, tok, layout, seed=1).example_id[-1] for r in rows]
    assert abs(dirs.count("u") / len(dirs) - 0.3) < 0.07
    with pytest.raises(ValueError, match="no caption"):
        vision_example(src, {**rows[0], "caption": None}, tok, layout, seed=1)


def test_video_frames_are_sampled_to_the_budget(tok):
    layout = tok.vocab_layout()
    src = SourceConfig(name="v", kind="video_text", path="x", weight=1.0, max_frames=4)
    row = {
        "id": "0" * 32,
        "kind": "video",
        "n_frames": 10,
        "tokens": _codes(10).ravel(),
        "caption": "waves",
        "tokenizer_id": "v",
    }
    ex = vision_example(src, row, tok, layout, seed=0)
    assert ex.n_frames == 4 and int(ex.vision.sum()) == 4 * 257 and ex.vqgan_id == "v"


def test_book_chats_fill_the_context_and_learn_only_answers(tok, botchan):
    words = botchan.split()
    chunks = [
        {
            "book_id": "b",
            "chunk_index": i,
            "text": " ".join(words[i * 100 : (i + 1) * 100]),
            "qa": [{"question": f"Q{i}?", "answer": f"Answer number {i}."}],
        }
        for i in range(12)
    ]
    src = SourceConfig(name="books", kind="book_qa_chat", path="x", weight=1.0)
    chats = book_chat_examples(src, reversed(chunks), tok, seq_len=700)  # order restored by chunk_index
    assert len(chats) >= 2 and all(c.n_tokens <= 700 for c in chats)
    assert all(c.n_tokens > 350 for c in chats[:-1])  # neighbouring chunks concatenated to fill the context
    answers = " ".join(tok.decode(c.ids[c.loss & (c.ids != tok.eos_id)]) for c in chats)
    assert answers.split() == " ".join(f"Answer number {i}." for i in range(12)).split()
    assert chats[0].example_id == f"b/000000-{int(chats[0].example_id.split('-')[-1]):06d}"
    text = tok.decode(chats[0].ids[1:])
    assert text.startswith("You are a helpful assistant. USER: " + " ".join(words[:5]))
    assert "Q0? ASSISTANT: Answer number 0." in text


def test_book_chats_keep_only_pairs_grounded_enough(tok):
    qa = [{"question": "Who?", "answer": "Kept answer.", "grounding": 0.9},
          {"question": "What?", "answer": "Weak answer.", "grounding": 0.4},
          {"question": "When?", "answer": "Unscored answer."}]  # fmt: skip
    chunk = {"book_id": "b", "chunk_index": 0, "text": "Some text of the book.", "qa": qa}
    for threshold, expected in ((None, "Kept answer. Weak answer. Unscored answer."), (0.9, "Kept answer.")):
        src = SourceConfig(
            name="books", kind="book_qa_chat", path="x", weight=1.0, min_qa_grounding=threshold
        )
        (chat,) = book_chat_examples(src, [chunk], tok, seq_len=700)
        assert tok.decode(chat.ids[chat.loss & (chat.ids != tok.eos_id)]).split() == expected.split()
    with pytest.raises(ContractError, match="min_qa_grounding"):
        SourceConfig(name="t", kind="text", path="x", weight=1.0, min_qa_grounding=0.5)
