"""Mergeable, fixed-size tallies for the shard audit (``pipelines/audit/job.py``).

Everything here is bounded by the number of sources and modalities, never by the number of
sequences: lengths go into log-spaced histograms, so a recount of a petabyte shard set fits
in the same few kilobytes as a recount of one shard. Every type merges associatively, which
is what lets the recount run as a local loop or as a Beam ``CombineGlobally``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_LINEAR = 8  # values 0..7 get a bin each
_PER_OCTAVE = 4  # above that, 4 bins per doubling: relative bin width <= 25%


def bin_index(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each non-negative integer (vectorised)."""
    v = np.asarray(values, dtype=np.int64)
    octave = np.floor(np.log2(np.maximum(v, 1))).astype(np.int64)
    sub = (v >> np.maximum(octave - 2, 0)) & (_PER_OCTAVE - 1)
    return np.where(v < _LINEAR, v, _LINEAR + (octave - 3) * _PER_OCTAVE + sub)


def bin_lower(index: int) -> int:
    """Smallest value that falls into bin ``index``."""
    if index < _LINEAR:
        return index
    octave, sub = 3 + (index - _LINEAR) // _PER_OCTAVE, (index - _LINEAR) % _PER_OCTAVE
    return (_PER_OCTAVE + sub) << (octave - 2)


