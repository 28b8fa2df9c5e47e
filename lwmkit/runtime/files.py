"""The one atomic write, and the one name its temporary files get.

A file is written under a temporary sibling name (``{path}.tmp-{hex}``) and renamed into
place, so a reader never sees a torn file and a killed writer leaves only names that
:func:`is_temporary` recognises (cleaned up by the next run, flagged by the audit).

Two backends, one sequence of operations: :data:`FSSPEC` (local paths and any fsspec URL;
the trainer, tokenizers and the pack job) and :data:`BEAM` (Beam's ``FileSystems``, which a
Beam job configures from its pipeline options -- bucket endpoints and credentials -- so its
DoFns must write through it). Beam is imported only when :data:`BEAM` is used.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Protocol

TEMP_MARKER = ".tmp-"


def temp_path(path: str) -> str:
    """A fresh temporary sibling of ``path``."""
    return f"{path}{TEMP_MARKER}{uuid.uuid4().hex}"


def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary left by :func:`write_atomic`."""
    return TEMP_MARKER in posixpath.basename(name)


class Files(Protocol):
    """What an atomic write (and a read-modify-write of a small file) needs from a filesystem."""

    def read(self, path: str) -> bytes | None: ...  # None: no such file
    def make_parent(self, path: str) -> None: ...
    def write(self, path: str, data: bytes) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...


class _Fsspec:
    def read(self, path: str) -> bytes | None:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        try:
            with fs.open(p, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def make_parent(self, path: str) -> None:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        parent = posixpath.dirname(p)
        if parent:
            fs.makedirs(parent, exist_ok=True)

    def write(self, path: str, data: bytes) -> None:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        with fs.open(p, "wb") as f:
            f.write(data)

    def rename(self, src: str, dst: str) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, p = fsspec.core.url_to_fs(src)
        if isinstance(fs, LocalFileSystem):
            os.replace(p, fsspec.core.url_to_fs(dst)[1])  # fs.mv onto a folder would move the file *into* it
        else:
            fs.mv(p, fsspec.core.url_to_fs(dst)[1])

    def remove(self, path: str) -> None:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        fs.rm(p)


class _Beam:
    def read(self, path: str) -> bytes | None:
        from apache_beam.io.filesystems import FileSystems

        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return f.read()

    def make_parent(self, path: str) -> None:
        from apache_beam.io.filesystems import FileSystems

        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)

    def write(self, path: str, data: bytes) -> None:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)

    def rename(self, src: str, dst: str) -> None:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.rename([src], [dst])  # replaces an existing file (os.rename locally; copy on buckets)

    def remove(self, path: str) -> None:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([path])


FSSPEC: Files = _Fsspec()
BEAM: Files = _Beam()


def write_atomic(path: str, data: bytes, files: Files = FSSPEC) -> None:
    """Write ``data`` to a temporary sibling of ``path``, then rename it into place (no torn files).

    An OSError (a full disk, a read-only folder, a file where a folder should be) carries the
    note ``writing PATH``, so the one line a job prints names the file meant, and the torn
    temporary is removed first."""
    tmp = temp_path(path)
    try:
        files.make_parent(path)
        files.write(tmp, data)
        files.rename(tmp, path)
    except OSError as err:
        err.add_note(f"writing {path}")
        try:
            files.remove(tmp)
        except Exception:  # noqa: BLE001 -- it may never have been created; the write's error is the story
            pass
        raise
