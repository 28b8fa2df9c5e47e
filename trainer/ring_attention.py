"""Ring attention: blockwise, sequence-parallel attention over a named mesh axis.

Each device of the ring axis keeps its block of queries and passes its K/V block (with the
original token indices and segment ids of those keys) to its neighbour with ``ppermute``,
``n`` hops in all. Within a hop, queries and keys are cut into tiles; a tile whose mask is
entirely false (above the causal diagonal, across two packed examples, or padding) is
skipped with ``lax.cond``. Softmax is online: a running max ``m``, denominator ``l`` and
output ``o`` per query, all kept in fp32 across hops whatever the input dtype.

Masks are built from the ORIGINAL token index of each query and key (``token_index``),
never from where a token sits after a load-balancing permutation, so every layout gives the
same result:

* ``contiguous`` – device r holds tokens ``[r*c, (r+1)*c)`` (LWM's layout; causal work is
  lopsided: the last device works on every hop, the first on one).
* ``zigzag`` – the sequence is cut into ``2n`` chunks; device r holds chunks ``r`` and
  ``2n-1-r``, so every device does the same causal work.
* ``striped`` – device r holds tokens ``r, r+n, r+2n, ...``; tiles above the local diagonal
  are fully masked on every hop, so again every device does half the work.

The backward pass is a custom VJP: a second ring pass that recomputes scores tile by tile
from the saved log-sum-exp; ``dq`` accumulates at home, ``dk``/``dv`` travel the ring with
their K/V block and arrive home after ``n`` hops. Memory per device is O(L / n) — nothing of
size ``L x L`` or ``n x block`` is kept for the backward pass (``bench_attention.py``
measures this against autodiff through the scan).

Public API (global arrays, original token order): :func:`sharded_attention`. The model uses
:func:`ring_attention` on arrays already in layout order (the trainer permutes at the data
boundary with :func:`layout_permutation`). :func:`reference_attention` is the dense check.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lwmkit.schemas.training import LAYOUTS, Layout

Impl = Literal["ring", "allgather"]
BATCH_AXES: tuple[str, ...] = ("dp", "fsdp")
HEAD_AXIS = "tp"
F32 = jnp.float32


# ----------------------------------------------------------------------------- layouts
def layout_permutation(seq_len: int, n_shards: int, layout: str) -> np.ndarray:
    """``perm`` with ``x_layout = x[perm]``: ``perm[j]`` is the original index of slot ``j``.

    Slot ``j`` lives on device ``j // (seq_len // n_shards)`` of the ring axis.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if n_shards < 1 or seq_len % n_shards:
        raise ValueError(f"seq_len={seq_len} is not divisible by the ring size {n_shards}")
    idx = np.arange(seq_len, dtype=np.int32)
    if layout == "contiguous" or n_shards == 1:
        return idx
    if layout == "striped":
        return idx.reshape(-1, n_shards).T.reshape(-1).copy()
    if seq_len % (2 * n_shards):
        raise ValueError(f"zigzag needs seq_len={seq_len} divisible by 2 x ring size = {2 * n_shards}")
    chunks = idx.reshape(2 * n_shards, -1)
    order = [c for r in range(n_shards) for c in (r, 2 * n_shards - 1 - r)]
    return chunks[order].reshape(-1).copy()


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """``inv`` with ``x == x_layout[inv]`` for ``x_layout = x[perm]``."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def divisor_at_most(n: int, cap: int) -> int:
    """Largest divisor of ``n`` not above ``cap`` (tile sizes must tile a device's block)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def tile_mask(q_idx, k_idx, q_seg, k_seg, causal: bool, xp=jnp):
    """``[B, bq, bk]`` mask: same non-padding segment and (if causal) key not after query.

    ``xp`` is ``jnp`` in the kernel or ``np`` for work counting, so both use one rule.
    """
    mask = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg[:, :, None] != 0)
    if causal:
        mask = mask & (q_idx[None, :, None] >= k_idx[None, None, :])
    return mask


