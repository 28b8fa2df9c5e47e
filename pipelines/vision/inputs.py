"""What a vision job reads: a glob of media files, or a manifest of uri + caption + clip range.

Media matched by a glob or folder take their caption from a sidecar beside them, when there is
one: ``clip.mp4`` + ``clip.txt`` (plain text) or ``clip.json`` (``{"caption": "..."}``).

A manifest is CSV (with a header), JSON Lines or Parquet with the columns ``uri`` (required),
``caption``, ``start_s``, ``end_s`` (optional). Relative uris resolve against the manifest's
folder. Paths may be local or any Beam filesystem (gs://, s3://, ...). A malformed manifest is
the user's config, so it fails fast naming the file, row and column; a bad *media file* never
fails the job (it is dead-lettered later).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
from dataclasses import asdict, dataclass

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import stable_id

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
MANIFEST_COLUMNS = ("uri", "caption", "start_s", "end_s")
SIDECAR_SUFFIXES = (".txt", ".json")


@dataclass(frozen=True)
class MediaInput:
    """One input: a media file, an optional caption and an optional time range (seconds)."""

    uri: str
    caption: str | None = None
    start_s: float | None = None
    end_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise ContractError("must be a non-empty string", field="uri")
        for name in ("start_s", "end_s"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            ):
                raise ContractError(f"must be a finite number >= 0, got {value!r}", field=name)
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ContractError(f"end_s {self.end_s} must be after start_s {self.start_s}", field="end_s")
        if self.caption is not None and not isinstance(self.caption, str):
            raise ContractError("must be a string", field="caption")

    @property
    def key(self) -> str:
        """Canonical JSON: identifies the input across runs (resume, retries, dead letters)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_key(cls, key: str) -> MediaInput:
        return cls(**json.loads(key))

    def bucket(self, num_shards: int) -> int:
        """The output shard this input's records go to (stable across runs and machines)."""
        return int(stable_id(self.key, length=16), 16) % num_shards


def _absolute(uri: str) -> str:
    # Workers may run elsewhere (another cwd, another machine with the same mounts).
    return uri if "://" in uri else os.path.abspath(uri)


