"""VQGAN checkpoints: lwmkit's safe format, its content hash, and the LWM pickle importer.

lwmkit's format is one msgpack map (no pickle, no msgpack extension types)::

    {"format": "lwmkit-vqgan", "format_version": 1, "id": <sha256 hex>,
     "config": {VQGANConfig fields}, "meta": {free-form JSON: how it was made},
     "params": {nested dicts ... {"dtype": "float32", "shape": [..], "data": <raw little-endian bytes>}}}

``id`` is :func:`content_hash` of config + params; it is recomputed on every read, so a
corrupted or edited file is refused rather than silently producing other codes.

LWM distributes its VQGAN as a Python pickle of the Flax params tree. :func:`read_lwm_pickle`
reads it with an unpickler that resolves only numpy's array-rebuilding functions (and the
jax/flax wrappers around plain arrays and dicts, replaced by inert shims); any other global
- ``os.system``, ``builtins.eval``, a class with a malicious ``__reduce__`` - is refused
before anything is called.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import msgpack
import numpy as np

from lwmkit.runtime.files import write_atomic
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.strict import from_dict, to_dict
from lwmkit.tokenizers.vqgan_model import VQGANConfig, param_shapes

FORMAT = "lwmkit-vqgan"
FORMAT_VERSION = 1
STORE_DTYPES = ("float32", "float16")
_MAX_BYTES = 2 << 30  # refuse absurd files before allocating (LWM's full model is 585 MB)


@dataclass(frozen=True)
class Checkpoint:
    config: VQGANConfig
    params: dict  # nested dict of numpy arrays, no top 'params' key (LWM's layout)
    id: str
    meta: dict = field(default_factory=dict)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(tree):
        path = f"{prefix}/{key}" if prefix else str(key)
        value = tree[key]
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def content_hash(config: VQGANConfig, params: Mapping) -> str:
    """sha256 over the config (canonical JSON) and every parameter's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(to_dict(config), sort_keys=True).encode())
    for path, leaf in _flatten(params).items():
        arr = np.ascontiguousarray(leaf)
        h.update(f"\n{path}:{arr.dtype.str}:{list(arr.shape)}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def check_params(config: VQGANConfig, params: Mapping, source: str = "") -> None:
    """Raise ContractError unless ``params`` has exactly the tree, names and shapes ``config`` builds."""
    want = {k: tuple(v.shape) for k, v in _flatten(param_shapes(config)).items()}
    got = _flatten(params)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        raise ContractError(f"parameter missing ({len(missing)} in all)", field=missing[0], source=source)
    if extra:
        raise ContractError(f"unexpected parameter ({len(extra)} in all)", field=extra[0], source=source)
    for path, shape in want.items():
        leaf = got[path]
        if not isinstance(leaf, np.ndarray) or leaf.dtype.kind != "f":
            raise ContractError(
                f"must be a float array, got {type(leaf).__name__}", field=path, source=source
            )
        if tuple(leaf.shape) != shape:
            raise ContractError(
                f"shape {list(leaf.shape)} != expected {list(shape)}", field=path, source=source
            )


def _encode_params(tree: Mapping, dtype: str) -> dict:
    out = {}
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, Mapping):
            out[key] = _encode_params(value, dtype)
        else:
            arr = np.ascontiguousarray(np.asarray(value, dtype=np.dtype(dtype).newbyteorder("<")))
            out[key] = {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}
    return out


def _decode_params(tree: Any, source: str, path: str = "params") -> dict:
    if not isinstance(tree, dict):
        raise ContractError("must be a mapping", field=path, source=source)
    if set(tree) == {"dtype", "shape", "data"}:
        dtype, shape, data = tree["dtype"], tree["shape"], tree["data"]
        if dtype not in STORE_DTYPES or not isinstance(shape, list) or not isinstance(data, bytes):
            raise ContractError(f"malformed array (dtype {dtype!r})", field=path, source=source)
        arr = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ContractError(
                f"holds {arr.size} values, shape {shape} needs {int(np.prod(shape))}",
                field=path,
                source=source,
            )
        return arr.reshape(shape).astype(dtype)  # native byte order, writable copy
    return {k: _decode_params(v, source, f"{path}/{k}") for k, v in tree.items()}


