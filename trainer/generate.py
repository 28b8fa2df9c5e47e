"""Greedy decoding with the trainer's model, from a trainer checkpoint.

Prompts are left-padded into a fixed ``[B, T]`` buffer (segment id 0 = padding, which
attends only to padding) so every prompt ends at the same slot and positions restart at 0
on its first real token, as the packed training sequences do. The text head is applied to
the one position being decoded, never to the whole sequence. Two paths, one compiled
``lax.while_loop`` per buffer shape each:

* **KV cache** (the default, any mesh): one prefill pass over the buffer (ring attention
  when the mesh has an ``sp`` axis > 1) stores every layer's K (after RoPE) and V; each new
  token is then one ``[B, 1]`` step attending to that cache (``LWMModel``'s ``kv_cache``
  modes, the same params). On a sequence-sharded mesh the cache stays sharded over ``sp``
  along its slots: each device scores the query against its own slots and XLA combines the
  partial softmax (max, denominator, weighted sum: three small all-reduces per layer), so
  no device ever holds the whole cache or the whole hidden state.
* **No cache** (``kv_cache=False``): each new token is a full forward pass over the buffer.
  The reference the cache is tested against, and the fallback when a mesh cannot hold the
  cache (it costs ``max_new`` full passes but only one pass's activations).

The buffer's int arrays (ids, segments, positions: ``4 * B * T`` bytes each) are replicated;
activations and the cache are sharded by the model's own rules (``trainer/mesh.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwmkit.schemas import ContractError, ModelConfig, TrainConfig
from lwmkit.schemas.strict import from_dict


@dataclass
class LoadedModel:
    """A checkpoint's params with the model config and the RoPE theta of its stage."""

    params: Any
    config: ModelConfig
    rope_theta: float
    stage: str
    seq_len: int  # the context length the stage trained at
    tokenizer_id: str | None
    path: str
    step: int
    decoders: dict = field(default_factory=dict)  # compiled decoders by (mesh, max_new, eos, cached): compile once


def load_model(path: str, mesh: Mesh | None = None) -> LoadedModel:
    """Load a trainer checkpoint (a stage folder, its ``final``/``steps`` folder or one step)."""
    from lwmkit.trainer.checkpoint import open_checkpoint, params_metadata, read_meta, restore_from

    if "://" not in path:
        path = os.path.abspath(path)  # orbax refuses relative paths
    try:
        manager, step = open_checkpoint(path)
    except FileNotFoundError as err:
        raise ContractError(str(err), source=path) from None
    meta = read_meta(manager, step)
    cfg = from_dict(TrainConfig, meta["config"], source=f"{path} (meta.config)")
    stage = next((s for s in cfg.stages if s.name == meta["stage"]), None)
    if stage is None:
        raise ContractError(f"stage {meta['stage']!r} is not in the checkpoint's config", field="stage", source=path)
    abstract = params_metadata(manager, step)
    # Restore onto this process's devices, whatever mesh the checkpoint was written from.
    if mesh is not None:
        from lwmkit.trainer.mesh import param_shardings

        shardings = param_shardings(abstract, mesh)
    else:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: one, abstract)
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract, shardings)
    params = restore_from(manager, step, abstract, None).params
    manager.close()
    lineage = meta.get("lineage") or []
    tok_id = lineage[-1].get("tokenizer_id") if lineage else None
    return LoadedModel(params, cfg.model, float(stage.rope_theta), stage.name, int(stage.seq_len), tok_id, path, step)