def _is_manifest(spec: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return (
        spec.lower().endswith(MANIFEST_SUFFIXES)
        and not any(c in spec for c in "*?[")
        and FileSystems.exists(spec)
    )


def read_inputs(spec: str) -> list[MediaInput]:
    """Inputs from a glob, a folder, or a manifest file, or several of them comma-separated
    (as pack's source paths); sorted and de-duplicated."""
    items = []
    for part in split_specs(spec):
        items += read_manifest(part) if _is_manifest(part) else with_sidecar_captions(match_glob(part))
    items = [MediaInput(_absolute(i.uri), i.caption, i.start_s, i.end_s) for i in items]
    unique = {item.key: item for item in items}
    return sorted(unique.values(), key=lambda i: i.key)


def split_specs(spec: str) -> list[str]:
    """``a/*.mp4,b/`` -> ``["a/*.mp4", "b/"]``; a path that exists as written is never split."""
    from apache_beam.io.filesystems import FileSystems

    if "," not in spec or FileSystems.exists(spec if "://" in spec else os.path.abspath(spec)):
        return [spec]
    return [p.strip() for p in spec.split(",") if p.strip()]


def match_glob(pattern: str) -> list[str]:
    """Files matching ``pattern`` (a folder means every file directly in it), sorted."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in pattern:
        pattern = os.path.abspath(pattern)  # Beam's local match does not glob relative patterns
    has_glob = any(c in pattern for c in "*?[")
    is_folder = pattern.endswith("/") or ("://" not in pattern and os.path.isdir(pattern))
    if not has_glob and not is_folder:
        if not FileSystems.exists(pattern):
            raise ContractError("no such file or folder", source=pattern)
        return [pattern]
    if is_folder:
        pattern = FileSystems.join(pattern.rstrip("/"), "*")
    results = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in results if not posixpath.basename(m.path).startswith(".")
                   and not ("://" not in m.path and os.path.isdir(m.path)))  # fmt: skip
    if not paths:
        raise ContractError("matches no files", source=pattern)
    return paths


def with_sidecar_captions(paths: list[str]) -> list[MediaInput]:
    """Inputs for media ``paths``, each captioned by its sidecar when one lies beside it:
    ``clip.mp4`` + ``clip.txt`` (the caption as UTF-8 text) or ``clip.json`` (``{"caption": ...}``).
    A sidecar is never an input itself; a ``.txt``/``.json`` without media of its stem still is
    (and is dead-lettered as unreadable media, as before)."""
    from apache_beam.io.filesystems import FileSystems

    listed: set[str] = set()
    for folder in sorted({posixpath.dirname(p) for p in paths}):
        listed.update(m.path for m in FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list)
    stems = {posixpath.splitext(p)[0] for p in paths if not p.lower().endswith(SIDECAR_SUFFIXES)}
    stems |= {posixpath.splitext(p)[0] for p in listed if not p.lower().endswith(SIDECAR_SUFFIXES)}
    items = []
    for path in paths:
        stem, ext = posixpath.splitext(path)
        if ext.lower() in SIDECAR_SUFFIXES and stem in stems:
            continue  # the caption of a media file beside it
        sidecar = next((stem + e for e in SIDECAR_SUFFIXES if stem + e in listed), None)
        items.append(
            MediaInput(
                path, read_sidecar(sidecar) if sidecar and ext.lower() not in SIDECAR_SUFFIXES else None
            )
        )
    return items


def read_sidecar(path: str) -> str | None:
    """The caption in a ``.txt`` or ``.json`` sidecar (None when empty); a malformed one fails fast."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ContractError(f"caption sidecar is not UTF-8 (byte {err.start})", source=path) from None
    if path.lower().endswith(".txt"):
        return text.strip() or None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ContractError(f"caption sidecar is not JSON ({err})", source=path) from None
    caption = data.get("caption") if isinstance(data, dict) else None
    if not isinstance(caption, str):
        raise ContractError('caption sidecar must be an object with a "caption" string', source=path)
    return caption.strip() or None


def _resolve(uri: str, manifest: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    if "://" in uri or uri.startswith("/"):
        return uri
    return FileSystems.join(posixpath.dirname(manifest) or ".", uri)


def _rows(spec: str) -> list[dict]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(spec) as f:
        data = f.read()
    lower = spec.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as err:
            raise ContractError(f"cannot be read as Parquet ({err})", source=spec) from None
    text = data.decode("utf-8-sig")
    if lower.endswith(".csv"):
        return [
            {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))
        ]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ContractError(f"is not JSON ({err})", source=f"{spec}:{n}") from None
    return rows


def read_manifest(spec: str) -> list[MediaInput]:
    """Rows of a CSV / JSONL / Parquet manifest as inputs; errors name the file, row and column."""
    items = []
    for n, row in enumerate(_rows(spec), start=1):
        where = f"{spec} row {n}"
        if not isinstance(row, dict):
            raise ContractError("must be an object", source=where)
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            raise ContractError(
                f"unknown column (allowed: {', '.join(MANIFEST_COLUMNS)})", field=unknown[0], source=where
            )
        values = dict(row)
        for name in ("start_s", "end_s"):
            if isinstance(values.get(name), str):
                try:
                    values[name] = float(values[name])
                except ValueError:
                    raise ContractError(
                        f"is not a number: {values[name]!r}", field=name, source=where
                    ) from None
        try:
            item = MediaInput(**{k: values.get(k) for k in MANIFEST_COLUMNS})
        except ContractError as err:
            raise err.located(source=where) from None
        items.append(MediaInput(_resolve(item.uri, spec), item.caption, item.start_s, item.end_s))
    if not items:
        raise ContractError("lists no inputs", source=spec)
    return items
