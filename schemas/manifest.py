"""``manifest.json``: what a packed shard set holds. Written last; readers trust only it.

The pack job writes it, the trainer checks each stage against it (seq_len, tokenizer and
VQGAN ids, vocab layout), the audit recounts the shards and compares.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.strict import check_format_version, from_dict, require, to_dict
from lwmkit.schemas.vocab import VocabLayout

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TokenCounts:
    """Counts for one source or one modality."""

    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    vision_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("examples", "tokens", "loss_tokens", "vision_tokens"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.loss_tokens <= self.tokens, "loss_tokens", "exceeds tokens")


@dataclass(frozen=True)
class ShardEntry:
    """One webdataset tar of the set."""

    name: str
    n_samples: int
    size_bytes: int
    sha256: str

    def __post_init__(self) -> None:
        require(self.name.endswith(".tar") and "/" not in self.name, "name", "must be a bare '*.tar' file name")
        require(self.n_samples >= 0, "n_samples", "must be >= 0")
        require(self.size_bytes > 0, "size_bytes", "must be > 0")
        require(bool(_SHA256.match(self.sha256)), "sha256", "must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Manifest:
    """The description of one stage's packed shard set."""

    stage: str
    seq_len: int
    seed: int
    tokenizer_id: str
    vqgan_id: str | None
    vocab: VocabLayout
    mixture: dict[str, Any]
    loss_weighting: Literal["per_example", "per_token"]
    vision_loss_weight: float
    text_loss_weight: float
    n_sequences: int
    padding_tokens: int
    packing_efficiency: float
    per_source: dict[str, TokenCounts]
    per_modality: dict[str, TokenCounts]
    shards: tuple[ShardEntry, ...]
    policy_counts: dict[str, int] = field(default_factory=dict)
    created_by: str = ""
    format_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, MANIFEST_VERSION, "manifest")
        require(self.seq_len > 0, "seq_len", "must be positive")
        require(self.n_sequences >= 0, "n_sequences", "must be >= 0")
        names = [s.name for s in self.shards]
        require(len(set(names)) == len(names), "shards", "shard names repeat")
        require(
            sum(s.n_samples for s in self.shards) == self.n_sequences,
            "n_sequences",
            "differs from the sum of the shards' sample counts",
        )
        total = self.n_sequences * self.seq_len
        used = sum(c.tokens for c in self.per_source.values())
        require(used + self.padding_tokens == total, "padding_tokens", "tokens + padding != n_sequences * seq_len")
        expected = used / total if total else 0.0
        require(abs(self.packing_efficiency - expected) < 1e-6, "packing_efficiency", f"should be {expected:.6f}")
        require(
            sum(c.tokens for c in self.per_modality.values()) == used,
            "per_modality",
            "token counts do not add up to per_source's",
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the bytes the manifest hash is taken over."""
        return json.dumps(to_dict(self), sort_keys=True, indent=2) + "\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Manifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ContractError(f"is not JSON ({err})", source=source) from None
        return from_dict(cls, data, source=source)


def load_manifest(path: str) -> Manifest:
    """Read and validate a manifest from a local path or a bucket URL (fsspec)."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise ContractError("manifest not found", source=path) from None
    return Manifest.from_json(text, source=path)