def write_checkpoint(path: str, config: VQGANConfig, params: Mapping, *, store_dtype: str = "float32",
                     meta: Mapping | None = None) -> Checkpoint:  # fmt: skip
    """Write ``params`` (checked against ``config``) atomically to ``path`` (local or fsspec URL).

    ``store_dtype`` float16 halves the file; the stored (rounded) values are the model, and the
    id is computed from them. Returns the checkpoint as it will be read back.
    """
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {STORE_DTYPES}, got {store_dtype!r}")
    host = {k: np.asarray(v) for k, v in _flatten(params).items()}
    check_params(config, _unflatten(host), source=str(path))
    stored = _unflatten({k: v.astype(store_dtype) for k, v in host.items()})
    ckpt_id = content_hash(config, stored)
    blob = msgpack.packb({
        "format": FORMAT, "format_version": FORMAT_VERSION, "id": ckpt_id, "config": to_dict(config),
        "meta": dict(meta or {}), "params": _encode_params(stored, store_dtype),
    }, use_bin_type=True)  # fmt: skip
    write_atomic(str(path), blob)
    return Checkpoint(config, stored, ckpt_id, dict(meta or {}))


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            parts, size = [], 0
            while size <= _MAX_BYTES and (part := f.read(64 << 20)):  # read(n) would reserve n bytes up front
                parts.append(part)
                size += len(part)
            blob = b"".join(parts)
    except FileNotFoundError:
        raise ContractError("checkpoint not found", source=path) from None
    if len(blob) > _MAX_BYTES:
        raise ContractError(f"larger than {_MAX_BYTES >> 20} MiB; refusing to load", source=path)
    return blob


def read_checkpoint(path: str) -> Checkpoint:
    """Read and verify an lwmkit VQGAN checkpoint; ContractError names what is wrong and where."""
    blob = _read_bytes(path)
    try:
        doc = msgpack.unpackb(blob, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        hint = " (an LWM pickle? convert it with `lwmkit vqgan import-lwm`)" if blob[:1] == b"\x80" else ""
        raise ContractError(f"is not an lwmkit VQGAN checkpoint{hint}: {err}", source=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ContractError(f"is not an lwmkit VQGAN checkpoint (format != {FORMAT!r})", source=path)
    if doc.get("format_version") != FORMAT_VERSION:
        raise ContractError(f"format_version {doc.get('format_version')!r} is not supported (want {FORMAT_VERSION})",
                            field="format_version", source=path)  # fmt: skip
    try:
        config = from_dict(VQGANConfig, doc.get("config"))
    except ContractError as err:
        raise err.located(source=path, prefix="config") from None
    except ValueError as err:
        raise ContractError(str(err), field="config", source=path) from None
    params = _decode_params(doc.get("params"), path)
    check_params(config, params, source=path)
    ckpt_id = content_hash(config, params)
    if doc.get("id") != ckpt_id:
        raise ContractError(f"content hash {ckpt_id[:16]}... does not match the recorded id (corrupt or edited file)",
                            field="id", source=path)  # fmt: skip
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    return Checkpoint(config, params, ckpt_id, meta)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


# ---------------------------------------------------------------- LWM's pickle, read safely


class _FrozenDictShim(dict):
    """Stands in for flax's FrozenDict while unpickling: takes its state, runs none of its code."""

    def __setstate__(self, state: Any) -> None:
        inner = state.get("_dict") if isinstance(state, dict) else None
        if not isinstance(inner, dict):
            raise pickle.UnpicklingError("FrozenDict state is not a dict")
        self.update(inner)


def _jax_array_shim(fun: Any, args: tuple, arr_state: tuple, aval_state: Any) -> np.ndarray:
    # A pickled jax.Array is numpy's reduce tuple plus aval info; ``fun`` was itself resolved
    # through find_class, so it can only be numpy's _reconstruct.
    arr = fun(*args)
    if not isinstance(arr, np.ndarray):
        raise pickle.UnpicklingError("jax array payload is not a numpy array")
    arr.__setstate__(arr_state)
    return arr


# Limits of what a params pickle may hold: LWM's tree is ~6 dicts deep and its largest array
# (a 3x3x512x512 conv kernel) has 2.4M elements. Past them the file is hostile or not LWM's.
MAX_TREE_DEPTH = 32
MAX_ARRAY_ELEMENTS = 1 << 28


class _CheckedArray(np.ndarray):
    """What numpy's ``_reconstruct`` builds while unpickling: an ndarray whose ``__setstate__``
    checks shape and data length before numpy allocates anything for them."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError(
                "ndarray state is not numpy's (version, shape, dtype, fortran, data)"
            )
        _, shape, dtype, _, data = state
        count = _element_count(shape)
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray holds no plain numeric data")
        if len(data) != count * dtype.itemsize:
            raise pickle.UnpicklingError(f"ndarray of shape {tuple(shape)} carries {len(data)} data bytes, "
                                         f"not {count * dtype.itemsize}")  # fmt: skip
        super().__setstate__(state)


def _element_count(shape: Any) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"ndarray shape {shape!r} is not a tuple of sizes")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ARRAY_ELEMENTS:
            raise pickle.UnpicklingError(f"ndarray of shape {shape} exceeds {MAX_ARRAY_ELEMENTS} elements")
    return count


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an empty placeholder (shape (0,)) and fills it in __setstate__.
    from numpy._core import multiarray

    if subtype is not np.ndarray or _element_count(shape) > 1:
        raise pickle.UnpicklingError("ndarray placeholder is not numpy's")
    return multiarray._reconstruct(_CheckedArray, shape, dtype)


def _allowed() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray  # numpy >= 2

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): dict,
        ("flax.core.frozen_dict", "FrozenDict"): _FrozenDictShim,
        ("jax._src.array", "_reconstruct_array"): _jax_array_shim,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _checked_reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
    for name in ("Float16DType", "Float32DType", "Float64DType", "BFloat16DType"):
        allowed[("numpy.dtypes", name)] = np.dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy needs to rebuild arrays; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        target = _allowed().get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: an LWM VQGAN checkpoint holds only dicts and numpy arrays"
            )
        return target


def _plain_tree(obj: Any, source: str, path: str = "", depth: int = 0) -> Any:
    if depth > MAX_TREE_DEPTH:  # also what a dict that holds itself comes to
        raise ContractError(f"nests deeper than {MAX_TREE_DEPTH} levels (or holds itself); not a params tree",
                            field=path.split("/", 1)[0] or "<root>", source=source)  # fmt: skip
    if isinstance(obj, dict):
        return {
            str(k): _plain_tree(v, source, f"{path}/{k}" if path else str(k), depth + 1)
            for k, v in obj.items()
        }
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fiu" and obj.dtype != object:
        return obj.view(np.ndarray)  # the checked subclass back to a plain array (no copy)
    raise ContractError(
        f"holds a {type(obj).__name__}, not a numeric array or dict", field=path or "<root>", source=source
    )


def read_lwm_pickle(path: str) -> dict:
    """LWM's pickled params tree as nested dicts of numpy arrays; ContractError if anything else is in it."""
    blob = _read_bytes(path)
    try:
        tree = RestrictedUnpickler(io.BytesIO(blob)).load()
    except pickle.UnpicklingError as err:
        raise ContractError(f"unsafe or malformed pickle: {err}", source=path) from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        RecursionError,
    ) as err:
        raise ContractError(f"is not a readable pickle ({type(err).__name__}: {err})", source=path) from None
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]  # tolerate a tree saved with Flax's top-level key
    return _plain_tree(tree, path)


