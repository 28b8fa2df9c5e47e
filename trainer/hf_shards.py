"""Safetensors folders written tensor by tensor, in shards, as Hugging Face lays them out.

``safetensors.numpy.save_file`` takes a whole ``{name: array}`` dict and copies every array
into bytes before writing: a 7B model in fp32 costs its size two or three times over in host
memory and comes out as one file. The format is simple enough to stream: an 8-byte
little-endian header length, a JSON header (``{name: {dtype, shape, data_offsets}}`` plus
``__metadata__``; offsets relative to the end of the header, which is space-padded to a
multiple of 8), then the raw little-endian bytes. Every tensor's shape is known before any is
read, so each shard's header is written first and each tensor is produced, written and
dropped in turn.

The folder follows ``transformers``' ``save_pretrained``: one ``model.safetensors`` when the
weights fit one shard, else ``model-00001-of-0000N.safetensors`` plus
``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``), so
``from_pretrained`` and vLLM read either. Each shard is written under a temporary name
(:func:`lwmkit.runtime.files.temp_path`) and renamed into place: a crash leaves no torn shard
under a final name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from lwmkit.runtime.files import TEMP_MARKER, is_temporary, temp_path, write_atomic
from lwmkit.schemas import ContractError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_MAX_SHARD = "5GB"  # transformers' save_pretrained default
# --dtype name (config.json's torch_dtype too) -> (numpy dtype, safetensors dtype)
DTYPES = {
    "float32": (np.dtype(np.float32), "F32"),
    "bfloat16": (np.dtype(jnp.bfloat16), "BF16"),  # numpy has none; JAX's (ml_dtypes) is the one
    "float16": (np.dtype(np.float16), "F16"),
}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str, flag: str = "--max-shard-size") -> int:
    """Bytes of a size like ``5GB``, ``500MB``, ``2GiB`` or ``1000000`` (GB = 10^9, as transformers)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise ContractError(f"{text!r} is not a size (use e.g. 5GB, 500MB, 2GiB or a byte count)", field=flag)
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: its name, shape and dtype, and how to make its bytes.

    ``parts()`` yields arrays whose row-major bytes, one after another, are the tensor's (a
    tensor made of row blocks -- text rows then vision rows -- never exists whole in memory).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES
    parts: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype][0].itemsize


def plan(tensors: list[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """Tensors in order, cut into shards of at most ``max_bytes`` (a bigger tensor goes alone)."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return [SINGLE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def header(tensors: Iterable[Tensor], metadata: dict[str, str]) -> bytes:
    """The length-prefixed, 8-byte-aligned JSON header of a file holding ``tensors`` in order."""
    entries: dict[str, object] = {"__metadata__": metadata}
    start = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": DTYPES[t.dtype][1],
            "shape": list(t.shape),
            "data_offsets": [start, start + t.nbytes],
        }
        start += t.nbytes
    blob = json.dumps(entries, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob


def write_file(path: str, tensors: list[Tensor], metadata: dict[str, str]) -> None:
    """One safetensors file, each tensor produced and written in turn; atomic (temp + rename)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(header(tensors, metadata))
            for t in tensors:
                want, wrote = np.dtype(DTYPES[t.dtype][0]), 0
                for part in t.parts():
                    # native order is safetensors' little-endian on every host JAX runs on (x86, ARM)
                    with np.errstate(over="ignore"):  # an overflow is refused just below, by name
                        part = np.ascontiguousarray(part.astype(want, copy=False))
                    if want == np.float16 and not np.isfinite(part).all():  # float16 tops out at 65504
                        raise ContractError(
                            f"{t.name} has values beyond float16's range (65504): export as bfloat16 or float32",
                            field="--dtype",
                        )
                    f.write(part.reshape(-1).view(np.uint8).data)
                    wrote += part.nbytes
                    del part  # the only copy: freed before the next part is made
                if wrote != t.nbytes:  # a planning bug, never the user's input
                    raise RuntimeError(f"{t.name}: wrote {wrote} bytes, its header says {t.nbytes}")
        os.replace(tmp, path)
    except BaseException as err:
        if isinstance(err, OSError):
            err.add_note(f"writing {path}")
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_folder(out: str, tensors: list[Tensor], max_bytes: int, metadata: dict[str, str]) -> list[str]:
    """Write ``tensors`` into ``out`` as one file or shards plus index; returns the files written."""
    shards = plan(tensors, max_bytes)
    names = shard_names(len(shards))
    files = []
    for name, shard in zip(names, shards, strict=True):
        files.append(os.path.join(out, name))
        write_file(files[-1], shard, metadata)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, shard in zip(names, shards, strict=True) for t in shard},
        }
        files.append(os.path.join(out, INDEX))
        write_atomic(files[-1], json.dumps(index, indent=2).encode())
    return files


