"""The mixture config (YAML): which sources go into a stage's shards, and in what shares.

Example::

    format_version: 1
    seed: 0
    sources:
      - {name: books, kind: book_qa_chat, path: "out/books/*.parquet", weight: 0.3}
      - {name: clips, kind: video_text, path: "out/vision/*.parquet", weight: 0.5,
         understanding_share: 0.5, max_frames: 32}
      - {name: web, kind: text, path: "data/*.jsonl", weight: 0.2}

Weights are target shares of the output's *tokens*. The pack job (``lwmkit pack``) reads
this file together with a stage name and sequence length; the policies below say what it
does with over-long examples, exhausted sources and loss weights, and every one of them is
counted in the manifest it writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from lwmkit.schemas.strict import check_format_version, require

MIXTURE_VERSION = 1
SourceKind = Literal["text", "image_text", "video_text", "book_qa_chat"]
PackerName = Literal["best_fit_decreasing", "first_fit", "next_fit"]
PACKERS: tuple[str, ...] = get_args(PackerName)
# Group names end up in shard file names and sample keys: no dots, slashes or spaces.
_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


@dataclass(frozen=True)
class SourceConfig:
    """One named source of a mixture."""

    name: str
    kind: SourceKind
    path: str  # glob, local or bucket (gs://, s3://); several globs separated by ","
    weight: float  # target share of the output's tokens (normalised over sources)
    text_field: str = "text"  # text sources in JSONL/Parquet: the column holding the document
    understanding_share: float = 0.5  # image/video: share formatted vision -> caption (rest: generation)
    max_frames: int | None = None  # video: keep linspace(0, n-1, max_frames) frames when longer
    pack_group: str | None = None  # sources with different groups never share a sequence
    prompt: str | None = None  # image/video understanding question (default: "Describe this image/video.")
    # book_qa_chat: keep only QA pairs whose grounding (the books job's QA gate) is at least this;
    # when set, pairs without a score (older records) are left out too. None: every pair.
    min_qa_grounding: float | None = None

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(bool(self.path.strip()), "path", "must not be empty")
        require(self.weight > 0, "weight", "must be > 0")
        require(0.0 <= self.understanding_share <= 1.0, "understanding_share", "must lie in [0, 1]")
        require(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        require(bool(self.text_field.strip()), "text_field", "must not be empty")
        if self.kind not in ("image_text", "video_text"):
            require(
                self.understanding_share == 0.5,
                "understanding_share",
                f"applies to image/video sources, not {self.kind}",
            )
            require(self.prompt is None, "prompt", f"applies to image/video sources, not {self.kind}")
        if self.min_qa_grounding is not None:
            require(
                self.kind == "book_qa_chat",
                "min_qa_grounding",
                f"applies to book_qa_chat sources, not {self.kind}",
            )
            require(0.0 <= self.min_qa_grounding <= 1.0, "min_qa_grounding", "must lie in [0, 1]")
        if self.kind != "video_text":
            require(self.max_frames is None, "max_frames", f"applies to video_text sources, not {self.kind}")
        if self.pack_group is not None:
            require(bool(_GROUP.match(self.pack_group)), "pack_group", "must be 1-40 of [A-Za-z0-9_-]")

    @property
    def group(self) -> str:
        """Packing group: book-QA chats pack apart from dense data (LWM: <1% loss tokens)."""
        if self.pack_group:
            return self.pack_group
        return "book_qa" if self.kind == "book_qa_chat" else "dense"

    @property
    def paths(self) -> tuple[str, ...]:
        """The globs of ``path`` (comma-separated), stripped."""
        return tuple(p.strip() for p in self.path.split(",") if p.strip())


@dataclass(frozen=True)
class MixtureConfig:
    """Sources, their target token shares, and the packing and loss policies."""

    sources: tuple[SourceConfig, ...]
    seed: int = 0
    # A source that runs out before its share is met: "repeat" it (whole epochs, counted) or
    # "stop" the output there (every source is cut to the first exhausted one's share).
    on_exhausted: Literal["repeat", "stop"] = "repeat"
    # Output size in tokens; None = the smallest output that uses every source once (repeat)
    # or the largest one no source runs out of (stop).
    total_tokens: int | None = None
    max_epochs: int = 16  # "repeat" refuses to cycle a source more often than this
    loss_weighting: Literal["per_example", "per_token"] = "per_example"
    vision_loss_weight: float = 0.5  # LWM: 0.5 * vision CE + 0.5 * text CE (the trainer applies it)
    text_loss_weight: float = 0.5
    # Examples longer than seq_len: keep the head ("truncate"), "drop" them, or "split" them
    # into pieces that fill whole sequences. Cuts never fall inside a frame's codes.
    overlong: Literal["truncate", "drop", "split"] = "truncate"
    max_segments_per_sequence: int | None = None
    packer: PackerName = "best_fit_decreasing"
    pack_buffer: int = 4096  # examples the packer sorts and places at a time (bounded memory)
    max_open_sequences: int = 512  # partially filled sequences kept open across buffers
    bucket_tokens: int = 1 << 25  # tokens per packing partition (memory per worker, parallelism)
    shard_tokens: int = 1 << 23  # tokens per shard file (about 22 bytes each on disk)
    format_version: int = MIXTURE_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, MIXTURE_VERSION, "mixture config")
        require(len(self.sources) > 0, "sources", "must name at least one source")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "sources", f"source names repeat: {dup}")
        require(self.total_tokens is None or self.total_tokens >= 1, "total_tokens", "must be >= 1")
        require(self.max_epochs >= 1, "max_epochs", "must be >= 1")
        require(self.vision_loss_weight >= 0, "vision_loss_weight", "must be >= 0")
        require(self.text_loss_weight >= 0, "text_loss_weight", "must be >= 0")
        require(
            self.vision_loss_weight + self.text_loss_weight > 0, "text_loss_weight", "both loss weights are 0"
        )
        require(
            self.max_segments_per_sequence is None or self.max_segments_per_sequence >= 1,
            "max_segments_per_sequence",
            "must be >= 1",
        )
        require(self.pack_buffer >= 1, "pack_buffer", "must be >= 1")
        require(self.max_open_sequences >= 1, "max_open_sequences", "must be >= 1")
        require(self.bucket_tokens >= 1, "bucket_tokens", "must be >= 1")
        require(self.shard_tokens >= 1, "shard_tokens", "must be >= 1")

    @property
    def shares(self) -> dict[str, float]:
        """Normalised target token share per source name."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)
