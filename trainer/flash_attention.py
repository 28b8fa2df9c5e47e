"""Fused flash attention for one ring hop, in Pallas (Triton on GPU, interpret mode on CPU).

The same online-softmax tiles as the blockwise path of :mod:`lwmkit.trainer.ring_attention`
(which stays the readable reference), fused into three kernels per hop: the forward (output
and log-sum-exp), ``dq`` and ``dk/dv`` (both recompute the scores from the saved LSE). The
masks use the ring's own rule (``tile_mask``): separate query and key segment ids (0 =
padding) and causality by the ORIGINAL token index of every query and key, so contiguous,
zigzag and striped layouts stay exact on every hop. A hop returns its output in fp32 with its
LSE; :mod:`lwmkit.trainer.flash_ring` combines hops in fp32 as the XLA ring does.

Fully masked tiles are never visited: before each kernel a small XLA pass summarises every
tile (min/max original index, min/max non-padding segment) and lists, per query tile (per
key tile for ``dk/dv``), the key tiles that can hold a visible pair, live ones first; the
kernel loops over ``count`` entries of its list. The summary is conservative (a listed tile
may still be all masked; the in-tile mask is exact).

Why our own kernel (checked on jax 0.11.2, H200; see issue 21): cuDNN through
``jax.nn.dot_product_attention`` takes no separate query/key segment ids and returns no LSE
for combining ring hops; JAX's Pallas Triton ``mha`` takes one segment array for q and kv,
no token indices, and is deprecated; tokamax 0.0.12 fails on jax 0.11.2 (Mosaic: changed
``Mesh`` signature; Triton: the removed ``pl.dot``). So we write plain ``jnp.dot`` and ref
indexing, nothing from ``pallas.triton`` but its ``CompilerParams``.

Tested with jax 0.10.2 on CPU (interpret mode against the dense reference; lowering to
Triton for ``cuda`` checked with ``jax.export``). GPU compile and speed are measured by
``benchmarks/bench_gpu.py``. Tiles must be powers of two >= 16 on GPU (Triton's shapes).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32
BLOCK = 128  # default query/key tile on GPU (the head dim is 128 in the models we train)
_BIG = jnp.iinfo(jnp.int32).max


def use_interpret() -> bool:
    """Interpret mode where Pallas has no compiler for the backend (CPU)."""
    return jax.default_backend() == "cpu"


def check_tiles(block_q: int, block_k: int, head_dim: int, interpret: bool) -> None:
    """Triton needs power-of-two tile shapes and dot operands of at least 16 x 16."""
    if interpret:
        return
    for name, n in (("query tile", block_q), ("key tile", block_k), ("head dim", head_dim)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"the Pallas attention kernel needs a power-of-two {name} >= 16 on GPU, got {n}")


# ----------------------------------------------------------------------------- schedule
def _tile_ranges(idx: jax.Array, seg: jax.Array, block: int):
    """Per tile: min/max original index ``[n]`` and min/max non-padding segment ``[B, n]``."""
    n = idx.shape[0] // block
    it, st = idx.reshape(n, block), seg.reshape(seg.shape[0], n, block)
    return it.min(-1), it.max(-1), jnp.where(st == 0, _BIG, st).min(-1), st.max(-1)


def live_tiles(q_idx, k_idx, q_seg, k_seg, block_q: int, block_k: int, causal: bool) -> jax.Array:
    """``[B, nq, nk]``: may query tile i see key tile j? (segment ranges overlap, and if causal
    some key is not after some query). Padding-only tiles have an empty range: never live."""
    qi_lo, qi_hi, qs_lo, qs_hi = _tile_ranges(q_idx, q_seg, block_q)
    ki_lo, ki_hi, ks_lo, ks_hi = _tile_ranges(k_idx, k_seg, block_k)
    live = (qs_lo[:, :, None] <= ks_hi[:, None, :]) & (ks_lo[:, None, :] <= qs_hi[:, :, None])
    if causal:
        live = live & (qi_hi[:, None] >= ki_lo[None, :])[None]
    return live


def _schedule(live: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row of ``live [B, r, c]``: its live columns first, in order, and how many there are."""
    order = jnp.argsort(~live, axis=-1, stable=True).astype(jnp.int32)
    return order, live.sum(-1, dtype=jnp.int32)


# ----------------------------------------------------------------------------- kernels
def _mask(qi, ki, qs, ks, causal: bool):
    """``tile_mask`` of the XLA path for one (query tile, key tile) pair, in-kernel."""
    mask = (qs[:, None] == ks[None, :]) & (qs[:, None] != 0)
    if causal:
        mask = mask & (qi[:, None] >= ki[None, :])
    return mask


def _dot(a, b, precision):
    return jnp.dot(a, b, preferred_element_type=F32, precision=precision)


