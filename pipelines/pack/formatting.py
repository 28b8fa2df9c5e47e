"""Each source kind -> token stream with loss mask and vision mask, in LWM's templates.

An :class:`Example` is one formatted training example before packing: ``ids`` (text or
vision ids), ``loss`` (true where the token is a *target* the model is trained to
predict) and ``vision`` (true on vision codes and the end-of-frame / end-of-vision markers,
LWM's vision mask). The packer shifts ``loss`` and ``vision`` onto targets.

Templates (shared/LWM_FACTS.md §3, §5), BOS inserted once, explicitly:

* text:          ``<s> {document} </s>``                              loss on the document and EOS
* understanding: ``<s>You are a helpful assistant. USER: {prompt}\\n <vision>…</vision> ASSISTANT: {caption}</s>``
                                                                      loss on the caption and EOS
* generation:    ``<s>You are a helpful assistant. USER: Generate a video of {caption} ASSISTANT: <vision>…</vision></s>``
                                                                      loss on the codes, markers, ``</vision>`` and EOS
* book QA chat:  ``<s>You are a helpful assistant. USER: {chunks} {q1} ASSISTANT: {a1}</s> USER: {q2} ASSISTANT: {a2}</s>…``
                                                                      loss on the answers and their EOS only
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from lwmkit.schemas.dead_letters import Rejected
from lwmkit.schemas.mixture import SourceConfig
from lwmkit.schemas.vocab import VocabLayout
from lwmkit.tokenizers.text import ASSISTANT, SYSTEM_PROMPT, USER, TextTokenizer
from lwmkit.tokenizers.vision_layout import encode_block, sample_frames

Direction = Literal["understanding", "generation"]
MODALITY = {"text": "text", "book_qa_chat": "text", "image_text": "image", "video_text": "video"}


@dataclass(frozen=True)
class Example:
    """One formatted example: parallel arrays of one length n.

    ``loss[i]`` is true when token i is a training target (predicted from tokens < i);
    ``vision[i]`` is true when token i is a vision id. ``example_id`` is stable across runs;
    ``key`` orders examples for sampling and packing (seeded, derived from the id).
    """

    example_id: str
    source: str
    modality: str
    group: str
    ids: np.ndarray  # int32 [n]
    loss: np.ndarray  # bool [n]
    vision: np.ndarray  # bool [n]
    n_frames: int = 0
    truncated: bool = False
    vqgan_id: str | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)

    @property
    def n_loss_tokens(self) -> int:
        """Loss-bearing positions once packed: targets 1..n-1 (token 0 is never a target)."""
        return int(np.count_nonzero(self.loss[1:]))

    def piece(self, start: int, end: int, suffix: str, *, truncated: bool = True) -> Example:
        """Tokens ``[start, end)`` as an example of their own: a truncation (the rest is lost,
        ``truncated``) or one piece of a split (nothing is lost: ``truncated=False``)."""
        return replace(
            self,
            example_id=self.example_id + suffix,
            ids=self.ids[start:end],
            loss=self.loss[start:end],
            vision=self.vision[start:end],
            n_frames=int(
                np.count_nonzero(np.isin(self.ids[start:end][self.vision[start:end]], _END_MARKERS))
            ),
            truncated=truncated,
        )


_END_MARKERS = (8192, 8193)  # LWM's end-of-frame / end-of-vision ids (schemas.vocab)


class _Stream:
    """Accumulates pieces of a token stream with their loss and vision flags."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.loss: list[np.ndarray] = []
        self.vision: list[np.ndarray] = []

    def add(self, ids: Sequence[int] | np.ndarray, *, loss: bool, vision: np.ndarray | None = None) -> None:
        arr = np.asarray(ids, dtype=np.int32).reshape(-1)
        self.ids.append(arr)
        self.loss.append(np.full(arr.size, loss, dtype=bool))
        self.vision.append(
            np.zeros(arr.size, dtype=bool) if vision is None else np.asarray(vision, dtype=bool)
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.ids), np.concatenate(self.loss), np.concatenate(self.vision)


