"""The LWM network (Flax linen): a LLaMA-style decoder with LWM's vision embedding and head.

Math only: where each array lives is ``trainer/mesh.py``'s business, the attention kernel is
``trainer/ring_attention.py`` or the fused ``trainer/flash_ring.py`` (passed in as ``attention``), the loss is ``trainer/loss.py``.

Parameter tree (EasyLM/LWM naming, so LLaMA-2 and LWM checkpoints convert by renaming only;
kernels are ``[in, out]`` as in Flax, i.e. the transpose of PyTorch's ``weight``)::

    transformer/wte/embedding                    [text_vocab, d]
    transformer/vte/embedding                    [vision_vocab, d]     (absent if vision_vocab_size == 0)
    transformer/h/{i}/attention_norm/kernel      [d]
    transformer/h/{i}/attention/wq/kernel        [d, n_heads * head_dim]
    transformer/h/{i}/attention/wk/kernel        [d, kv_heads * head_dim]
    transformer/h/{i}/attention/wv/kernel        [d, kv_heads * head_dim]
    transformer/h/{i}/attention/wo/kernel        [n_heads * head_dim, d]
    transformer/h/{i}/ffn_norm/kernel            [d]
    transformer/h/{i}/feed_forward/w1/kernel     [d, mlp]   (gate: silu(x w1) * (x w3))
    transformer/h/{i}/feed_forward/w3/kernel     [d, mlp]   (up)
    transformer/h/{i}/feed_forward/w2/kernel     [mlp, d]   (down)
    transformer/ln_f/kernel                      [d]
    lm_head/kernel                               [d, text_vocab]
    vision_head/kernel                           [d, vision_vocab]   (absent if vision_vocab_size == 0)

With ``scan_layers`` the per-layer arrays are stacked instead: ``transformer/h/<same suffix>``
with a leading ``[n_layers]`` axis (``stack_layers``/``unstack_layers`` convert).

RoPE uses LWM's **interleaved-pair** convention (EasyLM's complex rotation): dims
``(2i, 2i+1)`` form a pair rotated by ``position * theta^(-2i/head_dim)``. HF's rotate-half
layout differs by a row permutation of wq/wk. GQA: query head ``j`` reads kv head
``j // (n_heads / kv_heads)``. Vision positions (``vision_mask``) are embedded with ``vte``
and predicted with ``vision_head``; the rest with ``wte``/``lm_head`` (untied).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.flash_ring import attention_for
from lwmkit.trainer.mesh import activation_constraint
from lwmkit.trainer.ring_attention import tile_mask

F32 = jnp.float32
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
Constrain = Callable[[jax.Array, str], jax.Array]
KV_CACHE_MODES = ("none", "prefill", "step")
_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _no_constraint(x: jax.Array, kind: str) -> jax.Array:
    return x


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else F32


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Interleaved-pair RoPE. x ``[B, L, H, D]``, positions ``[B, L]`` (restart per segment)."""
    d = x.shape[-1]
    freqs = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=F32) / d))
    angle = positions.astype(F32)[..., None] * freqs  # [B, L, D/2]
    cos, sin = jnp.cos(angle)[:, :, None], jnp.sin(angle)[:, :, None]
    pairs = x.astype(F32).reshape(*x.shape[:-1], d // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any = F32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("kernel", nn.initializers.ones, (x.shape[-1],), F32)
        x32 = x.astype(F32)  # the variance in fp32 even under bf16 compute
        y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)


def _dense(config: ModelConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=compute_dtype(config), param_dtype=F32,
                    kernel_init=nn.initializers.normal(config.init_std), name=name)