def tile_work(
    seq_len: int, n_shards: int, layout: str, *, block: int = 512, causal: bool = True
) -> np.ndarray:
    """Live (computed, not skipped) tiles per device per hop, shape ``[n_hops, n_shards]``.

    The same predicate as the kernel's, on one unpacked sequence: the honest measure of
    load balance where emulated devices share cores (wall time cannot show it).
    """
    perm = layout_permutation(seq_len, n_shards, layout)
    c = seq_len // n_shards
    b = divisor_at_most(c, block)
    blocks = perm.reshape(n_shards, c // b, b)
    # For one segment, tile_mask(...).any() is exactly "max query index >= min key index".
    q_max, k_min = blocks.max(-1), blocks.min(-1)
    work = np.zeros((n_shards, n_shards), np.int64)
    for hop in range(n_shards):
        src = (np.arange(n_shards) - hop) % n_shards
        live = q_max[:, :, None] >= k_min[src][:, None, :] if causal else np.ones((n_shards, c // b, c // b), bool)
        work[hop] = live.sum(axis=(1, 2))
    return work


# ----------------------------------------------------------------------------- tiles
def _scores(q, k, scale):
    """q ``[B,Hk,G,bq,D]``, k ``[B,Hk,bk,D]`` -> fp32 scores ``[B,Hk,G,bq,bk]``."""
    return jnp.einsum("bhgqd,bhkd->bhgqk", q, k, preferred_element_type=F32) * scale


def _tile_forward(q, k, v, mask, scale, state):
    m, den, o = state
    s = jnp.where(mask[:, None, None], _scores(q, k, scale), -jnp.inf)
    m_new = jnp.maximum(m, s.max(-1))
    # A row with nothing visible yet keeps m = -inf; shift by 0 so exp() gives exact zeros.
    m_safe = lax.stop_gradient(jnp.where(jnp.isneginf(m_new), 0.0, m_new))
    p = jnp.exp(s - m_safe[..., None])
    corr = jnp.exp(m - m_safe)
    den = den * corr + p.sum(-1)
    pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v, preferred_element_type=F32)
    return m_new, den, o * corr[..., None] + pv


def _tile_backward(q, k, v, do, lse, delta, mask, scale, grads):
    dq, dk, dv = grads
    p = jnp.where(mask[:, None, None], jnp.exp(_scores(q, k, scale) - lse[..., None]), 0.0)
    dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do.dtype), do, preferred_element_type=F32)
    dp = jnp.einsum("bhgqd,bhkd->bhgqk", do, v, preferred_element_type=F32)
    ds = (p * (dp - delta[..., None])).astype(q.dtype)
    dq = dq + jnp.einsum("bhgqk,bhkd->bhgqd", ds, k, preferred_element_type=F32) * scale
    dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q, preferred_element_type=F32) * scale
    return dq, dk, dv


def _hop_forward(qc, qi, qs, kv, state, causal, scale):
    """Attend every local query tile to every tile of the K/V block held this hop."""
    kc, vc, ki, ks = kv

    def per_q(_, xs):
        q, q_idx, q_seg, m, den, o = xs

        def per_k(st, ys):
            k, v, k_idx, k_seg = ys
            mask = tile_mask(q_idx, k_idx, q_seg, k_seg, causal)
            st = lax.cond(mask.any(), partial(_tile_forward, q, k, v, mask, scale), lambda s: s, st)
            return st, None

        st, _ = lax.scan(per_k, (m, den, o), (kc, vc, ki, ks))
        return None, st

    _, state = lax.scan(per_q, None, (qc, qi, qs, *state))
    return state


def _hop_backward(qc, qi, qs, do, lse, delta, kv, grads, causal, scale):
    kc, vc, ki, ks = kv
    dq, dk, dv = grads

    def per_q(carry, xs):
        q, q_idx, q_seg, do_t, lse_t, delta_t, dq_t = xs

        def per_k(dq_t, ys):
            k, v, k_idx, k_seg, dk_t, dv_t = ys
            mask = tile_mask(q_idx, k_idx, q_seg, k_seg, causal)
            live = partial(_tile_backward, q, k, v, do_t, lse_t, delta_t, mask, scale)
            dq_t, dk_t, dv_t = lax.cond(mask.any(), live, lambda g: g, (dq_t, dk_t, dv_t))
            return dq_t, (dk_t, dv_t)

        dq_t, (dk_new, dv_new) = lax.scan(per_k, dq_t, (kc, vc, ki, ks, *carry))
        return (dk_new, dv_new), dq_t

    (dk, dv), dq = lax.scan(per_q, (dk, dv), (qc, qi, qs, do, lse, delta, dq))
    return dq, dk, dv


# ----------------------------------------------------------------------------- the ring
def _rotate(xs, axis_name: str, n: int):
    """Send every array to the next device of the ring (device r receives from r-1)."""
    perm = [(j, (j + 1) % n) for j in range(n)]
    return tuple(lax.ppermute(x, axis_name, perm) for x in xs)


def _ring_forward(qc, kc, vc, qi, ki, qs, ks, *, axis_name, n, causal, scale):
    shape = qc.shape[:-1]
    state = (jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32), jnp.zeros(qc.shape, F32))
    kv = (kc, vc, ki, ks)
    if n > 1:

        def hop(carry, _):
            state, kv = carry
            nxt = _rotate(kv, axis_name, n)  # no data dependence on this hop's compute: overlaps
            return (_hop_forward(qc, qi, qs, kv, state, causal, scale), nxt), None

        (state, kv), _ = lax.scan(hop, (state, kv), None, length=n - 1)
    m, den, o = _hop_forward(qc, qi, qs, kv, state, causal, scale)
    empty = den == 0.0  # padding queries (or causal rows with no visible key): output 0
    out = o / jnp.where(empty, 1.0, den)[..., None]
    lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, den)))
    return out.astype(qc.dtype), lse


