"""The mixture config (YAML): which sources go into a stage's shards, and in what shares.

Example::

    format_version: 1
    seed: 0
    sources:
      - {name: books, kind: book_qa_chat, path: "out/books/*.parquet", weight: 0.3}
      - {name: clips, kind: video_text, path: "out/vision/*.parquet", weight: 0.5,
         understanding_share: 0.5, max_frames: 32}
      - {name: web, kind: text, path: "data/*.jsonl", weight: 0.2}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lwmkit.schemas.strict import check_format_version, require

MIXTURE_VERSION = 1
SourceKind = Literal["text", "image_text", "video_text", "book_qa_chat"]


@dataclass(frozen=True)
class SourceConfig:
    """One named source of a mixture."""

    name: str
    kind: SourceKind
    path: str  # glob, local or bucket (gs://, s3://)
    weight: float  # target share of the output's tokens (normalised over sources)
    text_field: str = "text"  # text sources in JSONL/Parquet: the column holding the document
    understanding_share: float = 0.5  # image/video: share formatted vision -> caption (rest: generation)
    max_frames: int | None = None  # video: keep linspace(0, n-1, max_frames) frames when longer
    pack_group: str | None = None  # sources with different groups never share a sequence

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(self.weight > 0, "weight", "must be > 0")
        require(0.0 <= self.understanding_share <= 1.0, "understanding_share", "must lie in [0, 1]")
        require(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        if self.kind not in ("image_text", "video_text"):
            require(self.understanding_share == 0.5, "understanding_share", f"applies to image/video sources, not {self.kind}")
        if self.kind != "video_text":
            require(self.max_frames is None, "max_frames", f"applies to video_text sources, not {self.kind}")

    @property
    def group(self) -> str:
        """Packing group: book-QA chats pack apart from dense data (LWM: <1% loss tokens)."""
        if self.pack_group:
            return self.pack_group
        return "book_qa" if self.kind == "book_qa_chat" else "dense"


@dataclass(frozen=True)
class MixtureConfig:
    """Sources, their target token shares, and the packing and loss policies."""

    sources: tuple[SourceConfig, ...]
    seed: int = 0
    on_exhausted: Literal["repeat", "stop"] = "repeat"
    loss_weighting: Literal["per_example", "per_token"] = "per_example"
    vision_loss_weight: float = 0.5  # LWM: 0.5 * vision CE + 0.5 * text CE
    text_loss_weight: float = 0.5
    overlong: Literal["truncate", "drop", "split"] = "truncate"
    max_segments_per_sequence: int | None = None
    format_version: int = MIXTURE_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, MIXTURE_VERSION, "mixture config")
        require(len(self.sources) > 0, "sources", "must name at least one source")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "sources", f"source names repeat: {dup}")
        require(self.vision_loss_weight >= 0, "vision_loss_weight", "must be >= 0")
        require(self.text_loss_weight >= 0, "text_loss_weight", "must be >= 0")
        require(self.vision_loss_weight + self.text_loss_weight > 0, "text_loss_weight", "both loss weights are 0")
        require(
            self.max_segments_per_sequence is None or self.max_segments_per_sequence >= 1,
            "max_segments_per_sequence",
            "must be >= 1",
        )

    @property
    def shares(self) -> dict[str, float]:
        """Normalised target token share per source name."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}