class Embed(nn.Module):
    """Table lookup with the table gathered first (FSDP-style), so the gather's output can
    take the activation sharding instead of being replicated and re-split by XLA."""

    vocab: int
    config: ModelConfig
    constrain: Constrain = _no_constraint

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        init = nn.initializers.normal(self.config.init_std)
        table = self.param("embedding", init, (self.vocab, self.config.d_model), F32)
        table = self.constrain(table.astype(compute_dtype(self.config)), "table")
        return jnp.take(table, ids, axis=0)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_seg: jax.Array, k_seg: jax.Array,
                     slot: jax.Array) -> jax.Array:
    """One query per row against a KV cache: plain masked softmax in fp32.

    q ``[B, 1, H, D]`` sits at slot ``slot``; k/v ``[B, T, Hk, D]`` (RoPE already applied);
    q_seg ``[B, 1]``, k_seg ``[B, T]``. The mask is the kernels' own rule (``tile_mask``):
    same non-padding segment, key slot not after the query's, so unwritten slots stay unseen.
    """
    b, _, hq, d = q.shape
    hk = k.shape[2]
    qg = q.astype(F32).reshape(b, hk, hq // hk, d)  # query head j reads kv head j // group
    s = jnp.einsum("bhgd,bkhd->bhgk", qg, k.astype(F32)) / np.float32(np.sqrt(d))
    mask = tile_mask(slot[None], jnp.arange(k.shape[1]), q_seg, k_seg, causal=True)[:, 0]  # [B, T]
    p = jax.nn.softmax(jnp.where(mask[:, None, None], s, -jnp.inf), axis=-1)
    out = jnp.einsum("bhgk,bkhd->bhgd", p, v.astype(F32))
    return out.reshape(b, 1, hq, d).astype(q.dtype)


class Attention(nn.Module):
    """Self-attention. ``kv_cache`` (decoding only, see :meth:`LWMModel.__call__`): ``"prefill"``
    runs as usual and stores every slot's K (after RoPE) and V in the ``cache`` collection;
    ``"step"`` takes one token per row, writes its K/V at slot ``token_index[0]`` of that
    cache and attends over it with :func:`cached_attention`. The cache keeps the ``heads``
    activation sharding (slots over ``sp``, kv heads over ``tp``)."""

    config: ModelConfig
    attention: AttentionFn
    rope_theta: float
    constrain: Constrain = _no_constraint
    kv_cache: str = "none"

    @nn.compact
    def __call__(self, x, positions, segment_ids, token_index):
        c = self.config
        b, L, _ = x.shape
        q = _dense(c, c.n_heads * c.head_dim, "wq")(x).reshape(b, L, c.n_heads, c.head_dim)
        k = _dense(c, c.kv_heads * c.head_dim, "wk")(x).reshape(b, L, c.kv_heads, c.head_dim)
        v = _dense(c, c.kv_heads * c.head_dim, "wv")(x).reshape(b, L, c.kv_heads, c.head_dim)
        q = self.constrain(apply_rope(q, positions, self.rope_theta), "heads")
        k = self.constrain(apply_rope(k, positions, self.rope_theta), "heads")
        if self.kv_cache == "step":
            out = self._step(q, k, v, segment_ids, token_index[0])
        else:
            out = self.attention(q, k, v, segment_ids, token_index)
            if self.kv_cache == "prefill":
                self.put_variable("cache", "k", k)
                self.put_variable("cache", "v", v)
        return _dense(c, c.d_model, "wo")(out.reshape(b, L, c.n_heads * c.head_dim))

    def _step(self, q, k, v, key_segment_ids, slot):
        if not self.has_variable("cache", "k"):
            raise ValueError("kv_cache='step' needs the cache a kv_cache='prefill' call returned")
        cache_k, cache_v = self.variable("cache", "k"), self.variable("cache", "v")
        for var, new in ((cache_k, k), (cache_v, v)):  # pinned: a sequence-sharded cache stays sharded
            var.value = self.constrain(
                lax.dynamic_update_slice_in_dim(var.value, new.astype(var.value.dtype), slot, axis=1), "heads")
        q_seg = lax.dynamic_slice_in_dim(key_segment_ids, slot, 1, axis=1)
        return cached_attention(q, cache_k.value, cache_v.value, q_seg, key_segment_ids, slot)


class FeedForward(nn.Module):
    config: ModelConfig
    constrain: Constrain = _no_constraint

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gate = nn.silu(_dense(c, c.mlp_dim, "w1")(x)) * _dense(c, c.mlp_dim, "w3")(x)
        return _dense(c, c.d_model, "w2")(self.constrain(gate, "mlp"))


class Block(nn.Module):
    config: ModelConfig
    attention: AttentionFn
    rope_theta: float
    constrain: Constrain = _no_constraint
    kv_cache: str = "none"

    @nn.compact
    def __call__(self, x, positions, segment_ids, token_index):
        c, dt = self.config, compute_dtype(self.config)
        h = RMSNorm(c.norm_eps, dt, name="attention_norm")(x)
        x = x + Attention(c, self.attention, self.rope_theta, self.constrain, self.kv_cache, name="attention")(
            h, positions, segment_ids, token_index)
        h = RMSNorm(c.norm_eps, dt, name="ffn_norm")(x)
        x = x + FeedForward(c, self.constrain, name="feed_forward")(h)
        return self.constrain(x, "hidden")


class ScannedBlock(Block):
    """``Block`` in ``nn.scan``'s (carry, x) -> (carry, y) form."""

    @nn.compact
    def __call__(self, x, positions, segment_ids, token_index):
        return super().__call__(x, positions, segment_ids, token_index), None


def _block_class(config: ModelConfig, scanned: bool, kv_cache: str = "none") -> type[nn.Module]:
    cls: Any = ScannedBlock if scanned else Block
    if config.remat != "none" and kv_cache == "none":  # decoding keeps no activations for a backward pass
        cls = nn.remat(cls, policy=_REMAT[config.remat], prevent_cse=not scanned)
    return cls


class BlockStack(nn.Module):
    """Layers ``h/0 .. h/{n-1}`` (EasyLM's naming), applied in order."""

    config: ModelConfig
    attention: AttentionFn
    rope_theta: float
    constrain: Constrain = _no_constraint
    kv_cache: str = "none"

    @nn.compact
    def __call__(self, x, positions, segment_ids, token_index):
        cls = _block_class(self.config, False, self.kv_cache)
        for i in range(self.config.n_layers):
            x = cls(self.config, self.attention, self.rope_theta, self.constrain, self.kv_cache, name=str(i))(
                x, positions, segment_ids, token_index)
        return x


class Transformer(nn.Module):
    config: ModelConfig
    attention: AttentionFn
    rope_theta: float
    constrain: Constrain = _no_constraint
    kv_cache: str = "none"

    @nn.compact
    def __call__(self, input_ids, vision_mask, positions, segment_ids, token_index):
        c, dt = self.config, compute_dtype(self.config)
        x = Embed(c.text_vocab_size, c, self.constrain, name="wte")(jnp.where(vision_mask, 0, input_ids))
        if c.vision_vocab_size:
            xv = Embed(c.vision_vocab_size, c, self.constrain, name="vte")(jnp.where(vision_mask, input_ids, 0))
            x = jnp.where(vision_mask[..., None], xv, x)
        x = self.constrain(x, "hidden")
        args = (self.config, self.attention, self.rope_theta, self.constrain, self.kv_cache)
        if c.scan_layers:  # the KV cache, like the params, gets a leading [n_layers] axis
            stack = nn.scan(_block_class(c, True, self.kv_cache), variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True},
                            in_axes=(nn.broadcast,) * 3, length=c.n_layers)
            x, _ = stack(*args, name="h")(x, positions, segment_ids, token_index)
        else:
            x = BlockStack(*args, name="h")(x, positions, segment_ids, token_index)
        return RMSNorm(c.norm_eps, dt, name="ln_f")(x)


