"""The text tokenizer: SentencePiece with LWM's conventions.

LWM encodes every piece of text *without* automatic BOS/EOS and inserts BOS once,
explicitly; ``<vision>`` and ``</vision>`` are plain text (LLaMA-2 ids [529, 4924, 29958] and
[1533, 4924, 29958]), not added tokens. This wrapper keeps exactly that behaviour for any
SentencePiece model: LLaMA's ``tokenizer.model`` or one trained by :func:`train`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import sentencepiece as spm

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.vocab import VocabLayout

VISION_START = "<vision>"
VISION_END = "</vision>"
# LWM's chat template (lwm/vision_chat.py): BOS, this system line, "USER:", "ASSISTANT:".
SYSTEM_PROMPT = "You are a helpful assistant."
USER = "USER:"
ASSISTANT = "ASSISTANT:"
DEFAULT_MODEL_NAME = "lwmkit-botchan-bpe8k.model"


def default_model_path() -> Path:
    """The embedded default: a BPE model trained by ``lwmkit tokenizer train`` on botchan.txt."""
    return Path(str(resources.files("lwmkit.tokenizers") / "data" / DEFAULT_MODEL_NAME))


@dataclass
class TextTokenizer:
    """SentencePiece encode/decode with explicit BOS/EOS and LWM's vision markers.

    ``id`` is the sha256 of the model file's bytes: manifests record it so a trainer can
    refuse shards made with another tokenizer.
    """

    processor: spm.SentencePieceProcessor
    id: str
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> TextTokenizer:
        """Load a SentencePiece ``.model`` file (local or fsspec URL); None = embedded default."""
        path = str(path or default_model_path())
        try:
            import fsspec

            with fsspec.open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            raise ContractError("tokenizer model not found", source=path) from None
        proc = spm.SentencePieceProcessor()
        try:
            proc.LoadFromSerializedProto(blob)
        except (RuntimeError, OSError) as err:
            raise ContractError(f"is not a SentencePiece model ({err})", source=path) from None
        if proc.bos_id() < 0 or proc.eos_id() < 0:
            raise ContractError("the model defines no BOS/EOS ids; retrain with bos_id/eos_id set", source=path)
        return cls(proc, hashlib.sha256(blob).hexdigest(), path)

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def pad_id(self) -> int:
        pad = self.processor.pad_id()
        return pad if pad >= 0 else self.processor.unk_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS/EOS (LWM inserts BOS once, explicitly)."""
        return self.processor.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.processor.EncodeAsIds(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.DecodeIds([int(i) for i in ids])

    def count(self, text: str) -> int:
        return len(self.encode(text))

    @cached_property
    def vision_start_ids(self) -> tuple[int, ...]:
        return tuple(self.encode(VISION_START))

    @cached_property
    def vision_end_ids(self) -> tuple[int, ...]:
        return tuple(self.encode(VISION_END))

    def vocab_layout(self) -> VocabLayout:
        """The layout a packed stream made with this tokenizer uses (LWM's vision ids)."""
        return VocabLayout(
            text_vocab_size=self.vocab_size,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            vision_start_ids=self.vision_start_ids,
            vision_end_ids=self.vision_end_ids,
        )


def train(
    inputs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike,
    *,
    vocab_size: int = 8000,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    max_sentence_length: int = 16384,
    seed_sentencepiece_size: int = 1_000_000,
) -> Path:
    """Train a LLaMA-style SentencePiece model (BPE, byte fallback, split digits).

    Ids follow LLaMA: unk 0, BOS 1, EOS 2, no pad. Returns the ``.model`` path.
    """
    files = [str(p) for p in inputs]
    for f in files:
        if not Path(f).is_file():
            raise ContractError("training text not found", source=f)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.Train(
        input=files,
        model_prefix=str(out_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        # The markers stay plain text (LWM's convention, so LLaMA's model behaves the same);
        # as pieces of our own vocab they cost 1-2 ids instead of byte fallbacks.
        user_defined_symbols=[VISION_START, VISION_END],
        max_sentence_length=max_sentence_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=1,  # deterministic given the same input
        minloglevel=2,
    )
    return out_prefix.with_suffix(".model")
