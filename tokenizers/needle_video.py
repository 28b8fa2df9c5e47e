"""The needle-in-a-video-haystack format, shared by the video needle data
(``lwmkit/needle_video_data.py``) and the video needle eval (``trainer/needle_video.py``).

A *needle frame* is a 256x256 frame reading ``The secret number is`` over a 4-digit number in
a large font (PIL's bundled FreeType font, one fixed layout), tokenized with the same VQGAN
as the haystack. A *haystack* is consecutive frames of real vision records (the vision job's
``VISION_RECORD`` rows, their clips joined end to end and wrapped around). Needle i goes
before the haystack frame nearest its depth (0 % = first frame, 100 % = after the last).

The chat is LWM's video-understanding layout, the one the pack job's ``video_text`` source
formats (``pipelines/formatting.format_vision``): ``<s>You are a helpful assistant. USER:
{question}\\n <vision>{frames}</vision> ASSISTANT: {answer}</s>`` -- the question before the
video, as LWM asks (shared/LWM_FACTS.md §3). One question serves every needle count, so a
mixture's single ``prompt`` carries it: the answer lists the numbers in the order they appear.
Lengths count the whole chat as pack does: BOS, the prompt, the vision block, the answer, EOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.vocab import VocabLayout
from lwmkit.tokenizers.text import ASSISTANT, SYSTEM_PROMPT, USER, TextTokenizer
from lwmkit.tokenizers.vision_layout import block_length, encode_block

QUESTION = (
    "What is the secret number shown in the video? If several are shown, list them all "
    "in the order they appear."
)
NEEDLE_LINES = ("The secret", "number is")  # above the number, in the frame
RESOLUTION = 256


def answer_text(numbers: Sequence[str]) -> str:
    """The reply a needle video trains and is scored against: every number, in order."""
    if not numbers:
        raise ValueError("a needle answer needs at least one number")
    if len(numbers) == 1:
        return f"The secret number is {numbers[0]}."
    return f"The secret numbers are {', '.join(numbers)}."


def draw_numbers(rng: np.random.Generator, k: int) -> list[str]:
    """``k`` distinct 4-digit numbers (first digit non-zero)."""
    if not 1 <= k <= 9000:
        raise ValueError(f"needles per haystack must lie in [1, 9000], got {k}")
    return [str(int(n)) for n in rng.choice(np.arange(1000, 10000), size=k, replace=False)]


@lru_cache(maxsize=4)
def _fonts(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size // 8), ImageFont.load_default(size=size // 4)


def render_needle(number: str, size: int = RESOLUTION) -> np.ndarray:
    """The needle frame for ``number``: uint8 ``[size, size, 3]``, white text on black, the two
    caption lines in a small font above the number in a large one, all centred (fixed layout)."""
    from PIL import Image, ImageDraw

    small, large = _fonts(size)
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(NEEDLE_LINES):
        draw.text((size / 2, size * (0.18 + 0.15 * i)), line, fill=(255, 255, 255), font=small, anchor="mm")
    draw.text((size / 2, size * 0.66), number, fill=(255, 255, 255), font=large, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


def digit_separation(tokenizer, n_numbers: int = 40, seed: int = 0) -> dict:
    """Can a model tell needle numbers apart from their codes? ``n_numbers`` random needle numbers, each
    against every number one digit away (up to 35 each), rendered and encoded with ``tokenizer`` (a VQGAN
    with ``encode``). Returns the pair count, the pairs whose 256 codes are identical (no reader could
    separate them), and the least / median count of codes that differ."""
    rng = np.random.default_rng(seed)
    pairs = []
    for base in draw_numbers(rng, n_numbers):
        for pos in range(4):
            pairs += [(base, base[:pos] + d + base[pos + 1 :]) for d in "0123456789"
                      if d != base[pos] and (pos or d != "0")]  # fmt: skip
    numbers = sorted({n for pair in pairs for n in pair})
    index = {n: i for i, n in enumerate(numbers)}
    codes = tokenizer.encode(np.stack([render_needle(n) for n in numbers]))
    differ = np.array([int((codes[index[a]] != codes[index[b]]).sum()) for a, b in pairs])
    return {"pairs": len(pairs), "identical": [pairs[i] for i in np.flatnonzero(differ == 0)],
            "min_codes_differing": int(differ.min()), "median_codes_differing": float(np.median(differ))}  # fmt: skip


def require_records_vqgan(records_vqgan_id: str, vqgan) -> None:
    """Refuse needle frames tokenized with another VQGAN than the haystack records were (their codes
    would mean different pictures), naming where an earlier shipped default can be had."""
    if vqgan.id != records_vqgan_id:
        from lwmkit.tokenizers.vqgan_history import earlier_default_hint

        raise ContractError(
            f"the haystack records were tokenized with VQGAN {records_vqgan_id[:12]}, not {vqgan.id[:12]}; "
            f"pass the same --vqgan{earlier_default_hint(records_vqgan_id)}",
            field="vqgan",
        )


@dataclass(frozen=True)
class FramePool:
    """Every frame of some vision records, end to end: ``codes`` int32 ``[n_frames, per_frame]``."""

    codes: np.ndarray
    record_ids: tuple[str, ...]
    tokenizer_id: str
    fps: float
    decode_settings: str

    @classmethod
    def from_records(cls, rows: Sequence[Mapping], per_frame: int) -> FramePool:
        """From ``VISION_RECORD`` rows (all tokenized by one VQGAN), in the order given."""
        if not rows:
            raise ContractError("no vision records to build haystacks from", field="records")
        ids = {r["tokenizer_id"] for r in rows}
        if len(ids) > 1:
            raise ContractError(
                f"vision records from {len(ids)} VQGANs; a haystack needs one", field="tokenizer_id"
            )
        codes = np.concatenate(
            [np.asarray(r["tokens"], np.int32).reshape(int(r["n_frames"]), per_frame) for r in rows]
        )
        fps = next((float(r["fps"]) for r in rows if r["kind"] == "video" and r["fps"] > 0), 1.0)
        return cls(codes, tuple(r["id"] for r in rows), ids.pop(), fps, rows[0]["decode_settings"])

    def frames(self, start: int, n: int) -> np.ndarray:
        """``n`` consecutive frames from ``start``, wrapping around the pool."""
        return self.codes[(start + np.arange(n)) % len(self.codes)]


def insert_needles(
    hay: np.ndarray, needles: Sequence[np.ndarray], depths: Sequence[float]
) -> tuple[np.ndarray, list[int]]:
    """Haystack frames ``[n, per]`` with each needle frame ``[per]`` inserted before the haystack
    frame nearest its depth in [0, 1]. Returns the frames and each needle's frame index in them
    (in the order of ``needles``)."""
    if len(needles) != len(depths):
        raise ValueError("one depth per needle")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {list(depths)}")
    n = len(hay)
    slots = [int(round(d * n)) for d in depths]  # boundary index 0..n
    order = sorted(range(len(needles)), key=lambda i: (slots[i], i))
    out, at, pos = [], 0, [0] * len(needles)
    for i in order:
        out.extend(hay[at : slots[i]])
        at = max(at, slots[i])
        pos[i] = len(out)
        out.append(np.asarray(needles[i]))
    out.extend(hay[at:])
    return np.stack(out).astype(np.int32), pos


def prompt_head(tok: TextTokenizer, question: str = QUESTION) -> list[int]:
    """BOS and the text before the vision block, tokenized as the pack job does."""
    return [tok.bos_id, *tok.encode(f"{SYSTEM_PROMPT} {USER} {question}\n")]


def video_prompt(
    tok: TextTokenizer, layout: VocabLayout, codes: np.ndarray, question: str = QUESTION
) -> tuple[list[int], list[bool]]:
    """The eval prompt (ids, vision mask) for frames ``codes`` ``[n, per]``: the understanding
    chat up to and including ``ASSISTANT:`` -- what the model sees before it answers."""
    block, mask = encode_block(codes, layout)
    head, tail = prompt_head(tok, question), tok.encode(ASSISTANT)
    ids = [*head, *block.tolist(), *tail]
    return ids, [False] * len(head) + mask.tolist() + [False] * len(tail)


def chat_tokens(
    tok: TextTokenizer, layout: VocabLayout, n_frames: int, answer: str, question: str = QUESTION
) -> int:
    """Tokens of the whole chat of ``n_frames`` frames, as the pack job counts it (prompt, vision
    block, answer, EOS)."""
    return (
        len(prompt_head(tok, question))
        + block_length(n_frames, layout)
        + len(tok.encode(ASSISTANT))
        + len(tok.encode(answer))
        + 1
    )


def frames_for_length(
    tok: TextTokenizer, layout: VocabLayout, length: int, answer: str, question: str = QUESTION
) -> int:
    """The most frames (needles included) whose chat fits ``length`` tokens; 0 if none does."""
    fixed = chat_tokens(tok, layout, 0, answer, question) - block_length(0, layout)
    return max((length - fixed - block_length(0, layout)) // (layout.codes_per_frame + 1), 0)