def written(out: str) -> list[str]:
    """The weight files of an export already in ``out`` (single file, shards, index)."""
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if _weights(n))


def _weights(name: str) -> bool:
    return name in (SINGLE, INDEX) or SHARD.fullmatch(name) is not None


def remove_temporaries(out: str) -> list[str]:
    """Remove the temporaries a killed export left of its weight files (ours by name); returns them."""
    if not os.path.isdir(out):
        return []
    left = [n for n in os.listdir(out) if is_temporary(n) and _weights(n.split(TEMP_MARKER)[0])]
    for n in left:
        os.remove(os.path.join(out, n))
    return left


def indexed_files(folder: str) -> dict[str, list[str]] | None:
    """``{shard path: [tensor names]}`` a folder's ``model.safetensors.index.json`` lists (None:
    no index). Each tensor is listed once by construction of the JSON object; a shard it names
    must exist."""
    path = os.path.join(folder, INDEX)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not {tensor: file}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ContractError(f"is not a safetensors index ({err})", source=path) from None
    files: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if os.path.basename(shard) != shard:
            raise ContractError(f"names {shard!r} for {name}; shards must sit beside the index", source=path)
        files.setdefault(os.path.join(folder, shard), []).append(name)
    for shard in files:
        if not os.path.isfile(shard):
            raise ContractError(f"lists {os.path.basename(shard)}, which is missing", source=path)
    return files


class SafetensorsFiles(Mapping):
    """The tensors of one or more ``.safetensors`` files, read one at a time when asked.

    Only the headers are read up front (names, shapes, that each file is a safetensors file); a
    tensor's bytes are read on ``[name]``, so an import holds the converted model and one source
    tensor, not both models. Read-only: a caller that renames or slices tensors puts a
    ``collections.ChainMap({}, files)`` in front.
    """

    def __init__(self, where: dict[str, str], shapes: dict[str, tuple[int, ...]]):
        self._where, self._shapes = where, shapes

    @classmethod
    def open(cls, files: list[str]) -> tuple[SafetensorsFiles, dict[str, list[str]]]:
        """The tensors of ``files`` and ``{file: its names}``; a name in two files is refused."""
        from safetensors import SafetensorError, safe_open

        where: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        names: dict[str, list[str]] = {}
        for f in files:
            try:
                with safe_open(f, framework="numpy") as h:
                    names[f] = list(h.keys())
                    got = {n: tuple(h.get_slice(n).get_shape()) for n in names[f]}
            except (SafetensorError, OSError) as err:
                raise ContractError(f"is not a readable safetensors file ({err})", source=f) from None
            twice = sorted(where.keys() & got.keys())
            if twice:
                raise ContractError(
                    f"holds {', '.join(twice[:3])}, which another .safetensors file holds too", source=f
                )
            where.update(dict.fromkeys(got, f))
            shapes.update(got)
        return cls(where, shapes), names

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape without reading it."""
        return self._shapes[name]

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError, safe_open

        path = self._where[name]
        try:
            with safe_open(path, framework="numpy") as h:
                return h.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise ContractError(f"cannot read tensor {name} ({err})", source=path) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:  # without reading the tensor (Mapping's default would)
        return name in self._where
