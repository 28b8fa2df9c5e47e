"""The shard reader: each global batch is a pure function of (seed, stage, manifest, step).

Row order is an index permutation over the manifest's rows, one fresh permutation per epoch,
seeded by a hash of (seed, stage name, manifest sha256, epoch). Batch ``s`` takes rows
``s*B .. s*B+B-1`` of that endless order. Resuming therefore needs only the step (no
iterator is replayed), and any host count sees the same global batches: a host loads only
the rows and the slice of the sequence axis that its own devices hold under the batch
sharding. The ring-attention layout permutation is applied here, once, to every field.

Shards are read whole (local or fsspec URL), verified against the manifest's sha256 by
:class:`lwmkit.schemas.ShardSet`, decoded, and kept in a byte-bounded LRU cache; a thread
pool prepares the next ``prefetch`` steps while the current one trains.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lwmkit.schemas import PACKED_ARRAYS, ContractError, ShardSet

FIELDS: tuple[str, ...] = tuple(PACKED_ARRAYS)
Piece = tuple[tuple[int, int], tuple[int, int]]  # (rows [start, stop), sequence [start, stop))


def epoch_permutation(seed: int, stage: str, manifest_sha: str, epoch: int, n_rows: int) -> np.ndarray:
    """The row order of one epoch: a permutation of ``range(n_rows)`` fixed by its inputs."""
    digest = hashlib.sha256(f"lwmkit-rows/{seed}/{stage}/{manifest_sha}/{epoch}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
    return rng.permutation(n_rows)


@dataclass(frozen=True)
class BatchPlan:
    """Which manifest rows make up each global batch."""

    seed: int
    stage: str
    manifest_sha: str
    n_rows: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.n_rows <= 0:
            raise ContractError("the shard set holds no sequences", field="n_sequences")
        if self.batch_size <= 0:
            raise ContractError("must be positive", field="batch_size")

    def rows(self, step: int) -> np.ndarray:
        """Manifest row indices (int64, ``[batch_size]``) of global batch ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        flat = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(flat, self.n_rows)
        out = np.empty_like(flat)
        for epoch in np.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[within[sel]]
        return out

    def _perm(self, epoch: int) -> np.ndarray:
        return _cached_perm(self.seed, self.stage, self.manifest_sha, epoch, self.n_rows)


_PERMS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_PERMS_LOCK = threading.Lock()


def _cached_perm(seed: int, stage: str, sha: str, epoch: int, n_rows: int) -> np.ndarray:
    key = (seed, stage, sha, epoch, n_rows)
    with _PERMS_LOCK:
        if key in _PERMS:
            _PERMS.move_to_end(key)
            return _PERMS[key]
    perm = epoch_permutation(seed, stage, sha, epoch, n_rows)
    with _PERMS_LOCK:
        _PERMS[key] = perm
        while len(_PERMS) > 4:
            _PERMS.popitem(last=False)
    return perm


def _check_ids(rows: dict[str, np.ndarray], vocab, where: str) -> None:
    """Token ids inside the manifest's vocabularies: an id out of range would be gathered
    silently (clamped) by the embedding, so it is refused here instead."""
    for ids, mask in (("input_ids", "vision_mask"), ("target_ids", "target_vision_mask")):
        values, vision = rows[ids], rows[mask]
        text_bad = (values[~vision] < 0) | (values[~vision] >= vocab.text_vocab_size)
        vision_bad = (values[vision] < 0) | (values[vision] >= vocab.vision_vocab_size)
        if text_bad.any() or vision_bad.any():
            bad = values[~vision][text_bad] if text_bad.any() else values[vision][vision_bad]
            kind = "text" if text_bad.any() else "vision"
            raise ContractError(f"{kind} id {int(bad[0])} is outside the manifest's {kind} vocabulary", field=ids, source=where)


