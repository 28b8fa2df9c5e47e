"""Packed shard sets on disk or in a bucket: deterministic webdataset tars + ``manifest.json``.

Writers build each tar in memory with fixed metadata (so the same samples give the same
bytes), write it under a temporary name and rename it; the manifest is written last and
readers trust only the shards it lists, checking each one's size and sha256.
Paths are local or any fsspec URL (``s3://``, ``gs://``, ``memory://``).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.manifest import MANIFEST_NAME, Manifest, ShardEntry, load_manifest
from lwmkit.schemas.packed import PackedMeta, decode_sample

Sample = dict[str, bytes | str]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def build_shard(samples: Iterable[Sample]) -> bytes:
    """A webdataset tar (``{key}.{ext}`` members, samples in the given order) with fixed
    mtime/owner/mode, so equal samples always give byte-identical shards."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = str(sample["__key__"])
            if not key or "." in key or "/" in key:
                raise ContractError(f"sample key {key!r} must be non-empty without '.' or '/'", field="__key__")
            for ext in sorted(k for k in sample if k != "__key__"):
                data = sample[ext]
                data = data.encode("utf-8") if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_entry(name: str, data: bytes, n_samples: int) -> ShardEntry:
    return ShardEntry(name=name, n_samples=n_samples, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def iter_tar_samples(
    data: bytes | BinaryIO,
    *,
    source: str = "",
    members: frozenset[str] | None = None,
    cap: int | None = None,
) -> Iterator[dict]:
    """Raw webdataset samples (``__key__`` + one entry per extension) from tar bytes, or from
    a file object read as a stream (members in order, nothing seeks: memory stays one sample).

    With ``members`` (extensions) or ``cap`` (bytes), only those members up to that size are
    read; any other member is skipped unread and listed under ``__refused__`` as
    ``(name, size, why)``, so a hostile shard cannot make the reader allocate what it claims.
    A broken tar raises ContractError naming ``source``, after the samples read before it."""
    stream = not isinstance(data, bytes | bytearray)
    fileobj, mode = (data, "r|") if stream else (io.BytesIO(data), "r:")
    current: dict | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode=mode) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = posixpath.basename(member.name).partition(".")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                unknown = members is not None and ext not in members
                if unknown or (cap is not None and member.size > cap):
                    why = "not a packed-sample member" if unknown else f"over the {cap}-byte cap"
                    current.setdefault("__refused__", []).append((member.name, member.size, why))
                    continue  # a stream skips the member's bytes without keeping them
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as err:
        raise ContractError(f"is not a readable tar ({type(err).__name__}: {err})", source=source) from None
    if current is not None:
        yield current


@dataclass
class ShardSet:
    """A manifest and the shards it lists. Nothing outside the manifest is read."""

    root: str
    manifest: Manifest

    @classmethod
    def open(cls, path: str) -> ShardSet:
        """``path`` is the shard folder or its ``manifest.json`` (local or URL)."""
        if path.endswith(".json"):
            root, manifest_path = path.rsplit("/", 1)[0] if "/" in path else ".", path
        else:
            root, manifest_path = path.rstrip("/"), f"{path.rstrip('/')}/{MANIFEST_NAME}"
        return cls(root, load_manifest(manifest_path))

    def shard_path(self, entry: ShardEntry) -> str:
        return f"{self.root}/{entry.name}"

    def read_shard_bytes(self, index: int, *, verify: bool = True) -> bytes:
        """One shard's bytes, checked against the manifest's size and sha256."""
        entry = self.manifest.shards[index]
        path = self.shard_path(entry)
        fs, p = _fs(path)
        try:
            with fs.open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ContractError("shard listed in the manifest is missing", source=path) from None
        if verify:
            if len(data) != entry.size_bytes:
                raise ContractError(f"size {len(data)} != manifest's {entry.size_bytes}", field="size_bytes", source=path)
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.sha256:
                raise ContractError(f"sha256 {digest[:12]}… != manifest's {entry.sha256[:12]}…", field="sha256", source=path)
        return data

    def iter_shard(self, index: int, *, verify: bool = True) -> Iterator[tuple[dict[str, np.ndarray], PackedMeta]]:
        """Decoded, validated samples of one shard, in order."""
        path = self.shard_path(self.manifest.shards[index])
        count = 0
        for raw in iter_tar_samples(self.read_shard_bytes(index, verify=verify), source=path):
            count += 1
            yield decode_sample(raw, source=f"{path}:{raw['__key__']}", seq_len=self.manifest.seq_len)
        expected = self.manifest.shards[index].n_samples
        if count != expected:
            raise ContractError(f"holds {count} samples, manifest says {expected}", field="n_samples", source=path)

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], PackedMeta]]:
        for i in range(len(self.manifest.shards)):
            yield from self.iter_shard(i)
