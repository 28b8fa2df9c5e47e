"""Ring attention against dense reference attention: forward and gradients, fp32, <= 1e-5.

Single-device cases run in the test process. The 8-device cases need
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so this file runs
itself in a subprocess (``python test_ring_attention.py``) that prints one JSON line of
errors per case; the tests assert on them.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.trainer.ring_attention import (
    inverse_permutation,
    layout_permutation,
    reference_attention,
    ring_attention,
    sharded_attention,
    tile_work,
)

TOL = 1e-5
B, L, HQ, HKV, D = 2, 256, 4, 2, 16


def make_inputs(seed: int = 0, b: int = B, length: int = L, hq: int = HQ, hkv: int = HKV, d: int = D):
    """Random q/k/v, a cotangent, and packed segments with boundaries that straddle devices."""
    r = np.random.default_rng(seed)
    q, k, v, ct = (jnp.asarray(r.normal(size=s), jnp.float32) for s in
                   ((b, length, hq, d), (b, length, hkv, d), (b, length, hkv, d), (b, length, hq, d)))
    seg = np.ones((b, length), np.int32)
    # row 0: 4 examples with uneven ends (50, 140, 200), padding in the middle and at the end
    seg[0, 50:140], seg[0, 140:200], seg[0, 200:213], seg[0, 213:230], seg[0, 230:] = 2, 3, 0, 4, 0
    seg[1, 37:] = 2  # row 1: two examples split at 37
    return q, k, v, ct, jnp.asarray(seg[:, :length])


def errors(fn, q, k, v, ct, seg, causal: bool) -> dict[str, float]:
    """Max abs error of output and of dq, dk, dv against the reference."""

    def vjp(f):
        out, pull = jax.vjp(f, q, k, v)
        return (out, *pull(ct))

    got = jax.jit(lambda: vjp(fn))()
    want = vjp(lambda q, k, v: reference_attention(q, k, v, seg, causal=causal))
    names = ("out", "dq", "dk", "dv")
    return {n: float(jnp.max(jnp.abs(a - b))) for n, a, b in zip(names, got, want, strict=True)}


# ----------------------------------------------------------------------------- 8 devices
def _multidevice_cases() -> dict[str, dict[str, float]]:
    from jax.sharding import Mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("sp",))
    q, k, v, ct, seg = make_inputs()
    results = {}
    cases = [(c, lay, "ring") for c in (True, False) for lay in ("contiguous", "zigzag", "striped")]
    cases += [(True, "zigzag", "allgather"), (False, "contiguous", "allgather")]
    for causal, layout, impl in cases:
        fn = lambda q, k, v, causal=causal, layout=layout, impl=impl: sharded_attention(  # noqa: E731
            q, k, v, seg, mesh, causal=causal, layout=layout, impl=impl, block_q=8, block_k=8)
        results[f"{impl}-{layout}-{'causal' if causal else 'full'}"] = errors(fn, q, k, v, ct, seg, causal)
    # bf16 inputs: accumulators stay fp32, so the ring matches a dense fp32 pass over the same
    # bf16-rounded inputs to bf16 output precision.
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = sharded_attention(qb, kb, vb, seg, mesh, layout="zigzag", block_q=8, block_k=8)
    ref = reference_attention(qb, kb, vb, seg)
    results["bf16-zigzag"] = {"out": float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))}
    return results


@pytest.fixture(scope="module")
def multidevice(run_on_devices) -> dict[str, dict[str, float]]:
    return run_on_devices(__file__, 8)  # this file's __main__ on 8 emulated devices


RING_CASES = [f"ring-{lay}-{c}" for c in ("causal", "full") for lay in ("contiguous", "zigzag", "striped")]


@pytest.mark.slow
@pytest.mark.parametrize("case", RING_CASES + ["allgather-zigzag-causal", "allgather-contiguous-full"])
def test_ring_on_8_devices_matches_reference(multidevice, case):
    errs = multidevice[case]
    assert max(errs.values()) <= TOL, errs


@pytest.mark.slow
def test_bf16_inputs_keep_fp32_accumulators(multidevice):
    assert multidevice["bf16-zigzag"]["out"] < 2e-2  # bf16 output rounding, not drift across hops


# ----------------------------------------------------------------------------- 1 device
@pytest.mark.parametrize("causal", [True, False])
def test_blockwise_single_device_matches_reference(causal):
    q, k, v, ct, seg = make_inputs(1, length=128)
    fn = lambda q, k, v: ring_attention(q, k, v, seg, jnp.arange(128), None, causal=causal,  # noqa: E731
                                        block_q=16, block_k=32)
    assert max(errors(fn, q, k, v, ct, seg, causal).values()) <= TOL


def test_gqa_and_mha_agree_when_kv_heads_are_repeated():
    q, k, v, _, seg = make_inputs(2, length=64)
    gqa = ring_attention(q, k, v, seg, jnp.arange(64), None, block_q=16, block_k=16)
    rep = lambda x: jnp.repeat(x, HQ // HKV, axis=2)  # noqa: E731  query head j reads kv head j // group
    mha = ring_attention(q, rep(k), rep(v), seg, jnp.arange(64), None, block_q=16, block_k=16)
    np.testing.assert_allclose(gqa, mha, atol=TOL)


def test_padding_attends_to_nothing_and_is_not_attended():
    q, k, v, _, seg = make_inputs(3, length=64)
    seg = seg.at[:, 40:].set(0)
    out = ring_attention(q, k, v, seg, jnp.arange(64), None, block_q=8, block_k=8)
    assert bool(jnp.all(out[:, 40:] == 0.0))
    v2 = v.at[:, 40:].set(1e6)  # garbage in padding keys must not leak into real queries
    np.testing.assert_allclose(ring_attention(q, k, v2, seg, jnp.arange(64), None, block_q=8, block_k=8),
                               out, atol=TOL)


def test_packed_example_sees_only_itself():
    q, k, v, _, seg = make_inputs(4, length=64)
    seg = jnp.where(jnp.arange(64) < 24, 1, 2)[None].repeat(B, 0).astype(jnp.int32)
    packed = ring_attention(q, k, v, seg, jnp.arange(64), None, block_q=8, block_k=8)
    alone = ring_attention(q[:, 24:], k[:, 24:], v[:, 24:], seg[:, 24:], jnp.arange(40), None, block_q=8, block_k=8)
    np.testing.assert_allclose(packed[:, 24:], alone, atol=TOL)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_layout_permutation_is_a_permutation_and_inverts(layout, n):
    perm = layout_permutation(64, n, layout)
    assert sorted(perm.tolist()) == list(range(64))
    x = np.arange(64) * 10
    np.testing.assert_array_equal(x[perm][inverse_permutation(perm)], x)


def test_zigzag_places_chunk_pairs():
    perm = layout_permutation(16, 4, "zigzag")  # 8 chunks of 2; device r holds chunks r and 7-r
    assert perm.reshape(4, 4).tolist()[0] == [0, 1, 14, 15]
    assert layout_permutation(8, 2, "striped").tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_bad_layout_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="layout"):
        layout_permutation(64, 4, "spiral")
    with pytest.raises(ValueError, match="divisible"):
        layout_permutation(60, 8, "zigzag")
    q, k, v, _, seg = make_inputs(length=32)
    with pytest.raises(ValueError, match="segment_ids"):
        ring_attention(q, k, v, seg[:, :16], jnp.arange(32), None)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        ring_attention(q[:, :, :3], k, v, seg, jnp.arange(32), None)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
def test_work_counter_agrees_with_the_kernel_mask(layout):
    from lwmkit.trainer.ring_attention import tile_mask

    n, length, block = 4, 64, 4
    perm = layout_permutation(length, n, layout).reshape(n, -1, block)
    seg = np.ones((1, block), np.int32)
    want = np.zeros((n, n), int)
    for hop in range(n):
        for r in range(n):
            want[hop, r] = sum(bool(tile_mask(qi, ki, seg, seg, True, xp=np).any())
                               for qi in perm[r] for ki in perm[(r - hop) % n])
    np.testing.assert_array_equal(tile_work(length, n, layout, block=block), want)


def test_load_balanced_layouts_even_out_causal_work():
    n = 8
    for layout in ("zigzag", "striped"):
        per_device = tile_work(8192, n, layout, block=256).sum(axis=0)
        assert per_device.max() - per_device.min() <= 0.05 * per_device.max(), (layout, per_device)
    contiguous = tile_work(8192, n, "contiguous", block=256)
    # the last device works on every hop, the first on one: critical path = sum of per-hop max
    zig = tile_work(8192, n, "zigzag", block=256)
    assert zig.max(axis=1).sum() / contiguous.max(axis=1).sum() <= 0.65
    assert zig.sum() <= contiguous.sum() * 1.02  # balance, not extra work


if __name__ == "__main__":  # the 8-device subprocess of `multidevice`
    print(json.dumps(_multidevice_cases()))