def seeded_fraction(seed: int, *parts: Any) -> float:
    """A deterministic number in [0, 1) from the seed and parts (the same on every worker)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in (seed, *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def format_text(
    text: str, tok: TextTokenizer, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``<s> text </s>``: every token after BOS is a target.

    ``limit``: only the first ``limit`` tokens will be kept (the ``truncate``/``drop`` policies);
    a document far longer is tokenized only as far as needed (:func:`encode_head`): more than
    ``limit`` tokens come back, without EOS, so the over-long policy still sees it over-long.
    """
    ids, cut = (tok.encode(text), False) if limit is None else encode_head(text, tok, limit)
    s = _Stream()
    s.add([tok.bos_id], loss=False)
    s.add(ids, loss=True)
    if not cut:
        s.add([tok.eos_id], loss=True)
    return s.arrays()


_HEAD_MARGIN = 64  # tokens kept past the limit: those of the prefix's last, possibly cut, word are dropped


def encode_head(text: str, tok: TextTokenizer, limit: int) -> tuple[np.ndarray, bool]:
    """The first tokens of ``text`` (int32, more than ``limit`` of them when the text has that many)
    and whether the text was cut, tokenizing only a prefix that grows until it holds enough.

    Memory stays ~linear in ``limit``, not in the document (a 50 MB one-line document was
    tokenized whole only to be truncated). The prefix ends at a whitespace, and the tokens of
    its last word are dropped, so the ids equal the head of the whole text's tokenization for a
    tokenizer that splits on whitespace first (SentencePiece's default)."""
    chars = max(8 * (limit + _HEAD_MARGIN), 1 << 14)
    while chars < len(text):
        space = max(text.rfind(" ", chars // 2, chars), text.rfind("\n", chars // 2, chars))
        cut = space if space > 0 else chars  # no whitespace at all: cut anywhere (hostile input)
        ids = tok.encode(text[:cut])
        if len(ids) > limit + _HEAD_MARGIN:
            return np.asarray(ids[: limit + _HEAD_MARGIN // 2], dtype=np.int32), True
        chars *= 2
    return np.asarray(tok.encode(text), dtype=np.int32), False


def vision_block(codes: np.ndarray, layout: VocabLayout) -> tuple[np.ndarray, np.ndarray]:
    """LWM's block for ``codes`` ([n_frames, 256]): ids and vision mask."""
    return encode_block(codes, layout)


def format_vision(
    codes: np.ndarray,
    caption: str,
    *,
    kind: Literal["image", "video"],
    direction: Direction,
    tok: TextTokenizer,
    layout: VocabLayout,
    prompt: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image/video + caption example in LWM's chat template, in one direction.

    ``codes``: [n_frames, codes_per_frame] VQ codes. Understanding: the loss is on the
    caption (and EOS); generation: on the vision block after ``<vision>`` (and EOS).
    """
    ids, vm = vision_block(codes, layout)
    n_start = len(layout.vision_start_ids)
    s = _Stream()
    s.add([tok.bos_id], loss=False)
    if direction == "understanding":
        question = prompt or f"Describe this {kind}."
        s.add(tok.encode(f"{SYSTEM_PROMPT} {USER} {question}\n"), loss=False)
        s.add(ids, loss=False, vision=vm)
        s.add(tok.encode(ASSISTANT), loss=False)
        s.add(tok.encode(caption), loss=True)
    else:
        what = "an image" if kind == "image" else "a video"
        s.add(tok.encode(f"{SYSTEM_PROMPT} {USER} Generate {what} of {caption} {ASSISTANT}"), loss=False)
        s.add(ids[:n_start], loss=False)  # "<vision>" belongs to the prompt (LWM's generation template)
        s.add(ids[n_start:], loss=True, vision=vm[n_start:])
    s.add([tok.eos_id], loss=True)
    return s.arrays()


def format_chat(
    document_ids: Sequence[np.ndarray], qa: Sequence[tuple[str, str]], tok: TextTokenizer
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A long-context QA chat: the document (pre-tokenized chunks) then QA turns.

    Loss is on each answer and its EOS only (LWM §5): the document and questions are context.
    """
    s = _Stream()
    s.add([tok.bos_id], loss=False)
    s.add(tok.encode(f"{SYSTEM_PROMPT} {USER}"), loss=False)
    for chunk in document_ids:
        s.add(chunk, loss=False)
    for i, (question, answer) in enumerate(qa):
        s.add(
            tok.encode(f"{question} {ASSISTANT}" if i == 0 else f"{USER} {question} {ASSISTANT}"), loss=False
        )
        s.add(tok.encode(answer), loss=True)
        s.add([tok.eos_id], loss=True)
    return s.arrays()


def text_example(
    source: SourceConfig, example_id: str, text: str, tok: TextTokenizer, limit: int | None = None
) -> Example:
    """A text document as an example; ``limit`` as in :func:`format_text`."""
    ids, loss, vision = format_text(text, tok, limit)
    return Example(example_id, source.name, "text", source.group, ids, loss, vision)


def vision_example(
    source: SourceConfig, row: Mapping[str, Any], tok: TextTokenizer, layout: VocabLayout, seed: int
) -> Example:
    """A vision record (``VISION_RECORD`` row) as an example; the direction is drawn from the seed
    and the record id, so it is the same on every run and every worker."""
    caption = row.get("caption")
    if caption is None or not str(caption).strip():
        raise Rejected("record has no caption: nothing to pair the vision tokens with")
    codes = np.asarray(row["tokens"], dtype=np.int32).reshape(int(row["n_frames"]), layout.codes_per_frame)
    if source.max_frames is not None:
        codes = codes[sample_frames(codes.shape[0], source.max_frames)]
    u = seeded_fraction(seed, "direction", source.name, row["id"])
    direction: Direction = "understanding" if u < source.understanding_share else "generation"
    ids, loss, vision = format_vision(
        codes,
        str(caption).strip(),
        kind=row["kind"],
        direction=direction,
        tok=tok,
        layout=layout,
        prompt=source.prompt,
    )
    return Example(
        f"{row['id']}:{direction[0]}",
        source.name,
        MODALITY[source.kind],
        source.group,
        ids,
        loss,
        vision,
        n_frames=int(codes.shape[0]),
        vqgan_id=row["tokenizer_id"],
    )


def book_chat_examples(
    source: SourceConfig, chunks: Iterable[Mapping[str, Any]], tok: TextTokenizer, seq_len: int
) -> list[Example]:
    """Long-context chats from one book's chunks (``BOOK_CHUNK`` rows).

    Neighbouring chunks (by ``chunk_index``) are concatenated while the chat -- their text and
    all their QA pairs as turns -- still fits ``seq_len``; each window becomes one example.
    A single chunk that alone overflows becomes an example of its own (the overlong policy
    then applies). Chunks without QA pairs only add context; with ``source.min_qa_grounding``
    set, pairs scored below it (or not scored) are left out.
    """
    rows = sorted(chunks, key=lambda r: r["chunk_index"])
    head = 1 + len(tok.encode(f"{SYSTEM_PROMPT} {USER}"))
    costs = []
    for r in rows:
        doc = np.asarray(tok.encode(r["text"]), dtype=np.int32)
        qa = [(p["question"].strip(), p["answer"].strip()) for p in r["qa"] if _grounded_enough(p, source)]
        qa_cost = sum(len(tok.encode(f"{USER} {q} {ASSISTANT}")) + len(tok.encode(a)) + 1 for q, a in qa)
        costs.append((doc, qa, doc.size + qa_cost))
    out, window, used = [], [], head
    for r, cost in zip(rows, costs, strict=True):
        if window and used + cost[2] > seq_len:
            out.append(_chat(source, window, tok))
            window, used = [], head
        window.append((r, cost))
        used += cost[2]
    if window:
        out.append(_chat(source, window, tok))
    return out


def _grounded_enough(pair: Mapping[str, Any], source: SourceConfig) -> bool:
    threshold, score = source.min_qa_grounding, pair.get("grounding")
    return threshold is None or (score is not None and score >= threshold - 1e-6)  # float32 scores


def _chat(source: SourceConfig, window: list, tok: TextTokenizer) -> Example:
    first, last = window[0][0], window[-1][0]
    qa = [pair for _, (_, pairs, _) in window for pair in pairs]
    ids, loss, vision = format_chat([doc for _, (doc, _, _) in window], qa, tok)
    example_id = f"{first['book_id']}/{first['chunk_index']:06d}-{last['chunk_index']:06d}"
    return Example(example_id, source.name, "text", source.group, ids, loss, vision)