def _ring_backward(res, do, *, axis_name, n, causal, scale):
    qc, kc, vc, qi, ki, qs, ks, out, lse = res
    delta = jnp.sum(do.astype(F32) * out.astype(F32), axis=-1)
    grads = (jnp.zeros(qc.shape, F32), jnp.zeros(kc.shape, F32), jnp.zeros(vc.shape, F32))
    kv = (kc, vc, ki, ks)
    if n == 1:
        grads = _hop_backward(qc, qi, qs, do, lse, delta, kv, grads, causal, scale)
    else:

        def hop(carry, _):
            (dq, dk, dv), kv = carry
            nxt = _rotate(kv, axis_name, n)
            dq, dk, dv = _hop_backward(qc, qi, qs, do, lse, delta, kv, (dq, dk, dv), causal, scale)
            dk, dv = _rotate((dk, dv), axis_name, n)  # dk/dv follow their block; home after n hops
            return ((dq, dk, dv), nxt), None

        (grads, _), _ = lax.scan(hop, (grads, kv), None, length=n)
    dq, dk, dv = grads
    return dq.astype(qc.dtype), dk.astype(kc.dtype), dv.astype(vc.dtype), None, None, None, None


def _make_core(axis_name: str, n: int, causal: bool, scale: float, custom: bool):
    kw = dict(axis_name=axis_name, n=n, causal=causal, scale=scale)

    def core(qc, kc, vc, qi, ki, qs, ks):
        return _ring_forward(qc, kc, vc, qi, ki, qs, ks, **kw)[0]

    if not custom:  # autodiff through the scans: kept for the memory comparison benchmark
        return core

    def fwd(qc, kc, vc, qi, ki, qs, ks):
        out, lse = _ring_forward(qc, kc, vc, qi, ki, qs, ks, **kw)
        return out, (qc, kc, vc, qi, ki, qs, ks, out, lse)

    core = jax.custom_vjp(core)
    core.defvjp(fwd, partial(_ring_backward, **kw))
    return core


def _local_attention(q, k, v, q_idx, k_idx, q_seg, k_seg, *, axis_name, n, causal, block_q, block_k, custom):
    """One device's share: q ``[B,c,Hq,D]``, k/v ``[B,ck,Hkv,D]``, idx ``[c]``, seg ``[B,c]``."""
    b, c, hq, d = q.shape
    ck, hk = k.shape[1], k.shape[2]
    bq, bk = divisor_at_most(c, block_q), divisor_at_most(ck, block_k)
    nq, nk = c // bq, ck // bk
    # Tile-major layouts so the scans walk the leading axis: q [nq,B,Hk,G,bq,D], k [nk,B,Hk,bk,D].
    qc = q.reshape(b, nq, bq, hk, hq // hk, d).transpose(1, 0, 3, 4, 2, 5)
    kc = k.reshape(b, nk, bk, hk, d).transpose(1, 0, 3, 2, 4)
    vc = v.reshape(b, nk, bk, hk, d).transpose(1, 0, 3, 2, 4)
    qi, ki = q_idx.reshape(nq, bq), k_idx.reshape(nk, bk)
    qs = q_seg.reshape(b, nq, bq).transpose(1, 0, 2)
    ks = k_seg.reshape(b, nk, bk).transpose(1, 0, 2)
    core = _make_core(axis_name, n, causal, 1.0 / math.sqrt(d), custom)
    out = core(qc, kc, vc, qi.astype(jnp.int32), ki.astype(jnp.int32), qs, ks)
    return out.transpose(1, 0, 4, 2, 3, 5).reshape(b, c, hq, d)


def _specs(mesh: Mesh, axis_name: str, batch: int, kv_heads: int):
    size = lambda axes: math.prod(mesh.shape[a] for a in axes)  # noqa: E731
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and a != axis_name)
    bspec = batch_axes if batch_axes and batch % size(batch_axes) == 0 else None
    head = HEAD_AXIS if HEAD_AXIS in mesh.axis_names and kv_heads % mesh.shape[HEAD_AXIS] == 0 else None
    return P(bspec, axis_name, head, None), P(bspec, axis_name), P(axis_name)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    token_index: jax.Array,
    mesh: Mesh | None,
    *,
    causal: bool = True,
    axis_name: str = "sp",
    impl: Impl = "ring",
    block_q: int = 512,
    block_k: int = 512,
    custom_vjp: bool = True,
) -> jax.Array:
    """Attention on arrays already in layout order (the model's entry point).

    q ``[B, L, Hq, D]``, k/v ``[B, L, Hkv, D]``, segment_ids ``[B, L]`` (0 = padding),
    token_index ``[L]``: original position of each slot (masks use it). Returns
    ``[B, L, Hq, D]`` in the same (layout) order. ``mesh=None`` runs the single-device
    blockwise path (the same code with a ring of one); ``impl="allgather"`` gathers all K/V
    on every device instead of passing blocks (simple; a fallback for small rings).
    """
    if impl not in ("ring", "allgather"):
        raise ValueError(f"impl must be 'ring' or 'allgather', got {impl!r}")
    _check_shapes(q, k, v, segment_ids, token_index)
    kw = dict(causal=causal, block_q=block_q, block_k=block_k, custom=custom_vjp)
    token_index = jnp.asarray(token_index, jnp.int32)
    if mesh is None or axis_name not in mesh.axis_names:
        return _local_attention(q, k, v, token_index, token_index, segment_ids, segment_ids,
                                axis_name=axis_name, n=1, **kw)
    n = mesh.shape[axis_name]
    if q.shape[1] % n:
        raise ValueError(f"sequence length {q.shape[1]} is not divisible by mesh axis {axis_name}={n}")
    spec_x, spec_seg, spec_idx = _specs(mesh, axis_name, q.shape[0], k.shape[2])

    def local(q, k, v, idx, seg):
        if impl == "allgather":
            gather = partial(lax.all_gather, axis_name=axis_name, tiled=True)
            k_all, v_all = gather(k, axis=1), gather(v, axis=1)
            return _local_attention(q, k_all, v_all, idx, gather(idx, axis=0), seg, gather(seg, axis=1),
                                    axis_name=axis_name, n=1, **kw)
        return _local_attention(q, k, v, idx, idx, seg, seg, axis_name=axis_name, n=n, **kw)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec_x, spec_x, spec_x, spec_idx, spec_seg),
                           out_specs=spec_x, check_vma=False)
    return mapped(q, k, v, token_index, segment_ids)


