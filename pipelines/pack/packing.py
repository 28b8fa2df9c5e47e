"""Bin packing of examples into fixed-length sequences, over a bounded buffer.

The packer sees examples one at a time (a stream, so memory stays bounded), collects
``buffer_size`` of them, places the buffer into open sequences ("bins" of ``capacity``
tokens) and closes bins when they are full, hit the segment cap, or when more than
``max_open`` are open (the fullest close first). Algorithms:

* ``best_fit_decreasing`` -- sort the buffer longest first; put each example into the open
  bin it fills most tightly (least room left that still fits). The default: published
  comparisons (and ``benchmarks/bench_packing.py``) show it wastes far less padding.
* ``first_fit`` -- arrival order; the first open bin (oldest first) with room.
* ``next_fit`` -- the naive baseline: one open bin, closed when the next example does not fit.

Everything is deterministic: the same items in the same order give the same bins. The
packer never cuts an example; :func:`cut_points` / :func:`split_lengths` say where an
over-long example may be cut (never inside a frame's block of codes).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lwmkit.schemas.mixture import PACKERS, PackerName

ALGORITHMS = PACKERS  # the names the mixture config accepts


@dataclass
class _Bin:
    seq: int  # creation order: ties and first-fit order
    room: int
    items: list[Hashable] = field(default_factory=list)


class StreamingPacker:
    """Packs ``(handle, length)`` items into bins of ``capacity``; yields bins as handle lists.

    Usage::

        packer = StreamingPacker(32768)
        for handle, n in items:
            for bin_ in packer.add(handle, n): ...
        for bin_ in packer.flush(): ...

    Each returned bin is the list of handles placed in it, in placement order.
    """

    def __init__(
        self,
        capacity: int,
        *,
        algorithm: PackerName = "best_fit_decreasing",
        buffer_size: int = 4096,
        max_segments: int | None = None,
        max_open: int = 512,
    ) -> None:
        if capacity < 1 or buffer_size < 1 or max_open < 1:
            raise ValueError("capacity, buffer_size and max_open must be >= 1")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown packing algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
        if max_segments is not None and max_segments < 1:
            raise ValueError("max_segments must be >= 1")
        self.capacity = capacity
        self.algorithm = algorithm
        self.buffer_size = buffer_size if algorithm != "next_fit" else 1
        self.max_segments = max_segments
        self.max_open = max_open if algorithm != "next_fit" else 1
        self._buffer: list[tuple[Hashable, int]] = []
        self._open: dict[int, _Bin] = {}
        self._by_room: list[tuple[int, int]] = []  # (room, seq) of open bins, sorted
        self._next_seq = 0

    def add(self, handle: Hashable, length: int) -> list[list[Hashable]]:
        """Queue one item; returns the bins this closed (often none)."""
        if not 1 <= length <= self.capacity:
            raise ValueError(f"item {handle!r} has length {length}, outside [1, {self.capacity}]")
        self._buffer.append((handle, length))
        if len(self._buffer) >= self.buffer_size:
            return self._drain()
        return []

    def flush(self) -> list[list[Hashable]]:
        """Place what is buffered and close every open bin."""
        closed = self._drain()
        closed += self._close(sorted(self._open.values(), key=lambda b: (b.room, b.seq)))
        return closed

    def _drain(self) -> list[list[Hashable]]:
        items, self._buffer = self._buffer, []
        if self.algorithm == "best_fit_decreasing":
            items = sorted(items, key=lambda it: -it[1])  # stable: ties keep arrival order
        closed: list[list[Hashable]] = []
        for handle, length in items:
            bin_ = self._choose(length)
            if bin_ is None:
                if self.algorithm == "next_fit" and self._open:
                    closed += self._close(list(self._open.values()))
                bin_ = self._new_bin()
            self._place(bin_, handle, length)
            if bin_.room == 0 or (self.max_segments is not None and len(bin_.items) >= self.max_segments):
                closed += self._close([bin_])
        if len(self._open) > self.max_open:  # bounded state: the fullest bins gain least by waiting
            by_fill = sorted(self._open.values(), key=lambda b: (b.room, b.seq))
            closed += self._close(by_fill[: len(self._open) - self.max_open])
        return closed

    def _choose(self, length: int) -> _Bin | None:
        if self.algorithm == "best_fit_decreasing":
            i = bisect.bisect_left(self._by_room, (length, -1))
            return self._open[self._by_room[i][1]] if i < len(self._by_room) else None
        for bin_ in self._open.values():  # dict order = creation order: oldest first
            if bin_.room >= length:
                return bin_
        return None

    def _new_bin(self) -> _Bin:
        bin_ = _Bin(self._next_seq, self.capacity)
        self._next_seq += 1
        self._open[bin_.seq] = bin_
        bisect.insort(self._by_room, (bin_.room, bin_.seq))
        return bin_

    def _unindex(self, bin_: _Bin) -> None:
        del self._by_room[bisect.bisect_left(self._by_room, (bin_.room, bin_.seq))]

    def _place(self, bin_: _Bin, handle: Hashable, length: int) -> None:
        self._unindex(bin_)
        bin_.room -= length
        bin_.items.append(handle)
        bisect.insort(self._by_room, (bin_.room, bin_.seq))

    def _close(self, bins: Iterable[_Bin]) -> list[list[Hashable]]:
        out = []
        for bin_ in bins:
            del self._open[bin_.seq]
            self._unindex(bin_)
            out.append(bin_.items)
        return out


def pack_lengths(
    lengths: Sequence[int],
    capacity: int,
    *,
    algorithm: PackerName = "best_fit_decreasing",
    buffer_size: int = 4096,
    max_segments: int | None = None,
    max_open: int = 512,
) -> list[list[int]]:
    """Bins (lists of indices into ``lengths``) for a whole list of item lengths."""
    packer = StreamingPacker(
        capacity, algorithm=algorithm, buffer_size=buffer_size, max_segments=max_segments, max_open=max_open
    )
    bins: list[list[int]] = []
    for i, n in enumerate(lengths):
        bins += packer.add(i, int(n))
    return bins + packer.flush()


def packing_efficiency(bins: Sequence[Sequence[int]], lengths: Sequence[int], capacity: int) -> float:
    """Used tokens / (sequences * capacity); 0.0 when there are no sequences."""
    if not bins:
        return 0.0
    used = sum(int(lengths[i]) for b in bins for i in b)
    return used / (len(bins) * capacity)


def cut_points(ids: np.ndarray, vision_mask: np.ndarray, end_markers: tuple[int, ...]) -> np.ndarray:
    """Positions ``c`` (1..n) where a stream may be cut before token ``c``.

    A cut between two vision tokens is allowed only right after a frame's end marker, so a
    frame's 256 codes and its marker always stay together. Everything else may be cut.
    """
    ids, vm = np.asarray(ids), np.asarray(vision_mask, dtype=bool)
    n = ids.size
    c = np.arange(1, n + 1)
    inside = np.zeros(n, dtype=bool)
    inside[:-1] = vm[:-1] & vm[1:] & ~np.isin(ids[:-1], end_markers)
    return c[~inside]


def split_lengths(allowed: np.ndarray, n: int, capacity: int) -> list[tuple[int, int]]:
    """``(start, end)`` pieces of a stream of ``n`` tokens, each <= capacity, cut greedily at
    the furthest allowed point. Raises ValueError when one unit is longer than ``capacity``."""
    pieces, start = [], 0
    allowed = np.asarray(allowed)
    while start < n:
        limit = start + capacity
        if limit >= n:
            pieces.append((start, n))
            break
        i = int(np.searchsorted(allowed, limit, side="right")) - 1
        end = int(allowed[i]) if i >= 0 else start
        if end <= start:
            raise ValueError(f"no allowed cut within {capacity} tokens of position {start}")
        pieces.append((start, end))
        start = end
    return pieces
