"""A SentencePiece BPE model as Hugging Face tokenizer files (``tokenizer.json`` and friends).

``transformers`` can build a fast tokenizer from ``tokenizer.model`` itself, but only by
parsing it with sentencepiece's generated protobuf module, which refuses to load when the
installed protobuf runtime is older than the one it was generated for (sentencepiece 0.2.3
needs protobuf 7; apache-beam pins protobuf < 7, so every lwmkit environment has the old
one). We therefore write ``tokenizer.json`` ourselves from the model's bytes: the few fields
needed are read with a small protobuf wire-format reader, no generated code.

Supported: what LLaMA-2's tokenizer and ``lwmkit tokenizer train`` make -- BPE, identity
normalisation, whitespace kept, byte fallback. The resulting tokenizer encodes text to the
same ids as :class:`lwmkit.tokenizers.text.TextTokenizer` (no BOS/EOS with
``add_special_tokens=False``) and decodes them back to the same text.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from lwmkit.schemas import ContractError

SPACE = "\u2581"  # SentencePiece's visible space
_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE = 2


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """``(field number, value)`` of one protobuf message: ints for varints, bytes for
    length-delimited fields, raw bytes for fixed32/64."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((num, value))
    return out


@dataclass
class SentencePieceModel:
    """What a ``.model`` file says that a Hugging Face tokenizer needs."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type) in id order
    model_type: int
    byte_fallback: bool
    normalizer: str
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    charsmap: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, blob: bytes, source: str = "") -> SentencePieceModel:
        try:
            top = _fields(blob)
            pieces = []
            for num, value in top:
                if num == 1:
                    f = dict(_fields(value))
                    score = struct.unpack("<f", f[2])[0] if 2 in f else 0.0
                    pieces.append((f.get(1, b"").decode("utf-8"), score, int(f.get(3, _NORMAL))))
            trainer = dict(next((_fields(v) for n, v in top if n == 2), []))
            norm = dict(next((_fields(v) for n, v in top if n == 3), []))
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
            raise ContractError(f"is not a SentencePiece model ({err})", source=source) from None
        if not pieces:
            raise ContractError("is not a SentencePiece model (no pieces)", source=source)
        return cls(
            pieces,
            int(trainer.get(3, 1)),
            bool(trainer.get(35, 0)),
            norm.get(1, b"nmt_nfkc").decode(),
            bool(norm.get(3, 1)),
            bool(norm.get(4, 1)),
            bytes(norm.get(2, b"")),
        )

    def unsupported(self) -> str | None:
        """Why this model cannot be written as ``tokenizer.json`` exactly (None: it can)."""
        if self.model_type != _BPE:
            return "is not a BPE model"
        if self.normalizer != "identity" or self.charsmap:
            return f"normalises text ({self.normalizer})"
        if self.remove_extra_whitespaces:
            return "removes extra whitespace"
        if not self.add_dummy_prefix:
            return "adds no dummy prefix"
        return None


def _merges(vocab: dict[str, int], mergeable: list[str]) -> list[list[str]]:
    """BPE merges for SentencePiece pieces. SentencePiece BPE merges the adjacent pair whose
    joined piece scores best (earlier pieces score higher); a merge list ranked by the joined
    piece's id reproduces that. Every split of a piece into two vocabulary pieces is listed."""
    ranked = []
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((vocab[piece], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _with_bos(sp: SentencePieceModel, bos_id: int) -> dict[str, Any]:
    """BOS once before the text when special tokens are added (``add_special_tokens=True``)."""
    bos = sp.pieces[bos_id][0]
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def _user_split(users: list[str]) -> dict[str, Any] | None:
    """A pre-tokenizer that isolates user-defined symbols (lwmkit's ``<vision>``/``</vision>``).

    SentencePiece adds the leading space marker once to the whole text and then matches these
    symbols as atomic pieces. As ``tokenizers`` "added tokens" they would be cut out before
    normalisation, so every piece of text after one would get a marker of its own; splitting
    them out after normalisation instead keeps the one marker (``"<vision>x"`` ->
    ``▁``, ``<vision>``, ``x``, as SentencePiece gives)."""
    if not users:
        return None
    # matched in the normalised text, where spaces are already markers
    pattern = "|".join(
        re.escape(u.replace(" ", SPACE)) for u in sorted(users, key=len, reverse=True)
    )  # longest first, as a prefix match
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def tokenizer_json(sp: SentencePieceModel, bos_id: int) -> dict[str, Any]:
    """The ``tokenizers`` library's JSON for ``sp``: LLaMA's SentencePiece pipeline (the whole
    text gets one leading space marker, spaces become markers, byte fallback for unknown
    characters), BOS before the text when special tokens are asked for."""
    vocab = {piece: i for i, (piece, _, _) in enumerate(sp.pieces)}
    mergeable = [p for p, _, t in sp.pieces if t == _NORMAL and len(p) > 1]
    added = [
        {
            "id": i,
            "content": piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (piece, _, kind) in enumerate(sp.pieces)
        if kind in (_UNKNOWN, _CONTROL)
    ]
    users = [p for p, _, t in sp.pieces if t == _USER]
    unk = next((p for p, _, t in sp.pieces if t == _UNKNOWN), None)
    spaces = [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ]
    decoders = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]
    # ignore_merges: a user symbol has no merges that build it, so a pre-token that is a whole
    # vocabulary piece maps to it directly (for ordinary pieces BPE reaches the same id).
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": unk,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": sp.byte_fallback,
        "ignore_merges": bool(users),
        "vocab": vocab,
        "merges": _merges(vocab, mergeable),
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": spaces},
        "pre_tokenizer": _user_split(users),
        "post_processor": _with_bos(sp, bos_id),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model,
    }


def write_tokenizer_files(
    blob: bytes, folder: str, *, bos_id: int, eos_id: int, max_length: int, source: str = ""
) -> list[str]:
    """Write ``tokenizer.model`` (the bytes as given), ``tokenizer_config.json`` and, when the
    model allows an exact one, ``tokenizer.json``. Returns the files written."""
    import os

    sp = SentencePieceModel.parse(blob, source)
    names = {i: p for i, (p, _, _) in enumerate(sp.pieces)}
    unk = next((p for p, _, t in sp.pieces if t == _UNKNOWN), None)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": names[bos_id],
        "eos_token": names[eos_id],
        "unk_token": unk,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "padding_side": "left",
        # "<s>" typed in a text is text, as SentencePiece reads it (BOS comes from add_special_tokens)
        "split_special_tokens": True,
    }
    files = []
    path = os.path.join(folder, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(blob)
    files.append(path)
    why = sp.unsupported()
    if why is None:
        path = os.path.join(folder, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(sp, bos_id), f, ensure_ascii=False)
        files.append(path)
    else:
        from lwmkit.runtime.progress import warn

        warn(
            f"tokenizer {source} {why}: wrote tokenizer.model only (transformers converts it itself where its "
            "protobuf allows)"
        )
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    files.append(path)
    return files