_BLOCK = re.compile(r"^(DownsamplingBlock|ResnetBlock)_(\d+)$")


def infer_lwm_config(params: Mapping, source: str = "", norm_groups: int = 32) -> VQGANConfig:
    """Read the architecture off an LWM-layout tree (widths, levels, blocks, codebook)."""
    try:
        enc = params["encoder"]
        levels = sorted(int(_BLOCK.match(k).group(2)) for k in enc if k.startswith("DownsamplingBlock_"))
        hidden = int(enc["Conv_0"]["kernel"].shape[-1])
        widths = [
            int(enc[f"DownsamplingBlock_{i}"]["ResnetBlock_0"]["Conv_0"]["kernel"].shape[-1]) for i in levels
        ]
        n_blocks = sum(1 for k in enc["DownsamplingBlock_0"] if k.startswith("ResnetBlock_"))
        n_codes, dim = (int(s) for s in params["quantize"]["embeddings"].shape)
        z = int(enc["Conv_1"]["kernel"].shape[-1])
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ContractError(
            f"does not have LWM's VQGAN parameter layout (missing {err})", source=source
        ) from None
    if levels != list(range(len(levels))) or any(w % hidden for w in widths):
        raise ContractError(f"encoder levels {levels} / widths {widths} are not LWM-shaped", source=source)
    try:
        return VQGANConfig(hidden_channels=hidden, channel_mult=tuple(w // hidden for w in widths),
                           num_res_blocks=n_blocks, z_channels=z, num_embeddings=n_codes, embed_dim=dim,
                           norm_groups=norm_groups)  # fmt: skip
    except ValueError as err:
        raise ContractError(str(err), source=source) from None


def import_lwm(src: str, out: str, *, norm_groups: int = 32) -> Checkpoint:
    """Convert LWM's pickled VQGAN params at ``src`` into an lwmkit checkpoint at ``out`` (float32)."""
    params = read_lwm_pickle(src)
    config = infer_lwm_config(params, src, norm_groups)
    check_params(config, params, source=src)
    meta = {"imported_from": "LWM pickle", "source_name": src.rsplit("/", 1)[-1]}
    return write_checkpoint(out, config, params, meta=meta)