class RowStore:
    """Random access to the rows of a shard set, shard-granular, through an LRU cache."""

    def __init__(self, shards: ShardSet, *, cache_bytes: int = 1 << 30, verify: bool = True):
        self.shards = shards
        self.verify = verify
        self.cache_bytes = cache_bytes
        counts = [s.n_samples for s in shards.manifest.shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Event] = {}
        self.shard_reads = 0

    @property
    def n_rows(self) -> int:
        return self._starts[-1]

    def locate(self, row: int) -> tuple[int, int]:
        """(shard index, position in shard) of a manifest row."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} outside 0..{self.n_rows - 1}")
        shard = bisect.bisect_right(self._starts, row) - 1
        return shard, row - self._starts[shard]

    def shard(self, index: int) -> dict[str, np.ndarray]:
        """All rows of one shard, stacked per field (``[n_samples, seq_len]``)."""
        while True:
            with self._lock:
                if index in self._cache:
                    self._cache.move_to_end(index)
                    return self._cache[index]
                event = self._loading.get(index)
                if event is None:  # this thread loads it; others wait for it
                    event = self._loading[index] = threading.Event()
                    break
            event.wait()
        try:
            stacked = self._load(index)
        finally:
            with self._lock:
                self._loading.pop(index).set()
        return stacked

    def _load(self, index: int) -> dict[str, np.ndarray]:
        seq_len = self.shards.manifest.seq_len
        rows = list(self.shards.iter_shard(index, verify=self.verify))
        stacked = {name: np.stack([a[name] for a, _ in rows]) for name in FIELDS}
        for name, arr in stacked.items():
            if arr.shape[1] != seq_len:
                where = self.shards.shard_path(self.shards.manifest.shards[index])
                raise ContractError(f"rows have length {arr.shape[1]}, manifest says {seq_len}", field=name, source=where)
        _check_ids(stacked, self.shards.manifest.vocab, self.shards.shard_path(self.shards.manifest.shards[index]))
        size = sum(a.nbytes for a in stacked.values())
        with self._lock:
            self.shard_reads += 1
            self._cache[index] = stacked
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(a.nbytes for a in old.values())
        return stacked

    def gather(self, rows: Sequence[int], columns: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Fields ``[len(rows), len(columns)]`` for the given manifest rows and sequence columns."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
        for row in rows:
            shard, pos = self.locate(int(row))
            data = self.shard(shard)
            for name in FIELDS:
                out[name].append(data[name][pos, columns])
        return {name: np.stack(parts) for name, parts in out.items()}


class ShardReader:
    """Host-local pieces of global batches, prefetched on a thread pool.

    ``layout`` is the ring-attention sequence permutation (``permuted = row[layout]``), or
    None for the contiguous layout. ``pieces(step)`` returns, for each requested piece
    (rows, sequence range) of the global ``[B, L]`` batch, its arrays.
    """

    def __init__(
        self,
        shards: ShardSet,
        plan: BatchPlan,
        *,
        layout: np.ndarray | None = None,
        prefetch: int = 2,
        cache_bytes: int = 1 << 30,
        verify: bool = True,
    ):
        seq_len = shards.manifest.seq_len
        if layout is not None and sorted(np.asarray(layout).tolist()) != list(range(seq_len)):
            raise ValueError(f"layout must be a permutation of range({seq_len})")
        if plan.n_rows != shards.manifest.n_sequences:
            raise ValueError("plan.n_rows differs from the manifest's n_sequences")
        self.plan = plan
        self.seq_len = seq_len
        self.layout = None if layout is None else np.asarray(layout, dtype=np.int64)
        self.store = RowStore(shards, cache_bytes=cache_bytes, verify=verify)
        self.prefetch = prefetch
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(prefetch, 4)), thread_name_prefix="lwmkit-reader")
        self._futures: dict[tuple[int, tuple[Piece, ...]], Future] = {}

    def load(self, step: int, pieces: Sequence[Piece]) -> dict[Piece, dict[str, np.ndarray]]:
        """Arrays of each piece of global batch ``step`` (synchronously)."""
        rows = self.plan.rows(step)
        out = {}
        for piece in pieces:
            (r0, r1), (c0, c1) = piece
            columns = slice(c0, c1) if self.layout is None else self.layout[c0:c1]
            out[piece] = self.store.gather(rows[r0:r1], columns)
        return out

    def get(self, step: int, pieces: Sequence[Piece]) -> dict[Piece, dict[str, np.ndarray]]:
        """Like :meth:`load`, served from prefetch, and schedules the next steps."""
        key = (step, tuple(pieces))
        future = self._futures.pop(key, None)
        for ahead in range(1, self.prefetch + 1):
            nxt = (step + ahead, tuple(pieces))
            if nxt not in self._futures:
                self._futures[nxt] = self._pool.submit(self.load, step + ahead, pieces)
        for stale in [k for k in self._futures if k[0] <= step]:
            self._futures.pop(stale).cancel()
        return future.result() if future is not None else self.load(step, pieces)

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bounds(index: tuple[slice, ...], shape: tuple[int, int]) -> Piece:
    rows, cols = (index + (slice(None), slice(None)))[:2]
    r = rows.indices(shape[0])
    c = cols.indices(shape[1])
    return (r[0], r[1]), (c[0], c[1])


def local_pieces(sharding, shape: tuple[int, int]) -> dict:
    """Map each of this host's devices to the piece of the ``[B, L]`` batch it holds."""
    return {dev: _bounds(idx, shape) for dev, idx in sharding.addressable_devices_indices_map(shape).items()}


def global_batch(reader: ShardReader, step: int, sharding) -> dict:
    """The global batch ``step`` as jax Arrays ``[B, L]`` under ``sharding``, built from this
    host's pieces only (the rows and sequence slices its devices hold)."""
    import jax

    shape = (reader.plan.batch_size, reader.seq_len)
    by_device = local_pieces(sharding, shape)
    pieces = sorted(set(by_device.values()))
    data = reader.get(step, pieces)
    batch = {}
    for name, dtype in PACKED_ARRAYS.items():
        arrays = [jax.device_put(data[piece][name].astype(dtype, copy=False), dev) for dev, piece in by_device.items()]
        batch[name] = jax.make_array_from_single_device_arrays(shape, sharding, arrays)
    return batch