@dataclass
class Histogram:
    """Counts of integer values in log-spaced bins, plus exact count/sum/min/max."""

    bins: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    min: int | None = None
    max: int | None = None

    def add(self, values: np.ndarray | list[int]) -> None:
        v = np.asarray(values, dtype=np.int64)
        if v.size == 0:
            return
        idx, counts = np.unique(bin_index(v), return_counts=True)
        for i, c in zip(idx.tolist(), counts.tolist(), strict=True):
            self.bins[i] = self.bins.get(i, 0) + c
        self.count += int(v.size)
        self.total += int(v.sum())
        lo, hi = int(v.min()), int(v.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def merge(self, other: Histogram) -> Histogram:
        out = Histogram(dict(self.bins), self.count + other.count, self.total + other.total)
        for i, c in other.bins.items():
            out.bins[i] = out.bins.get(i, 0) + c
        mins = [m for m in (self.min, other.min) if m is not None]
        maxs = [m for m in (self.max, other.max) if m is not None]
        out.min, out.max = (min(mins) if mins else None), (max(maxs) if maxs else None)
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Approximate quantile (linear inside the bin, clamped to the exact min/max)."""
        if not self.count:
            return 0.0
        target, seen = q * self.count, 0
        for i in sorted(self.bins):
            c = self.bins[i]
            if seen + c >= target:
                lo, hi = bin_lower(i), bin_lower(i + 1)
                value = lo + (hi - lo) * ((target - seen) / c)
                return float(min(max(value, self.min), self.max))
            seen += c
        return float(self.max)

    def edges_and_counts(self) -> tuple[list[int], list[int]]:
        """Contiguous bin edges (one more than counts) from the lowest to the highest bin; the
        outer edges are clamped to the exact min and max + 1 (a plot never overshoots them)."""
        if not self.bins:
            return [], []
        lo, hi = min(self.bins), max(self.bins)
        edges = [bin_lower(i) for i in range(lo, hi + 2)]
        edges[0], edges[-1] = max(edges[0], self.min), min(edges[-1], self.max + 1)
        return edges, [self.bins.get(i, 0) for i in range(lo, hi + 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count, "mean": round(self.mean, 3), "min": self.min, "max": self.max,
            "p50": round(self.quantile(0.5), 1), "p90": round(self.quantile(0.9), 1), "p99": round(self.quantile(0.99), 1),
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"bins": {str(k): v for k, v in sorted(self.bins.items())}, "count": self.count,
                "total": self.total, "min": self.min, "max": self.max}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        return cls({int(k): int(v) for k, v in d["bins"].items()}, d["count"], d["total"], d["min"], d["max"])


@dataclass
class Tally:
    """What one (source, modality) contributes: counted from the arrays, not from meta.json."""

    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0  # positions with a non-zero loss weight
    vision_tokens: int = 0
    loss_weight: float = 0.0  # the summed weights: the share of the gradient this slice gets
    frames: int = 0
    truncated: int = 0
    sequences: int = 0  # sequences holding at least one example of this slice

    def merge(self, other: Tally) -> Tally:
        return Tally(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})


@dataclass
class ShardCheck:
    """What reading one shard found. ``problems`` is capped; ``n_problems`` is the true count."""

    name: str
    status: str = "ok"  # ok | missing | corrupt
    n_samples: int = 0
    size_bytes: int = 0
    sha256: str = ""
    problems: list[str] = field(default_factory=list)
    n_problems: int = 0

    def problem(self, message: str, cap: int) -> None:
        self.status = "corrupt" if self.status == "ok" else self.status
        self.n_problems += 1
        if len(self.problems) < cap:
            self.problems.append(message)


@dataclass
class Recount:
    """The recount of (part of) a shard set; ``merge`` two parts to get their union."""

    n_sequences: int = 0
    tokens: int = 0
    padding_tokens: int = 0
    slices: dict[str, dict[str, Tally]] = field(default_factory=dict)  # source -> modality -> tally
    sequence_tokens: Histogram = field(default_factory=Histogram)  # non-padding tokens per sequence
    segments_per_sequence: Histogram = field(default_factory=Histogram)
    example_tokens: dict[str, Histogram] = field(default_factory=dict)  # per source
    frames_per_example: dict[str, Histogram] = field(default_factory=dict)  # per vision source
    shards: list[ShardCheck] = field(default_factory=list)

    def tally(self, source: str, modality: str) -> Tally:
        return self.slices.setdefault(source, {}).setdefault(modality, Tally())

    def merge(self, other: Recount) -> Recount:
        out = Recount(
            self.n_sequences + other.n_sequences, self.tokens + other.tokens,
            self.padding_tokens + other.padding_tokens,
            sequence_tokens=self.sequence_tokens.merge(other.sequence_tokens),
            segments_per_sequence=self.segments_per_sequence.merge(other.segments_per_sequence),
            shards=sorted(self.shards + other.shards, key=lambda s: s.name),
        )  # fmt: skip
        for part in (self, other):
            for src, mods in part.slices.items():
                for mod, t in mods.items():
                    out.slices.setdefault(src, {})[mod] = out.tally(src, mod).merge(t)
            for attr in ("example_tokens", "frames_per_example"):
                mine = getattr(out, attr)
                for src, h in getattr(part, attr).items():
                    mine[src] = mine.get(src, Histogram()).merge(h)
        return out

    def by_source(self) -> dict[str, Tally]:
        return {s: _sum(m.values()) for s, m in sorted(self.slices.items())}

    def by_modality(self) -> dict[str, Tally]:
        out: dict[str, Tally] = {}
        for mods in self.slices.values():
            for mod, t in mods.items():
                out[mod] = out.get(mod, Tally()).merge(t)
        return dict(sorted(out.items()))

    @property
    def packing_efficiency(self) -> float:
        total = self.tokens + self.padding_tokens
        return self.tokens / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_sequences": self.n_sequences, "tokens": self.tokens, "padding_tokens": self.padding_tokens,
            "slices": {s: {m: asdict(t) for m, t in mods.items()} for s, mods in self.slices.items()},
            "sequence_tokens": self.sequence_tokens.to_dict(),
            "segments_per_sequence": self.segments_per_sequence.to_dict(),
            "example_tokens": {s: h.to_dict() for s, h in self.example_tokens.items()},
            "frames_per_example": {s: h.to_dict() for s, h in self.frames_per_example.items()},
            "shards": [asdict(s) for s in self.shards],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recount:
        return cls(
            d["n_sequences"], d["tokens"], d["padding_tokens"],
            slices={s: {m: Tally(**t) for m, t in mods.items()} for s, mods in d["slices"].items()},
            sequence_tokens=Histogram.from_dict(d["sequence_tokens"]),
            segments_per_sequence=Histogram.from_dict(d["segments_per_sequence"]),
            example_tokens={s: Histogram.from_dict(h) for s, h in d["example_tokens"].items()},
            frames_per_example={s: Histogram.from_dict(h) for s, h in d["frames_per_example"].items()},
            shards=[ShardCheck(**s) for s in d["shards"]],
        )  # fmt: skip


def _sum(tallies: Any) -> Tally:
    out = Tally()
    for t in tallies:
        out = out.merge(t)
    return out


def share(part: float, whole: float) -> float:
    """``part / whole``, 0 for an empty whole (never NaN in a report)."""
    return part / whole if whole else 0.0


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