def _buffer_length(prompt_len: int, max_new: int, multiple: int) -> int:
    total = prompt_len + max_new
    return -(-total // multiple) * multiple


def left_pad(prompts: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(ids, segment_ids, positions, end)``: prompts right-aligned at slot ``end``; the slots
    from ``end`` on are the generation area (segment 1, positions continuing)."""
    end = max(len(p) for p in prompts)
    b = len(prompts)
    ids = np.full((b, length), pad_id, np.int32)
    seg = np.zeros((b, length), np.int32)
    pos = np.zeros((b, length), np.int32)
    for i, p in enumerate(prompts):
        start = end - len(p)
        ids[i, start:end] = p
        seg[i, start:] = 1
        pos[i, start:] = np.arange(length - start)
    return ids, seg, pos, end


def _at_slot(hidden: jax.Array, t: jax.Array) -> jax.Array:
    """``hidden[:, t]`` (``[B, d]``) as a masked sum over the slots: exact (one nonzero term),
    and on a sequence-sharded ``hidden`` a local sum plus one ``[B, d]`` all-reduce instead
    of gathering the whole ``[B, T, d]``."""
    pick = (jnp.arange(hidden.shape[1]) == t)[None, :, None]
    return jnp.where(pick, hidden, 0).sum(axis=1)


def _put_next(params, h, ids, t, done, eos_id: int):
    """Greedy token from hidden states ``h`` ``[B, d]`` written at slot ``t``; rows already
    done get EOS. Returns ``(ids, done)``."""
    kernel = params["lm_head"]["kernel"]
    logits = jnp.einsum("bd,dv->bv", h.astype(jnp.float32), kernel.astype(jnp.float32))
    nxt = jnp.where(done, eos_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    return jax.lax.dynamic_update_slice(ids, nxt[:, None], (0, t)), done | (nxt == eos_id)


def _cached_decoder(model: LoadedModel, mesh: Mesh | None, max_new: int, eos_id: int):
    """Prefill once, then one ``[B, 1]`` step per token against the KV cache."""
    from lwmkit.trainer.model import build_model

    net = build_model(model.config, model.rope_theta, mesh)
    prefill, step = net.clone(kv_cache="prefill"), net.clone(kv_cache="step")

    def run(params, ids, vis, seg, pos, end):
        b = ids.shape[0]
        hidden, cache = prefill.apply({"params": params}, ids, vis, pos, seg, mutable=["cache"])
        ids, done = _put_next(params, _at_slot(hidden, end - 1), ids, end, jnp.zeros((b,), bool), eos_id)

        def cond(state):
            t, _, done, _ = state
            return (t + 1 < end + max_new) & ~jnp.all(done)

        def body(state):  # the token at slot t goes in; the one for slot t + 1 comes out
            t, ids, done, cache = state
            tok = jax.lax.dynamic_slice_in_dim(ids, t, 1, axis=1)
            p = jax.lax.dynamic_slice_in_dim(pos, t, 1, axis=1)
            hidden, cache = step.apply({"params": params, **cache}, tok, jnp.zeros(tok.shape, bool), p, seg,
                                       t[None], mutable=["cache"])
            ids, done = _put_next(params, hidden[:, 0], ids, t + 1, done, eos_id)
            return t + 1, ids, done, cache

        _, ids, _, _ = jax.lax.while_loop(cond, body, (end, ids, done, cache))
        return ids

    return _jit(run, model, mesh)


def _decoder(model: LoadedModel, mesh: Mesh | None, max_new: int, eos_id: int):
    """No cache: a full forward pass over the buffer (ring attention over ``sp``) per new token."""
    from lwmkit.trainer.model import build_model

    net = build_model(model.config, model.rope_theta, mesh)

    def run(params, ids, vis, seg, pos, end):
        b = ids.shape[0]

        def cond(state):
            t, _, done = state
            return (t < end + max_new) & ~jnp.all(done)

        def body(state):
            t, ids, done = state
            hidden = net.apply({"params": params}, ids, vis, pos, seg)  # generated slots are text: vis False
            ids, done = _put_next(params, _at_slot(hidden, t - 1), ids, t, done, eos_id)
            return t + 1, ids, done

        _, ids, _ = jax.lax.while_loop(cond, body, (end, ids, jnp.zeros((b,), bool)))
        return ids

    return _jit(run, model, mesh)


def _jit(run, model: LoadedModel, mesh: Mesh | None):
    """``run(params, ids, vis, seg, pos, end)`` compiled: params as the mesh's rules shard them,
    the int buffers replicated (the model shards its activations itself)."""
    if mesh is None:  # params placed by load_model are committed: jit follows them
        return jax.jit(run)
    from lwmkit.trainer.mesh import param_shardings

    whole = NamedSharding(mesh, P())
    return jax.jit(run, in_shardings=(param_shardings(model.params, mesh), whole, whole, whole, whole, None),
                   out_shardings=whole)


def greedy_generate(model: LoadedModel, prompts: list[list[int]], *, max_new: int, eos_id: int, pad_id: int = 0,
                    mesh: Mesh | None = None, block: int = 128, kv_cache: bool = True,
                    vision: list[list[bool]] | None = None) -> list[list[int]]:
    """Greedy continuations (up to ``max_new`` tokens, cut after EOS) of each prompt.

    ``vision``: per prompt, true where its token is a vision id (codes and end-of-frame markers,
    as the pack job's vision mask); None = text prompts. Generated tokens are always text.

    Decodes with a KV cache (sharded over ``sp`` when ``mesh`` has a sequence axis > 1: the
    prefill is ring attention). ``kv_cache=False`` decodes with a full pass per token instead
    (the reference the cache is tested against; holds no cache).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    sp = mesh.shape["sp"] if mesh is not None and "sp" in mesh.axis_names else 1
    end = max(len(p) for p in prompts)
    length = _buffer_length(end, max_new, sp * block if end + max_new > block else sp)
    ids, seg, pos, end = left_pad(prompts, length, pad_id)
    vis = np.zeros(ids.shape, bool)
    if vision is not None:
        if len(vision) != len(prompts) or any(len(v) != len(p) for v, p in zip(vision, prompts, strict=False)):
            raise ValueError("one vision mask per prompt, as long as its prompt")
        for i, v in enumerate(vision):
            vis[i, end - len(v):end] = v
    cached = bool(kv_cache)
    key = (id(mesh), max_new, eos_id, cached)
    if key not in model.decoders:
        model.decoders[key] = (_cached_decoder if cached else _decoder)(model, mesh, max_new, eos_id)
    fn = model.decoders[key]
    out = np.asarray(jax.device_get(fn(model.params, jnp.asarray(ids), jnp.asarray(vis), jnp.asarray(seg),
                                       jnp.asarray(pos), jnp.int32(end))))
    replies = []
    for row in out[:, end:end + max_new]:
        row = row.tolist()
        replies.append(row[: row.index(eos_id)] if eos_id in row else row)
    return replies
