"""Next-token cross-entropy over LWM's text and vision heads, chunked along the sequence.

Per modality the loss is a weighted mean over its targets, ``sum(w * ce) / sum(w)`` with the
shards' ``loss_weights`` (which already re-weight packed examples so each counts as it would
unpacked). Text targets (``target_vision_mask`` false) are scored by ``lm_head`` over the text
vocabulary, vision targets by ``vision_head`` over the vision vocabulary. The two are combined
as ``(tw * text + vw * vision) / (tw + vw)`` over the modalities PRESENT in the batch: with
LWM's 0.5/0.5 and both present this is LWM's ``0.5 * text + 0.5 * vision``; a batch without
vision targets gives the plain text loss (not half of it, which would silently halve the
learning rate of text-only steps), and a batch with no loss-bearing target at all gives 0.

The heads run over chunks of ``config.loss_chunk`` positions inside a rematerialised scan, so
neither the forward nor the backward pass holds more than ``[B, chunk, V]`` logits per
sequence shard — a 1M-token sequence never materialises full logits. A head runs only on
chunks holding at least one loss-bearing target of its modality (``lax.cond``; a skipped
chunk's sums are exactly zero, so the result is unchanged): data with loss on few tokens —
LWM's book-QA chats, needle haystacks with the answer at the end — skip most of the text
head's work. Without a sequence mesh the chunks are taken per batch row, so one row's
answer does not make every row compute that chunk. Within a chunk, both heads are evaluated
on every position and the mask picks one (dynamic compaction does not jit);
``trainer/flops.py`` counts both on every position (an upper bound).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.flash_ring import attention_for
from lwmkit.trainer.mesh import activation_constraint
from lwmkit.trainer.model import LWMModel, compute_dtype
from lwmkit.trainer.ring_attention import _divisor_at_most, layout_permutation

F32 = jnp.float32
BATCH_KEYS = ("input_ids", "target_ids", "loss_weights", "segment_ids", "positions", "vision_mask",
              "target_vision_mask")
_SUMS = ("weight", "ce", "correct", "tokens")


def ring_size(mesh: Mesh | None, axis_name: str = "sp") -> int:
    return mesh.shape[axis_name] if mesh is not None and axis_name in mesh.axis_names else 1


def token_index(seq_len: int, mesh: Mesh | None, layout: str) -> jax.Array:
    """Original position of every slot of a batch permuted into ``layout`` for ``mesh``."""
    return jnp.asarray(layout_permutation(seq_len, ring_size(mesh), layout))


def build_model(config: ModelConfig, rope_theta: float, mesh: Mesh | None) -> LWMModel:
    """The model wired to ring attention over ``mesh``'s ``sp`` axis (one device if None), each
    hop running ``config.attention_kernel`` (see :func:`~lwmkit.trainer.flash_ring.attention_for`)."""
    return LWMModel(config, rope_theta, attention_for(config, mesh), activation_constraint(mesh))


def _head_ce(h: jax.Array, kernel: jax.Array, targets: jax.Array, weights: jax.Array, dtype) -> dict:
    """Weighted sums of one head over one chunk: h ``[..., d]``, targets/weights ``[...]``."""
    logits = jnp.einsum("...d,dv->...v", h.astype(dtype), kernel.astype(dtype), preferred_element_type=F32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(F32)
    return {"weight": weights.sum(), "ce": (weights * (lse - picked)).sum(),
            "correct": (weights * correct).sum(), "tokens": (weights > 0).sum().astype(F32)}


def head_sums(params: dict[str, Any], hidden: jax.Array, batch: dict[str, jax.Array], config: ModelConfig,
              n_shards: int = 1) -> dict[str, dict[str, jax.Array]]:
    """Per-modality weighted sums (weight, ce, correct, tokens), scanning chunks of positions.

    ``hidden`` ``[B, L, d]`` is viewed as ``[B, n_shards, L/n_shards, d]`` so every chunk
    keeps its sequence sharding (a chunk takes the same slice of every device's shard).
    """
    b, L, d = hidden.shape
    per = L // n_shards
    chunk = _divisor_at_most(per, config.loss_chunk)
    nc = per // chunk

    def split(x):  # [B, L, ...] -> [nc, B, n_shards, chunk, ...] (unsharded: [B * nc, 1, 1, chunk, ...])
        x = x.reshape(b, n_shards, nc, chunk, *x.shape[2:])
        if n_shards == 1:  # rows are independent chunks: skip per row, not per batch-wide slice
            return x.reshape(b * nc, 1, 1, chunk, *x.shape[4:])
        return jnp.moveaxis(x, 2, 0)

    dtype = compute_dtype(config)
    has_vision = config.vision_vocab_size > 0

    zeros = {k: jnp.zeros((), F32) for k in _SUMS}

    def head(kernel, h, tgt, w):  # a chunk without loss-bearing targets costs nothing
        return jax.lax.cond(jnp.any(w != 0), lambda: _head_ce(h, kernel, tgt, w, dtype), lambda: zeros)

    @jax.checkpoint  # recompute the chunk's logits in the backward pass instead of storing them
    def body(acc, xs):
        h, tgt, w, tvm = xs
        out = {"text": head(params["lm_head"]["kernel"], h, jnp.where(tvm, 0, tgt), jnp.where(tvm, 0.0, w))}
        if has_vision:
            out["vision"] = head(params["vision_head"]["kernel"], h, jnp.where(tvm, tgt, 0), jnp.where(tvm, w, 0.0))
        return jax.tree_util.tree_map(jnp.add, acc, out), None

    acc0 = {"text": zeros, **({"vision": zeros} if has_vision else {})}
    xs = (split(hidden), split(batch["target_ids"]), split(batch["loss_weights"].astype(F32)),
          split(batch["target_vision_mask"]))
    sums, _ = jax.lax.scan(body, acc0, xs)
    if not has_vision:
        sums["vision"] = zeros
    return sums


def modality_weights(batch: dict[str, jax.Array], config: ModelConfig) -> dict[str, jax.Array]:
    """Total loss weight of each modality's targets in ``batch``: the denominators of its loss.

    Passed as ``totals`` when the batch is split into micro-batches, so each micro-batch's
    loss is its exact share of the whole batch's and the shares (and their gradients) add
    up to the whole batch's loss (and gradient)."""
    w, tvm = batch["loss_weights"].astype(F32), batch["target_vision_mask"]
    vision = jnp.where(tvm, w, 0.0).sum() if config.vision_vocab_size else jnp.zeros((), F32)
    return {"text": jnp.where(tvm, 0.0, w).sum(), "vision": vision}


def combine(sums: dict[str, dict[str, jax.Array]], *, vision_loss_weight: float, text_loss_weight: float,
            totals: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The documented combination of per-modality weighted means, and the metrics dict.

    ``totals`` (:func:`modality_weights` of the whole batch when ``sums`` cover one
    micro-batch of it): divide by the whole batch's weights, so the loss and every metric
    are this micro-batch's additive share (sum them over the micro-batches)."""
    metrics: dict[str, jax.Array] = {}
    num = jnp.zeros((), F32)
    den = jnp.zeros((), F32)
    for name, lw in (("text", text_loss_weight), ("vision", vision_loss_weight)):
        s = sums[name]
        total = s["weight"] if totals is None else totals[name]
        present = total > 0
        safe = jnp.where(present, total, 1.0)
        mean = s["ce"] / safe
        metrics[f"{name}_loss"] = mean
        metrics[f"{name}_accuracy"] = s["correct"] / safe
        metrics[f"{name}_tokens"] = s["tokens"]
        metrics[f"{name}_weight"] = s["weight"]
        num = num + jnp.where(present, lw * mean, 0.0)
        den = den + jnp.where(present, lw, 0.0)
    loss = num / jnp.where(den > 0, den, 1.0)
    metrics["loss"] = loss
    return loss, metrics


def loss_and_metrics(
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    config: ModelConfig,
    rope_theta: float,
    mesh: Mesh | None,
    layout: str = "contiguous",
    vision_loss_weight: float = 0.5,
    text_loss_weight: float = 0.5,
    totals: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and metrics of one batch of packed sequences (7 arrays, each ``[B, L]``);
    with ``totals`` (see :func:`combine`) the additive share of a micro-batch.

    The batch is already permuted into ``layout`` for ``mesh``'s ``sp`` axis (the data
    boundary's job; positions and segment ids travel with their tokens). Metrics:
    ``loss``, ``{text,vision}_{loss,accuracy,tokens,weight}`` (tokens = loss-bearing targets).
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; a packed batch has {list(BATCH_KEYS)}")
    L = batch["input_ids"].shape[1]
    n = ring_size(mesh)
    model = build_model(config, rope_theta, mesh)
    hidden = model.apply({"params": params}, batch["input_ids"], batch["vision_mask"], batch["positions"],
                         batch["segment_ids"], token_index(L, mesh, layout))
    sums = head_sums(params, hidden, batch, config, n)
    return combine(sums, vision_loss_weight=vision_loss_weight, text_loss_weight=text_loss_weight, totals=totals)