def _check_shapes(q, k, v, segment_ids, token_index) -> None:
    b, L, hq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, L) or k.shape[3] != d:
        raise ValueError(f"k/v must be [B, L, Hkv, D] matching q {q.shape}; got {k.shape}, {v.shape}")
    if hq % k.shape[2]:
        raise ValueError(f"query heads {hq} must be a multiple of kv heads {k.shape[2]}")
    if segment_ids.shape != (b, L):
        raise ValueError(f"segment_ids must be [B, L] = {(b, L)}, got {segment_ids.shape}")
    if token_index.shape != (L,):
        raise ValueError(f"token_index must be [L] = {(L,)}, got {token_index.shape}")


def sharded_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    mesh: Mesh | None,
    *,
    causal: bool = True,
    axis_name: str = "sp",
    layout: Layout = "contiguous",
    impl: Impl = "ring",
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
    """Ring attention on global arrays in ORIGINAL token order; output in original order.

    q ``[B, L, Hq, D]``, k/v ``[B, L, Hkv, D]`` (GQA when Hkv < Hq), segment_ids ``[B, L]``
    int32 (0 = padding: attends to nothing, attended by nothing; its output is 0). The
    layout permutation is applied and undone here; inside the trainer the data arrive
    permuted and the model calls :func:`ring_attention` directly.
    """
    L = q.shape[1]
    n = mesh.shape[axis_name] if mesh is not None and axis_name in mesh.axis_names else 1
    perm = layout_permutation(L, n, layout)
    take = lambda x: jnp.take(x, perm, axis=1)  # noqa: E731
    out = ring_attention(take(q), take(k), take(v), take(segment_ids), jnp.asarray(perm), mesh,
                         causal=causal, axis_name=axis_name, impl=impl, block_q=block_q, block_k=block_k)
    return jnp.take(out, inverse_permutation(perm), axis=1)


def reference_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool = True
) -> jax.Array:
    """Plain dense attention in fp32 (original order): the ground truth for tests."""
    b, L, hq, d = q.shape
    hk = k.shape[2]
    qg = q.astype(F32).reshape(b, L, hk, hq // hk, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(F32), precision=lax.Precision.HIGHEST) / math.sqrt(d)
    idx = jnp.arange(L)
    mask = tile_mask(idx, idx, segment_ids, segment_ids, causal)[:, None, None]
    s = jnp.where(mask, s, -jnp.inf)
    p = jnp.exp(s - lax.stop_gradient(jnp.where(mask.any(-1, keepdims=True), s.max(-1, keepdims=True), 0.0)))
    p = p / jnp.where(mask.any(-1, keepdims=True), p.sum(-1, keepdims=True), 1.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p, v.astype(F32), precision=lax.Precision.HIGHEST)
    return out.reshape(b, L, hq, d)
