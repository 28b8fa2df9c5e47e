"""Ring attention whose every hop is the fused Pallas kernel, and the model's kernel choice.

The ring is :mod:`lwmkit.trainer.ring_attention`'s (same ``shard_map`` over ``sp``, same
``ppermute`` of K/V with their token indices and segment ids, same layouts, same custom VJP
shape): only the work inside a hop changes. A hop returns its output in fp32 with its LSE,
and hops combine in fp32 (``out = sum_h exp(lse_h - lse) out_h``). The backward pass is a
second ring pass: each hop's ``dq``/``dk``/``dv`` come from the fused backward kernels using
the final LSE; ``dk``/``dv`` travel with their block and arrive home after ``n`` hops.

:func:`attention_for` picks the model's kernel from ``ModelConfig.attention_kernel``:
``auto`` is the fused kernel on GPU and the XLA blockwise path elsewhere (CPU, where that
path is the reference, and TPU, where the Triton kernel does not lower).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer import flash_attention as fa
from lwmkit.trainer.ring_attention import _check_shapes, _rotate, _specs, divisor_at_most, ring_attention

F32 = jnp.float32


def resolve_kernel(name: str, backend: str | None = None) -> str:
    """``auto`` -> ``pallas`` on GPU, ``xla`` elsewhere; ``xla``/``pallas`` as given."""
    if name not in ("auto", "xla", "pallas"):
        raise ValueError(f"attention_kernel must be auto, xla or pallas, got {name!r}")
    backend = backend or jax.default_backend()
    if name == "pallas" and backend == "tpu":  # Mosaic wants (8, 128)-aligned blocks: another kernel
        raise ValueError(
            "attention_kernel 'pallas' is a Triton (GPU) kernel and does not lower on TPU; use 'xla'"
        )
    if name != "auto":
        return name
    return "pallas" if backend in ("gpu", "cuda", "rocm") else "xla"


def _combine(o, lse, o_h, lse_h):
    """Merge two partial softmaxes (fp32): out ``[B,L,H,D]``, lse ``[B,H,L]`` (-inf = empty)."""
    new = jnp.logaddexp(lse, lse_h)
    safe = jnp.where(new == -jnp.inf, 0.0, new)
    w = lambda x: jnp.swapaxes(jnp.exp(x - safe), 1, 2)[..., None]  # noqa: E731 -> [B, L, H, 1]
    return o * w(lse) + o_h * w(lse_h), new


def _ring_forward(q, k, v, qi, ki, qs, ks, *, axis_name, n, hop):
    if n == 1:
        out, lse = hop(q, k, v, qi, ki, qs, ks, out_dtype=q.dtype)
    else:
        hop32 = lambda kv: hop(q, kv[0], kv[1], qi, kv[2], qs, kv[3], out_dtype=F32)  # noqa: E731

        def step(carry, _):
            (out, lse), kv = carry
            nxt = _rotate(kv, axis_name, n)  # no data dependence on this hop's compute: overlaps
            return (_combine(out, lse, *hop32(kv)), nxt), None

        init = (jnp.zeros(q.shape, F32), jnp.full((q.shape[0], q.shape[2], q.shape[1]), -jnp.inf, F32))
        (state, kv), _ = lax.scan(step, (init, (k, v, ki, ks)), None, length=n - 1)
        out, lse = _combine(*state, *hop32(kv))
    # Rows that see nothing anywhere: LSE +inf, so the backward kernels' exp(s - lse) is 0.
    return out.astype(q.dtype), jnp.where(lse == -jnp.inf, jnp.inf, lse)


def _ring_backward(res, do, *, axis_name, n, hop_bwd):
    q, k, v, qi, ki, qs, ks, out, lse = res
    delta = jnp.einsum("blhd,blhd->bhl", do.astype(F32), out.astype(F32))
    grad = lambda kv: hop_bwd(q, kv[0], kv[1], qi, kv[2], qs, kv[3], do, lse, delta)  # noqa: E731
    if n == 1:
        dq, dk, dv = grad((k, v, ki, ks))
    else:

        def step(carry, _):
            (dq, dk, dv), kv = carry
            nxt = _rotate(kv, axis_name, n)
            g = grad(kv)
            # dk/dv follow their block round the ring and are home after n hops
            dk, dv = _rotate((dk + g[1], dv + g[2]), axis_name, n)
            return ((dq + g[0], dk, dv), nxt), None

        zeros = (jnp.zeros(q.shape, F32), jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32))
        ((dq, dk, dv), _), _ = lax.scan(step, (zeros, (k, v, ki, ks)), None, length=n)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


def _make_core(axis_name: str, n: int, causal: bool, block_q: int, block_k: int):
    tiles = dict(causal=causal, block_q=block_q, block_k=block_k)
    fwd_kw = dict(axis_name=axis_name, n=n, hop=partial(fa.hop_forward, **tiles))

    @jax.custom_vjp
    def core(q, k, v, qi, ki, qs, ks):
        return _ring_forward(q, k, v, qi, ki, qs, ks, **fwd_kw)[0]

    def fwd(q, k, v, qi, ki, qs, ks):
        out, lse = _ring_forward(q, k, v, qi, ki, qs, ks, **fwd_kw)
        return out, (q, k, v, qi, ki, qs, ks, out, lse)

    core.defvjp(
        fwd, partial(_ring_backward, axis_name=axis_name, n=n, hop_bwd=partial(fa.hop_backward, **tiles))
    )
    return core


def _local(q, k, v, q_idx, k_idx, q_seg, k_seg, *, axis_name, n, causal, block_q, block_k):
    bq, bk = divisor_at_most(q.shape[1], block_q), divisor_at_most(k.shape[1], block_k)
    ints = (x.astype(jnp.int32) for x in (q_idx, k_idx, q_seg, k_seg))
    return _make_core(axis_name, n, causal, bq, bk)(q, k, v, *ints)


def flash_ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    token_index: jax.Array,
    mesh: Mesh | None,
    *,
    causal: bool = True,
    axis_name: str = "sp",
    impl: str = "ring",
    block_q: int = fa.BLOCK,
    block_k: int = fa.BLOCK,
) -> jax.Array:
    """:func:`~lwmkit.trainer.ring_attention.ring_attention` with the fused kernel per hop.

    Same arguments and result: q ``[B, L, Hq, D]``, k/v ``[B, L, Hkv, D]``, segment_ids
    ``[B, L]`` (0 = padding), token_index ``[L]`` (original position of each slot), arrays in
    layout order; ``mesh=None`` is one device (a ring of one).
    """
    if impl not in ("ring", "allgather"):
        raise ValueError(f"impl must be 'ring' or 'allgather', got {impl!r}")
    _check_shapes(q, k, v, segment_ids, token_index)
    token_index = jnp.asarray(token_index, jnp.int32)
    kw = dict(axis_name=axis_name, causal=causal, block_q=block_q, block_k=block_k)
    if mesh is None or axis_name not in mesh.axis_names:
        return _local(q, k, v, token_index, token_index, segment_ids, segment_ids, n=1, **kw)
    n = mesh.shape[axis_name]
    if q.shape[1] % n:
        raise ValueError(f"sequence length {q.shape[1]} is not divisible by mesh axis {axis_name}={n}")
    spec_x, spec_seg, spec_idx = _specs(mesh, axis_name, q.shape[0], k.shape[2])

    def local(q, k, v, idx, seg):
        if impl == "allgather":
            gather = partial(lax.all_gather, axis_name=axis_name, tiled=True)
            k_all, v_all, idx_all, seg_all = (
                gather(k, axis=1),
                gather(v, axis=1),
                gather(idx, axis=0),
                gather(seg, axis=1),
            )
            return _local(q, k_all, v_all, idx, idx_all, seg, seg_all, n=1, **kw)
        return _local(q, k, v, idx, idx, seg, seg, n=n, **kw)

    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec_x, spec_x, spec_x, spec_idx, spec_seg),
        out_specs=spec_x,
        check_vma=False,
    )
    return mapped(q, k, v, token_index, segment_ids)


def attention_for(config: ModelConfig, mesh: Mesh | None, *, axis_name: str = "sp"):
    """The model's attention function ``(q, k, v, segment_ids, token_index) -> out`` for ``config``."""
    if resolve_kernel(config.attention_kernel) == "pallas":
        return partial(
            flash_ring_attention, mesh=mesh, causal=True, axis_name=axis_name, impl=config.attention_impl
        )
    return partial(
        ring_attention,
        mesh=mesh,
        causal=True,
        axis_name=axis_name,
        impl=config.attention_impl,
        block_q=config.attention_block,
        block_k=config.attention_block,
    )