def _fwd_kernel(
    order_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    qi_ref,
    ki_ref,
    qs_ref,
    ks_ref,
    o_ref,
    lse_ref,
    *,
    causal,
    scale,
    block_k,
    precision,
):
    q, qi, qs = q_ref[...], qi_ref[...], qs_ref[...]
    bq, d = q.shape

    def body(t, carry):
        m, den, acc = carry
        sl = pl.ds(pl.multiple_of(order_ref[t] * block_k, block_k), block_k)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = _dot(q, k.T, precision) * scale
        s = jnp.where(_mask(qi, ki_ref[sl], qs, ks_ref[sl], causal), s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # nothing visible yet: exp() gives exact 0
        p = jnp.exp(s - m_safe[:, None])
        corr = jnp.exp(m - m_safe)
        acc = acc * corr[:, None] + _dot(p.astype(v.dtype), v, precision)
        return m_new, den * corr + p.sum(-1), acc

    init = (jnp.full((bq,), -jnp.inf, F32), jnp.zeros((bq,), F32), jnp.zeros((bq, d), F32))
    m, den, acc = lax.fori_loop(0, count_ref[pl.program_id(0)], body, init)
    empty = den == 0.0  # padding, or nothing visible on this hop: output 0, LSE -inf (weight 0)
    o_ref[...] = (acc / jnp.where(empty, 1.0, den)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, den)))


def _dq_kernel(
    order_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    qi_ref,
    ki_ref,
    qs_ref,
    ks_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dq_ref,
    *,
    causal,
    scale,
    block_k,
    precision,
):
    q, qi, qs, do = q_ref[...], qi_ref[...], qs_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(t, dq):
        sl = pl.ds(pl.multiple_of(order_ref[t] * block_k, block_k), block_k)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = jnp.where(
            _mask(qi, ki_ref[sl], qs, ks_ref[sl], causal), _dot(q, k.T, precision) * scale, -jnp.inf
        )
        p = jnp.exp(s - lse[:, None])  # LSE is +inf on rows that see nothing: p = 0 there
        ds = p * (_dot(do, v.T, precision) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k, precision)

    dq = lax.fori_loop(0, count_ref[pl.program_id(0)], body, jnp.zeros(q.shape, F32))
    dq_ref[...] = dq * scale


def _dkv_kernel(
    order_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    qi_ref,
    ki_ref,
    qs_ref,
    ks_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dk_ref,
    dv_ref,
    *,
    causal,
    scale,
    block_q,
    groups,
    precision,
):
    k, v, ki, ks = k_ref[...], v_ref[...], ki_ref[...], ks_ref[...]

    def body(t, carry):
        dk, dv = carry
        sl = pl.ds(pl.multiple_of(order_ref[t] * block_q, block_q), block_q)
        mask = _mask(qi_ref[sl], ki, qs_ref[sl], ks, causal)
        for g in range(groups):  # the query heads that share this kv head (GQA)
            q, do = q_ref[sl, g, :], do_ref[sl, g, :]
            s = jnp.where(mask, _dot(q, k.T, precision) * scale, -jnp.inf)
            p = jnp.exp(s - lse_ref[g, sl][:, None])
            dv = dv + _dot(p.astype(do.dtype).T, do, precision)
            ds = p * (_dot(do, v.T, precision) - delta_ref[g, sl][:, None])
            dk = dk + _dot(ds.astype(q.dtype).T, q, precision)
        return dk, dv

    zeros = jnp.zeros(k.shape, F32)
    dk, dv = lax.fori_loop(0, count_ref[pl.program_id(0)], body, (zeros, zeros))
    dk_ref[...] = dk * scale
    dv_ref[...] = dv


# ----------------------------------------------------------------------------- one hop
def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name):
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = plgpu.CompilerParams(num_warps=8, num_stages=2)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=params,
        interpret=interpret,
        name=name,
    )


def _precision(dtype) -> lax.Precision | None:
    # fp32 inputs: true fp32 dots (Triton would otherwise use TF32); bf16: the tensor cores' native.
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == F32 else None


