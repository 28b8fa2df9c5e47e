"""One shard set as the audit sees it: its manifest read leniently, and each shard streamed,
verified and counted without trusting the manifest.

:func:`recount_shard` is the per-shard function both recounts run (the local pass in
:mod:`lwmkit.pipelines.audit.job`, the Beam job in :mod:`lwmkit.pipelines.audit.recount_job`). A shard is
streamed once (tar members as they arrive, hashed on the way), so memory is bounded by one
sample, never by a shard.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass

import numpy as np

from lwmkit.pipelines.audit.stats import Histogram, Recount, ShardCheck
from lwmkit.runtime.files import is_temporary
from lwmkit.schemas import (
    MANIFEST_NAME,
    PACKED_ARRAYS,
    ContractError,
    Manifest,
    ShardEntry,
    decode_sample,
    from_dict,
)
from lwmkit.schemas.packed import META_KEY
from lwmkit.schemas.shards import iter_tar_samples

_CHUNK = 1 << 20
_MEMBERS = frozenset([META_KEY, *(f"{name}.npy" for name in PACKED_ARRAYS)])  # what a packed sample holds
_NO_SEQ_LEN_CAP = 256 << 20  # per member, when a broken manifest gives no seq_len to size it by


@dataclass(frozen=True)
class ShardSetRef:
    """Where a set lives and what its manifest lists; ``manifest`` is None when the manifest
    breaks its contract (its shard list is then read leniently so the shards still get checked)."""

    root: str
    manifest_path: str
    manifest: Manifest | None
    shards: tuple[ShardEntry, ...]
    seq_len: int | None
    end_markers: tuple[int, int]  # end-of-frame and end-of-vision ids: one of them closes each frame
    manifest_error: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(s.size_bytes for s in self.shards)


def open_shard_set(path: str) -> ShardSetRef:
    """Read the manifest of a shard folder (or of ``.../manifest.json``), local or a bucket URL.

    A manifest that is not there raises ContractError; one that breaks its contract is kept
    as an error message, with every shard entry that still parses."""
    import fsspec

    root, manifest_path = _locate(path)
    try:
        with fsspec.open(manifest_path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise ContractError(
            "manifest not found (is this a packed shard set?)", source=manifest_path
        ) from None
    except OSError as err:  # permissions, a bucket that refuses us: the input is unusable
        message = f"manifest cannot be read ({type(err).__name__}: {err})"
        raise ContractError(message, source=manifest_path) from None
    try:
        m = Manifest.from_json(text, source=manifest_path)
    except ContractError as err:
        return _lenient(root, manifest_path, text, str(err))
    markers = (m.vocab.end_of_frame_id, m.vocab.end_of_vision_id)
    return ShardSetRef(root, manifest_path, m, m.shards, m.seq_len, markers)


def _locate(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    if path.endswith(".json"):
        root = posixpath.dirname(path) if "://" in path else (posixpath.dirname(path) or ".")
        return root, path
    return path, f"{path}/{MANIFEST_NAME}"


def _lenient(root: str, manifest_path: str, text: bytes, error: str) -> ShardSetRef:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = {}
    data = data if isinstance(data, dict) else {}
    entries = []
    for i, raw in enumerate(data.get("shards") or []):
        try:
            entries.append(from_dict(ShardEntry, raw, source=f"{manifest_path}: shards[{i}]"))
        except ContractError:
            continue
    seq_len = data.get("seq_len") if isinstance(data.get("seq_len"), int) else None
    vocab = data.get("vocab") if isinstance(data.get("vocab"), dict) else {}
    markers = (int(vocab.get("end_of_frame_id", 8192)), int(vocab.get("end_of_vision_id", 8193)))
    return ShardSetRef(root, manifest_path, None, tuple(entries), seq_len, markers, manifest_error=error)


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, f) -> None:
        self._f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def recount_shard(ref: ShardSetRef, entry: ShardEntry, *, cap: int = 20) -> Recount:
    """Stream one shard: verify size, sha256 and sample count against ``entry``; count every
    valid sample; record every problem (with the sample key) against the shard."""
    import fsspec

    rc, check = Recount(), ShardCheck(entry.name)
    rc.shards.append(check)
    path = f"{ref.root}/{entry.name}"
    fs, p = fsspec.core.url_to_fs(path)
    try:
        with fs.open(p, "rb") as f:
            reader = _HashingReader(f)
            _count_stream(rc, check, reader, ref, path, cap)
            reader.drain()
    except FileNotFoundError:
        check.status, check.n_problems = "missing", 1
        check.problems = [f"listed in the manifest but not found at {path}"]
        return rc
    except OSError as err:  # permissions, a bucket that refuses us: this shard is lost, the audit goes on
        check.problem(f"cannot be read ({type(err).__name__}: {err})", cap)
        return rc
    check.size_bytes, check.sha256 = reader.size, reader.sha.hexdigest()
    if check.size_bytes != entry.size_bytes:
        check.problem(f"size {check.size_bytes} bytes, manifest says {entry.size_bytes}", cap)
    if check.sha256 != entry.sha256:
        check.problem(f"sha256 {check.sha256[:12]}… differs from the manifest's {entry.sha256[:12]}…", cap)
    if check.n_samples != entry.n_samples:
        check.problem(f"holds {check.n_samples} samples, manifest says {entry.n_samples}", cap)
    return rc


def member_cap(seq_len: int | None) -> int:
    """Largest member a sample of ``seq_len`` can need (a meta.json of seq_len one-token segments)."""
    return (64 << 10) + 256 * seq_len if seq_len else _NO_SEQ_LEN_CAP


def _count_stream(
    rc: Recount, check: ShardCheck, reader: _HashingReader, ref: ShardSetRef, path: str, cap: int
) -> None:
    try:
        for raw in iter_tar_samples(reader, source=path, members=_MEMBERS, cap=member_cap(ref.seq_len)):
            check.n_samples += 1
            where = f"{path}:{raw['__key__']}"
            if raw.get("__refused__"):
                name, size, why = raw["__refused__"][0]
                check.problem(f"invalid sample: {where}: member {name} ({size} bytes) {why}; not read", cap)
                continue
            try:  # the manifest's seq_len bounds every array before it is allocated
                arrays, meta = decode_sample(raw, source=where, seq_len=ref.seq_len)
            except ContractError as err:
                check.problem(f"invalid sample: {err}", cap)
                continue
            count_sample(rc, arrays, meta, ref.end_markers)
    except (tarfile.TarError, EOFError, ValueError, ContractError) as err:
        check.problem(f"unreadable tar after {check.n_samples} samples ({type(err).__name__}: {err})", cap)


def count_sample(rc: Recount, arrays: dict[str, np.ndarray], meta, end_markers: tuple[int, int]) -> None:
    """Add one validated packed sequence to ``rc``. Counts come from the arrays; meta.json
    only says which source and modality each segment belongs to."""
    seg, n = arrays["segment_ids"], len(meta.segments)
    vm, w = arrays["vision_mask"], arrays["loss_weights"].astype(np.float64)
    frames_closed = vm & np.isin(arrays["input_ids"], end_markers)  # one end marker per frame

    def per_segment(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(seg, weights=weights, minlength=n + 1)

    tokens, loss = per_segment(), per_segment((w > 0).astype(np.float64))
    vision, weight, frames = (
        per_segment(vm.astype(np.float64)),
        per_segment(w),
        per_segment(frames_closed.astype(np.float64)),
    )
    real = int(meta.seq_len - tokens[0])
    rc.n_sequences += 1
    rc.tokens += real
    rc.padding_tokens += int(tokens[0])
    rc.sequence_tokens.add([real])
    rc.segments_per_sequence.add([n])
    lengths: dict[str, list[int]] = {}
    frame_counts: dict[str, list[int]] = {}
    for info in meta.segments:
        i = info.segment_id
        t = rc.tally(info.source, info.modality)
        t.examples += 1
        t.tokens += int(tokens[i])
        t.loss_tokens += int(loss[i])
        t.vision_tokens += int(vision[i])
        t.loss_weight += float(weight[i])
        t.frames += int(frames[i])
        t.truncated += int(info.truncated)
        lengths.setdefault(info.source, []).append(int(tokens[i]))
        if info.modality != "text":
            frame_counts.setdefault(info.source, []).append(int(frames[i]))
    for src in {(s.source, s.modality) for s in meta.segments}:
        rc.tally(*src).sequences += 1
    for src, values in lengths.items():
        rc.example_tokens.setdefault(src, Histogram()).add(values)
    for src, values in frame_counts.items():
        rc.frames_per_example.setdefault(src, Histogram()).add(values)


def unlisted_files(ref: ShardSetRef) -> list[str]:
    """Shard-like files beside the manifest that it does not list (leftovers, other runs)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(ref.root)
    try:
        names = [posixpath.basename(x) for x in fs.ls(p, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    listed = {s.name for s in ref.shards}
    return sorted(n for n in names if (n.endswith(".tar") or is_temporary(n)) and n not in listed)


def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="lwmkit-audit-")
