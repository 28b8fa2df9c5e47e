"""Packed shard sets on disk or in a bucket: deterministic webdataset tars + ``manifest.json``.

Writers build each tar in memory with fixed metadata (so the same samples give the same
bytes), write it under a temporary name and rename it; the manifest is written last and
readers trust only the shards it lists, checking each one's size and sha256.
Paths are local or any fsspec URL (``s3://``, ``gs://``, ``memory://``).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it into place (no torn files)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, p = _fs(path)
    parent = posixpath.dirname(p)
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, "wb") as f:
            f.write(data)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, p)  # fs.mv onto a folder would move the file *into* it, silently
        else:
            fs.mv(tmp, p)
    except OSError as err:  # the one line a job prints names the operation and the file meant
        err.add_note(f"writing {path}")
        try:  # a full disk must not keep the torn half
            fs.rm(tmp)
        except (OSError, FileNotFoundError):
            pass
        raise


def iter_tar_samples(data: bytes, *, source: str = "") -> Iterator[dict[str, bytes]]:
    """Raw webdataset samples (``__key__`` + one entry per extension) from tar bytes."""
    current: dict[str, bytes] | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                key, _, ext = base.partition(".")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = tar.extractfile(member).read()
    except tarfile.TarError as err:
        raise ContractError(f"is not a readable tar ({err})", source=source) from None
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