class LWMModel(nn.Module):
    """The decoder. ``__call__`` returns final hidden states ``[B, L, d]`` (after ``ln_f``).

    Inputs ``[B, L]``: input_ids (text or vision ids), vision_mask, positions (RoPE),
    segment_ids (0 = padding), and token_index ``[L]`` (original order of the slots when
    the batch is permuted for load balancing; ``None`` = ``arange(L)``). The heads are
    applied by :meth:`logits` (short sequences) or chunked in ``trainer/loss.py``.

    KV-cached decoding (same params, nothing recomputed): ``kv_cache="prefill"`` is an ordinary
    call over the whole ``[B, T]`` buffer applied with ``mutable=["cache"]``; it returns the
    cache (per layer K after RoPE and V, ``[B, T, kv_heads, head_dim]``). ``kv_cache="step"``
    is applied with that cache (``mutable=["cache"]``) to ONE token per row: input_ids,
    vision_mask, positions ``[B, 1]``, segment_ids the buffer's ``[B, T]`` (the keys'),
    token_index ``[1]`` = the slot being written; it returns that slot's hidden state and
    the updated cache.
    """

    config: ModelConfig
    rope_theta: float = 10000.0
    attention: AttentionFn | None = None  # None = single-device attention (config.attention_kernel)
    constrain: Constrain = _no_constraint
    kv_cache: str = "none"  # "none" | "prefill" | "step" (decoding only)

    def setup(self) -> None:
        c = self.config
        if self.kv_cache not in KV_CACHE_MODES:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_MODES}, got {self.kv_cache!r}")
        attention = self.attention or attention_for(c, None)
        self.transformer = Transformer(c, attention, self.rope_theta, self.constrain, self.kv_cache)
        self.lm_head = _dense(c, c.text_vocab_size, "lm_head")
        if c.vision_vocab_size:
            self.vision_head = _dense(c, c.vision_vocab_size, "vision_head")

    def __call__(self, input_ids, vision_mask, positions, segment_ids, token_index=None):
        if token_index is None:
            token_index = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
        return self.transformer(input_ids, vision_mask, positions, segment_ids, token_index)

    def logits(self, input_ids, vision_mask, positions, segment_ids, token_index=None):
        """``(text_logits [B,L,Vt], vision_logits [B,L,Vv] or None)`` in fp32: short L only."""
        h = self(input_ids, vision_mask, positions, segment_ids, token_index)
        vision = self.vision_head(h).astype(F32) if self.config.vision_vocab_size else None
        return self.lm_head(h).astype(F32), vision


