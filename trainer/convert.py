"""Weights in and out: LWM (EasyLM streaming msgpack), LLaMA (Hugging Face and Meta names,
safetensors), and the text -> vision step.

* **LWM** checkpoints (``params::/path/streaming_params``) are a msgpack stream of
  ``(key path, flax to_bytes(array))`` pairs with paths under ``params/`` in the same
  EasyLM naming our model uses, so import is a rename-free load with shape checks.
* **Hugging Face LLaMA** (``model.safetensors``): ``weight`` matrices are ``[out, in]``
  (our kernels transposed) and ``q_proj``/``k_proj`` rows are permuted to HF's rotate-half
  RoPE; we undo that permutation so the interleaved-pair RoPE sees the same pairs.
* **Meta LLaMA** names (``tok_embeddings``, ``layers.N.attention.wq``...) as safetensors:
  interleaved RoPE like ours, transposes only. (Meta's ``consolidated.pth`` is a pickle:
  convert it to safetensors in a trusted environment first; lwmkit never unpickles.)
* **Text -> vision**: a text-only checkpoint gains ``transformer/vte/embedding`` and
  ``vision_head/kernel`` drawn from normal(0, init_std=0.02), as LWM's vision stages need
  and its released trainer cannot do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lwmkit.schemas import ContractError, ModelConfig
from lwmkit.trainer.hf_shards import SafetensorsFiles

VISION_KEYS = ("transformer/vte/embedding", "vision_head/kernel")
Tree = dict[str, Any]


def flatten(tree: Tree) -> dict[str, Any]:
    """``{"a/b": leaf}`` paths of a nested param dict (flax's own helper, ``/``-joined)."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> Tree:
    return traverse_util.unflatten_dict(flat, sep="/")


def missing_vision(stored: Tree, want: Tree) -> list[str]:
    """Vision parameter paths the model has and a stored tree lacks."""
    have, need = flatten(stored), flatten(want)
    return [k for k in VISION_KEYS if k in need and k not in have]


def without_vision(tree: Tree) -> Tree:
    return unflatten({k: v for k, v in flatten(tree).items() if k not in VISION_KEYS})


def add_vision_params(params: Tree, model: ModelConfig, rng: jax.Array, *, shardings: Tree | None = None) -> Tree:
    """Add fresh ``vte`` [vision_vocab, d] and ``vision_head`` [d, vision_vocab] ~ N(0, init_std)."""
    if model.vision_vocab_size == 0:
        raise ContractError("the model has no vision vocabulary (vision_vocab_size 0)", field="model.vision_vocab_size")
    flat = dict(flatten(params))
    k1, k2 = jax.random.split(rng)
    shapes = {VISION_KEYS[0]: (model.vision_vocab_size, model.d_model), VISION_KEYS[1]: (model.d_model, model.vision_vocab_size)}
    sh = flatten(shardings) if shardings is not None else {}
    for key, k in zip(VISION_KEYS, (k1, k2), strict=True):
        if key in flat:
            raise ContractError(f"already has {key}", field=key)
        fresh = model.init_std * jax.random.normal(k, shapes[key], jnp.float32)
        flat[key] = jax.device_put(fresh, sh[key]) if key in sh else fresh
    return unflatten(flat)


def check_shapes(params: Tree, model: ModelConfig, source: str) -> Tree:
    """``params`` (arrays or shape structs) if they are the model's (vision params optional)."""
    from lwmkit.trainer.model import param_shapes

    want = flatten(param_shapes(model))
    got = flatten(params)
    missing, extra = sorted(set(want) - set(got) - set(VISION_KEYS)), sorted(set(got) - set(want))
    if missing or extra:
        raise ContractError(f"does not match the model (missing {missing[:3]}, unexpected {extra[:3]})", source=source)
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ContractError(f"shape {tuple(v.shape)} != model's {tuple(want[k].shape)}", field=k, source=source)
    return params


# ---------------------------------------------------------------- LWM / EasyLM streaming msgpack


def load_lwm(path: str, model: ModelConfig) -> Tree:
    """Params from an LWM/EasyLM ``streaming_params`` file (msgpack stream; no pickle)."""
    import fsspec
    import msgpack
    from flax.serialization import msgpack_restore

    flat = {}
    with fsspec.open(path, "rb") as f:
        for key, value in msgpack.Unpacker(f, read_size=1 << 24, max_buffer_size=0):
            parts = [str(k) for k in key]
            if parts and parts[0] == "params":
                parts = parts[1:]
            flat["/".join(parts)] = np.asarray(msgpack_restore(value), dtype=np.float32)
    return check_shapes(unflatten(flat), model, path)


def save_lwm(params: Tree | Iterable[tuple[str, Any]], path: str) -> None:
    """Write params as an LWM/EasyLM ``streaming_params`` file (keys under ``params``): a tree,
    or ``(path, array)`` pairs made one at a time (a streaming export holds one tensor)."""
    import fsspec
    import msgpack
    from flax.serialization import to_bytes

    packer = msgpack.Packer()
    items = flatten(params).items() if isinstance(params, dict) else params
    with fsspec.open(path, "wb") as f:
        for key, value in items:
            payload = to_bytes(np.asarray(value))
            # the bytes packer.pack((key, payload)) makes, framed by hand: no copy of the payload
            f.write(packer.pack_array_header(2) + packer.pack(["params", *key.split("/")]))
            f.write(_bin_header(len(payload)))
            f.write(payload)
            del payload


def _bin_header(n: int) -> bytes:
    """msgpack's header of an ``n``-byte bin object (what ``Packer.pack(bytes)`` writes before the bytes)."""
    import struct

    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    if n < 1 << 32:
        return b"\xc6" + struct.pack(">I", n)
    raise ValueError(f"a {n}-byte tensor record exceeds msgpack's 4 GiB bin limit")


# ---------------------------------------------------------------- LLaMA (HF and Meta names)

_LAYER = {  # our suffix under transformer/h/{i}/ -> (hf name, meta name); all [in,out] <-> [out,in]
    "attention/wq/kernel": ("self_attn.q_proj.weight", "attention.wq.weight"),
    "attention/wk/kernel": ("self_attn.k_proj.weight", "attention.wk.weight"),
    "attention/wv/kernel": ("self_attn.v_proj.weight", "attention.wv.weight"),
    "attention/wo/kernel": ("self_attn.o_proj.weight", "attention.wo.weight"),
    "feed_forward/w1/kernel": ("mlp.gate_proj.weight", "feed_forward.w1.weight"),
    "feed_forward/w2/kernel": ("mlp.down_proj.weight", "feed_forward.w2.weight"),
    "feed_forward/w3/kernel": ("mlp.up_proj.weight", "feed_forward.w3.weight"),
    "attention_norm/kernel": ("input_layernorm.weight", "attention_norm.weight"),
    "ffn_norm/kernel": ("post_attention_layernorm.weight", "ffn_norm.weight"),
}
_TOP = {
    "transformer/wte/embedding": ("model.embed_tokens.weight", "tok_embeddings.weight"),
    "transformer/ln_f/kernel": ("model.norm.weight", "norm.weight"),
    "lm_head/kernel": ("lm_head.weight", "output.weight"),
}
Layout = Literal["hf", "meta"]


def interleaved_to_rotate_half(w_out_in: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k projection rows from pairs (2i, 2i+1) to halves (i, i + hd/2) per head."""
    out, inp = w_out_in.shape
    return w_out_in.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def rotate_half_to_interleaved(w_out_in: np.ndarray, n_heads: int) -> np.ndarray:
    out, inp = w_out_in.shape
    return w_out_in.reshape(n_heads, 2, out // n_heads // 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def llama_names(model: ModelConfig, layout: Layout) -> dict[str, str]:
    """``{our param path: LLaMA tensor name}`` of a text model, in HF or Meta naming."""
    col = 0 if layout == "hf" else 1
    names = {ours: pair[col] for ours, pair in _TOP.items()}
    prefix = "model.layers" if layout == "hf" else "layers"
    for i in range(model.n_layers):
        for suffix, pair in _LAYER.items():
            names[f"transformer/h/{i}/{suffix}"] = f"{prefix}.{i}.{pair[col]}"
    return names


def _heads_of(ours: str, model: ModelConfig) -> int | None:
    if ours.endswith("attention/wq/kernel"):
        return model.n_heads
    if ours.endswith("attention/wk/kernel"):
        return model.kv_heads
    return None


def to_llama(params: Tree, model: ModelConfig, layout: Layout = "hf") -> dict[str, np.ndarray]:
    """Our (text) params as LLaMA tensors ``{name: [out, in] fp32}`` in HF or Meta naming."""
    flat = flatten(params)
    names = llama_names(model, layout)
    return {theirs: to_llama_tensor(ours, flat[ours], model, layout) for ours, theirs in names.items()}


def to_llama_tensor(ours: str, w: Any, model: ModelConfig, layout: Layout = "hf") -> np.ndarray:
    """One of our (text) params as its LLaMA tensor (``[out, in]`` fp32, contiguous)."""
    w = np.asarray(w, np.float32)
    if w.ndim == 2 and not ours.endswith("embedding"):
        w = w.T  # [in, out] -> [out, in]; the embedding is [vocab, d] in both
    heads = _heads_of(ours, model)
    if heads and layout == "hf":
        w = interleaved_to_rotate_half(w, heads)
    return np.ascontiguousarray(w)


def from_llama(tensors: Mapping[str, np.ndarray], model: ModelConfig, layout: Layout = "hf", *, source: str = "") -> Tree:
    """Inverse of :func:`to_llama`: text params (no vision parameters) for ``model``."""
    from lwmkit.trainer.model import param_shapes

    want = flatten(param_shapes(model))
    flat = {}
    for ours, theirs in llama_names(model, layout).items():
        if theirs not in tensors:
            raise ContractError("tensor is missing", field=theirs, source=source)
        w = np.asarray(tensors[theirs], np.float32)
        expect = tuple(want[ours].shape)
        expect = expect[::-1] if len(expect) == 2 and not ours.endswith("embedding") else expect  # [out, in]
        if tuple(w.shape) != expect:
            raise ContractError(f"shape {tuple(w.shape)} != {expect} the model config expects", field=theirs,
                                source=source)
        heads = _heads_of(ours, model)
        if heads and layout == "hf":
            w = rotate_half_to_interleaved(w, heads)
        if w.ndim == 2 and not ours.endswith("embedding"):
            w = w.T
        flat[ours] = w
    params = unflatten(flat)
    check_shapes(params, model, source)
    return params


def read_safetensors(path: str) -> SafetensorsFiles:
    """The tensors of one ``.safetensors`` file, or of a folder's: the shards its
    ``model.safetensors.index.json`` lists (each must hold exactly the tensors the index gives
    it), else every ``*.safetensors`` in it. A tensor in two files is refused (which one holds it?).
    Only headers are read here; each tensor is read when asked for (:class:`SafetensorsFiles`)."""
    import glob

    from lwmkit.trainer.hf_shards import indexed_files

    indexed = indexed_files(path) if os.path.isdir(path) else None
    if indexed is not None:
        files = sorted(indexed)
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]
    if not files:
        raise ContractError("no .safetensors files (pickled .pth/.bin files are refused)", source=path)
    tensors, names = SafetensorsFiles.open(files)
    for f in files if indexed is not None else ():
        if set(names[f]) != set(indexed[f]):
            odd = sorted(set(names[f]) ^ set(indexed[f]))
            raise ContractError(f"does not hold the tensors the index gives it ({', '.join(odd[:3])} ...)", source=f)
    return tensors


def load_llama(path: str, model: ModelConfig, layout: Layout = "hf") -> Tree:
    """Text params from LLaMA safetensors files (one path, or a folder of ``*.safetensors``)."""
    return from_llama(read_safetensors(path), model, layout, source=path)


def save_llama(params: Tree, model: ModelConfig, path: str, layout: Layout = "hf") -> None:
    from safetensors.numpy import save_file

    save_file(to_llama(params, model, layout), path, metadata={"format": "pt", "converted_by": "lwmkit"})


def hf_config_json(model: ModelConfig, seq_len: int, rope_theta: float, bos_id: int = 1, eos_id: int = 2) -> dict[str, Any]:
    """A ``config.json`` that ``transformers``' ``LlamaForCausalLM`` loads for these weights."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": model.d_model, "intermediate_size": model.mlp_dim, "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads, "num_key_value_heads": model.kv_heads, "head_dim": model.head_dim,
        "vocab_size": model.text_vocab_size, "rms_norm_eps": model.norm_eps, "rope_theta": rope_theta,
        "rope_scaling": None, "max_position_embeddings": seq_len, "initializer_range": model.init_std,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
        "use_cache": True, "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
    }


def clear_path(path: str, overwrite: bool, what: str, *, may_hold: tuple[str, ...] = ()) -> None:
    """Refuse to write over ``path`` unless ``overwrite``; then remove it first, but only a
    file or a folder holding nothing but ``may_hold`` (never an unrelated folder)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return
    if not overwrite:
        raise ContractError(f"already holds {what}; pass --overwrite to replace it, or choose another --out",
                            source=path)
    if fs.isdir(p) and not {os.path.basename(c.rstrip("/")) for c in fs.ls(p, detail=False)} <= set(may_hold):
        raise ContractError(f"is a folder that is not {what}; lwmkit will not delete it", source=path)
    fs.rm(p, recursive=True)