def _common_specs(lk: int, bq: int, d: int, groups: int):
    """q, k, v, q_idx, k_idx, q_seg, k_seg specs for the grid (query tile i, batch b, q head h)."""
    return [
        pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, lk, None, d), lambda i, b, h: (b, 0, h // groups, 0)),
        pl.BlockSpec((None, lk, None, d), lambda i, b, h: (b, 0, h // groups, 0)),
        pl.BlockSpec((bq,), lambda i, b, h: (i,)),
        pl.BlockSpec((lk,), lambda i, b, h: (0,)),
        pl.BlockSpec((None, bq), lambda i, b, h: (b, i)),
        pl.BlockSpec((None, lk), lambda i, b, h: (b, 0)),
    ]


def hop_forward(
    q,
    k,
    v,
    q_idx,
    k_idx,
    q_seg,
    k_seg,
    *,
    causal: bool,
    block_q: int = BLOCK,
    block_k: int = BLOCK,
    out_dtype=F32,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Attention of ``q [B, Lq, Hq, D]`` over one K/V block ``k, v [B, Lk, Hkv, D]``.

    ``q_idx [Lq]``/``k_idx [Lk]``: original token indices; ``q_seg [B, Lq]``/``k_seg [B, Lk]``:
    segment ids (0 = padding). Returns ``(out [B, Lq, Hq, D] out_dtype, lse [B, Hq, Lq] fp32)``;
    rows that see no key on this block get output 0 and LSE ``-inf``.
    """
    interpret = use_interpret() if interpret is None else interpret
    (b, lq, hq, d), lk, hk = q.shape, k.shape[1], k.shape[2]
    check_tiles(block_q, block_k, d, interpret)
    order, count = _schedule(live_tiles(q_idx, k_idx, q_seg, k_seg, block_q, block_k, causal))
    nq, nk = lq // block_q, lk // block_k
    kernel = partial(
        _fwd_kernel, causal=causal, scale=1.0 / math.sqrt(d), block_k=block_k, precision=_precision(q.dtype)
    )
    in_specs = [
        pl.BlockSpec((None, None, nk), lambda i, b, h: (b, i, 0)),
        pl.BlockSpec((None, nq), lambda i, b, h: (b, 0)),
        *_common_specs(lk, block_q, d, hq // hk),
    ]
    out_specs = [
        pl.BlockSpec((None, block_q, None, d), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),
    ]
    out_shape = [jax.ShapeDtypeStruct(q.shape, out_dtype), jax.ShapeDtypeStruct((b, hq, lq), F32)]
    return tuple(
        _call(kernel, (nq, b, hq), in_specs, out_specs, out_shape, interpret, "lwm_flash_fwd")(
            order, count, q, k, v, q_idx, k_idx, q_seg, k_seg
        )
    )


def hop_backward(
    q,
    k,
    v,
    q_idx,
    k_idx,
    q_seg,
    k_seg,
    do,
    lse,
    delta,
    *,
    causal: bool,
    block_q: int = BLOCK,
    block_k: int = BLOCK,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of one hop, fp32: ``(dq [B,Lq,Hq,D], dk, dv [B,Lk,Hkv,D])``.

    ``lse``/``delta`` ``[B, Hq, Lq]`` are the FINAL ones (over all hops; ``+inf`` LSE on rows
    that see nothing; ``delta = sum(do * out)``), so each hop's share is exact on its own.
    """
    interpret = use_interpret() if interpret is None else interpret
    (b, lq, hq, d), lk, hk = q.shape, k.shape[1], k.shape[2]
    g = hq // hk
    check_tiles(block_q, block_k, d, interpret)
    live = live_tiles(q_idx, k_idx, q_seg, k_seg, block_q, block_k, causal)
    nq, nk = lq // block_q, lk // block_k
    kw = dict(causal=causal, scale=1.0 / math.sqrt(d), precision=_precision(q.dtype))
    args = (q, k, v, q_idx, k_idx, q_seg, k_seg, do, lse, delta)

    row = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
    q_tile = pl.BlockSpec((None, block_q, None, d), lambda i, b, h: (b, i, h, 0))
    in_specs = [
        pl.BlockSpec((None, None, nk), lambda i, b, h: (b, i, 0)),
        pl.BlockSpec((None, nq), lambda i, b, h: (b, 0)),
        *_common_specs(lk, block_q, d, g),
        q_tile,
        row,
        row,
    ]
    dq = _call(
        partial(_dq_kernel, block_k=block_k, **kw),
        (nq, b, hq),
        in_specs,
        q_tile,
        jax.ShapeDtypeStruct(q.shape, F32),
        interpret,
        "lwm_flash_dq",
    )(*_schedule(live), *args)

    order, count = _schedule(jnp.swapaxes(live, 1, 2))
    whole_q = pl.BlockSpec((None, lq, g, d), lambda j, b, h: (b, 0, h, 0))  # the g query heads of kv head h
    k_tile = pl.BlockSpec((None, block_k, None, d), lambda j, b, h: (b, j, h, 0))
    rows = pl.BlockSpec((None, g, lq), lambda j, b, h: (b, h, 0))
    in_specs = [
        pl.BlockSpec((None, None, nq), lambda j, b, h: (b, j, 0)),
        pl.BlockSpec((None, nk), lambda j, b, h: (b, 0)),
        whole_q,
        k_tile,
        k_tile,
        pl.BlockSpec((lq,), lambda j, b, h: (0,)),
        pl.BlockSpec((block_k,), lambda j, b, h: (j,)),
        pl.BlockSpec((None, lq), lambda j, b, h: (b, 0)),
        pl.BlockSpec((None, block_k), lambda j, b, h: (b, j)),
        whole_q,
        rows,
        rows,
    ]
    dk, dv = _call(
        partial(_dkv_kernel, block_q=block_q, groups=g, **kw),
        (nk, b, hk),
        in_specs,
        [k_tile, k_tile],
        [jax.ShapeDtypeStruct(k.shape, F32)] * 2,
        interpret,
        "lwm_flash_dkv",
    )(order, count, *args)
    return dq, dk, dv