def _dummy_inputs(length: int = 2) -> tuple[jax.Array, ...]:
    ids = jnp.zeros((1, length), jnp.int32)
    return ids, jnp.zeros((1, length), bool), ids, jnp.ones((1, length), jnp.int32)


def init_params(config: ModelConfig, rng: jax.Array) -> dict[str, Any]:
    """Fresh fp32 params (normal(init_std) weights, unit norms), without the 'params' key."""
    init = jax.jit(partial(LWMModel(config).init, method=LWMModel.logits))  # jit: one compile, no op-by-op
    return dict(init(rng, *_dummy_inputs())["params"])


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """Shapes/dtypes of the param tree without allocating it (``jax.ShapeDtypeStruct`` leaves)."""
    return jax.eval_shape(partial(init_params, config), jax.random.PRNGKey(0))


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def stack_layers(params: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Per-layer tree (``h/{i}``) -> scanned tree (``h`` with a leading layer axis)."""
    tr = dict(params["transformer"])
    layers = [tr["h"][str(i)] for i in range(n_layers)]
    tr["h"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return {**params, "transformer": tr}


def unstack_layers(params: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Scanned tree -> per-layer tree (``h/{i}``)."""
    tr = dict(params["transformer"])
    stacked = tr["h"]
    tr["h"] = {str(i): jax.tree_util.tree_map(lambda x, i=i: x[i], stacked) for i in range(n_layers)}
    return {**params, "transformer": tr}


def build_model(config: ModelConfig, rope_theta: float, mesh: Mesh | None) -> LWMModel:
    """The model wired to ring attention over ``mesh``'s ``sp`` axis (one device if None), each
    hop running ``config.attention_kernel`` (see :func:`~lwmkit.trainer.flash_ring.attention_for`)."""
    return LWMModel(config, rope_theta, attention_for(config, mesh), activation_constraint(mesh))
