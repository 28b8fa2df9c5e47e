"""The vocabulary layout: how text ids and vision ids share one token stream (LWM's).

Text ids come from the text tokenizer. Vision ids live in a separate vocabulary of
``vision_vocab_size`` (8448 in LWM): codes ``0..n_codes-1``, then end-of-frame and
end-of-vision. A per-token vision mask tells the two apart; ``<vision>`` and
``</vision>`` are plain text (several text ids each), outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lwmkit.schemas.strict import require

LWM_N_CODES = 8192
LWM_END_OF_FRAME = 8192
LWM_END_OF_VISION = 8193
LWM_VISION_VOCAB_SIZE = 8448
CODES_PER_FRAME = 256


@dataclass(frozen=True)
class VocabLayout:
    """Ids a packed stream uses; recorded in every manifest so a trainer can check it."""

    text_vocab_size: int
    bos_id: int
    eos_id: int
    vision_start_ids: tuple[int, ...]
    vision_end_ids: tuple[int, ...]
    vision_vocab_size: int = LWM_VISION_VOCAB_SIZE
    n_codes: int = LWM_N_CODES
    end_of_frame_id: int = LWM_END_OF_FRAME
    end_of_vision_id: int = LWM_END_OF_VISION
    codes_per_frame: int = CODES_PER_FRAME
    pad_id: int = field(default=0)

    def __post_init__(self) -> None:
        require(self.text_vocab_size > 0, "text_vocab_size", "must be positive")
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            require(0 <= value < self.text_vocab_size, name, f"{value} is outside the text vocab")
        for name in ("vision_start_ids", "vision_end_ids"):
            ids = getattr(self, name)
            require(len(ids) > 0, name, "must not be empty")
            require(all(0 <= i < self.text_vocab_size for i in ids), name, "ids outside the text vocab")
        require(self.n_codes > 0, "n_codes", "must be positive")
        require(self.end_of_frame_id >= self.n_codes, "end_of_frame_id", "must not collide with a code")
        require(self.end_of_vision_id >= self.n_codes, "end_of_vision_id", "must not collide with a code")
        require(self.end_of_frame_id != self.end_of_vision_id, "end_of_vision_id", "equals end_of_frame_id")
        require(
            max(self.end_of_frame_id, self.end_of_vision_id) < self.vision_vocab_size,
            "vision_vocab_size",
            "must hold the codes and both end markers",
        )
        require(self.codes_per_frame > 0, "codes_per_frame", "must be positive")
