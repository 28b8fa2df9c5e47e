"""The fused Pallas attention (interpret mode on CPU) against dense reference attention.

Forward and gradients, fp32, on packed segments with padding, causal and full, GQA, one
device and a ring over 8 emulated devices in all three layouts. The 8-device cases need
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so this file runs
itself in a subprocess that prints one JSON line of errors per case. Sizes are small:
interpret mode runs every kernel program as an XLA loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.trainer import flash_attention as fa
from lwmkit.trainer.flash_ring import flash_ring_attention, resolve_kernel
from lwmkit.trainer.ring_attention import (
    inverse_permutation,
    layout_permutation,
    reference_attention,
    tile_work,
)

TOL = 1e-5
B, L, HQ, HKV, D = 2, 128, 4, 2, 16


def make_inputs(seed: int = 0, length: int = L, hq: int = HQ, hkv: int = HKV):
    """q/k/v, a cotangent, and packed segments whose boundaries straddle tiles and devices."""
    r = np.random.default_rng(seed)
    q, k, v, ct = (
        jnp.asarray(r.normal(size=s), jnp.float32)
        for s in ((B, length, hq, D), (B, length, hkv, D), (B, length, hkv, D), (B, length, hq, D))
    )
    seg = np.ones((B, length), np.int32)
    seg[0, 25:70], seg[0, 70:100], seg[0, 100:107], seg[0, 107:115], seg[0, 115:] = 2, 3, 0, 4, 0
    seg[1, 19:] = 2
    return q, k, v, ct, jnp.asarray(seg[:, :length])


def errors(fn, q, k, v, ct, seg, causal: bool) -> dict[str, float]:
    """Max abs error of the output and of dq, dk, dv against the dense reference."""

    def vjp(f):
        out, pull = jax.vjp(f, q, k, v)
        return (out, *pull(ct))

    got = jax.jit(lambda: vjp(fn))()
    want = vjp(lambda q, k, v: reference_attention(q, k, v, seg, causal=causal))
    return {
        n: float(jnp.max(jnp.abs(a - b)))
        for n, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True)
    }


def sharded(q, k, v, seg, mesh, *, layout: str, causal: bool, impl: str = "ring", block: int = 8):
    """The fused ring on global arrays in original order (permuted into ``layout`` and back)."""
    n = mesh.shape["sp"] if mesh is not None else 1
    perm = layout_permutation(q.shape[1], n, layout)
    take = lambda x: jnp.take(x, perm, axis=1)  # noqa: E731
    out = flash_ring_attention(
        take(q),
        take(k),
        take(v),
        take(seg),
        jnp.asarray(perm),
        mesh,
        causal=causal,
        impl=impl,
        block_q=block,
        block_k=block,
    )
    return jnp.take(out, inverse_permutation(perm), axis=1)


# ----------------------------------------------------------------------------- 8 devices
def _multidevice_cases() -> dict[str, dict[str, float]]:
    from jax.sharding import Mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("sp",))
    q, k, v, ct, seg = make_inputs()
    cases = [(c, lay, "ring") for c in (True, False) for lay in ("contiguous", "zigzag", "striped")]
    cases.append((True, "zigzag", "allgather"))
    results = {}
    for causal, layout, impl in cases:

        def fn(q, k, v, c=causal, lay=layout, i=impl):
            return sharded(q, k, v, seg, mesh, layout=lay, causal=c, impl=i)

        results[f"{impl}-{layout}-{'causal' if causal else 'full'}"] = errors(fn, q, k, v, ct, seg, causal)
    results["model-fsdp2-sp4-zigzag"] = _model_on_a_mesh()
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = sharded(qb, kb, vb, seg, mesh, layout="striped", causal=True)
    results["bf16-striped"] = {
        "out": float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference_attention(qb, kb, vb, seg))))
    }
    return results


def _model_on_a_mesh() -> dict[str, float]:
    """The model's loss and gradients on an fsdp=2 x sp=4 mesh (zig-zag), fused vs XLA hops."""
    from lwmkit.schemas.training import MeshConfig, ModelConfig
    from lwmkit.trainer.loss import loss_and_metrics
    from lwmkit.trainer.mesh import make_mesh, param_shardings
    from lwmkit.trainer.model import init_params

    base = dict(
        text_vocab_size=96,
        vision_vocab_size=0,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_dim=64,
        attention_block=8,
        loss_chunk=16,
    )
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=1, sequence=4))
    r, length = np.random.default_rng(5), 64
    ids = r.integers(0, 96, (2, length)).astype(np.int32)
    seg = np.where(np.arange(length) < 27, 1, 2)[None].repeat(2, 0).astype(np.int32)
    pos = np.where(seg == 1, np.arange(length), np.arange(length) - 27).astype(np.int32)
    batch = {
        "input_ids": ids,
        "target_ids": np.roll(ids, -1, 1),
        "loss_weights": np.ones((2, length), np.float32),
        "segment_ids": seg,
        "positions": pos,
        "vision_mask": np.zeros((2, length), bool),
        "target_vision_mask": np.zeros((2, length), bool),
    }
    perm = layout_permutation(length, 4, "zigzag")
    batch = {k: jnp.asarray(v[:, perm]) for k, v in batch.items()}
    got = {}
    for kernel in ("xla", "pallas"):
        config = ModelConfig(**base, attention_kernel=kernel)
        params = init_params(config, jax.random.PRNGKey(0))
        params = jax.device_put(params, param_shardings(params, mesh))

        def loss(p, config=config):
            return loss_and_metrics(p, batch, config=config, rope_theta=1e4, mesh=mesh, permutation=perm)[0]

        got[kernel] = jax.jit(jax.value_and_grad(loss))(params)
    (lx, gx), (lp, gp) = got["xla"], got["pallas"]
    grads = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(gx), jax.tree.leaves(gp), strict=True)
    )
    return {"loss": abs(float(lx - lp)), "grads": grads}


@pytest.fixture(scope="module")
def multidevice() -> dict[str, dict[str, float]]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [f"ring-{lay}-{c}" for c in ("causal", "full") for lay in ("contiguous", "zigzag", "striped")]
    + ["allgather-zigzag-causal"],
)
def test_fused_ring_on_8_devices_matches_reference(multidevice, case):
    errs = multidevice[case]
    assert max(errs.values()) <= TOL, errs


@pytest.mark.slow
def test_model_on_a_sequence_sharded_mesh_agrees_with_the_xla_ring(multidevice):
    errs = multidevice["model-fsdp2-sp4-zigzag"]
    assert errs["loss"] < 1e-6 and errs["grads"] < 1e-6, errs


@pytest.mark.slow
def test_fused_ring_bf16_keeps_fp32_accumulators(multidevice):
    assert multidevice["bf16-striped"]["out"] < 2e-2


# ----------------------------------------------------------------------------- 1 device
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tiles", [(16, 16), (16, 32)])
def test_fused_single_device_matches_reference(causal, tiles):
    q, k, v, ct, seg = make_inputs(1, length=64)

    def fn(q, k, v):
        return flash_ring_attention(
            q, k, v, seg, jnp.arange(64), None, causal=causal, block_q=tiles[0], block_k=tiles[1]
        )

    assert max(errors(fn, q, k, v, ct, seg, causal).values()) <= TOL


def test_gqa_equals_repeated_kv_heads():
    q, k, v, _, seg = make_inputs(2, length=64)
    run = lambda k, v: flash_ring_attention(q, k, v, seg, jnp.arange(64), None, block_q=16, block_k=16)  # noqa: E731
    rep = lambda x: jnp.repeat(x, HQ // HKV, axis=2)  # noqa: E731
    np.testing.assert_allclose(run(k, v), run(rep(k), rep(v)), atol=TOL)


def test_padding_attends_to_nothing_and_leaks_nothing():
    q, k, v, _, seg = make_inputs(3, length=64)
    seg = seg.at[:, 40:].set(0)
    run = lambda v: flash_ring_attention(q, k, v, seg, jnp.arange(64), None, block_q=16, block_k=16)  # noqa: E731
    out = run(v)
    assert bool(jnp.all(out[:, 40:] == 0.0))
    np.testing.assert_allclose(run(v.at[:, 40:].set(1e6)), out, atol=TOL)


def test_one_hop_returns_the_log_sum_exp():
    q, k, v, _, seg = make_inputs(4, length=64)
    idx = jnp.arange(64, dtype=jnp.int32)
    _, lse = fa.hop_forward(q, k, v, idx, idx, seg, seg, causal=True, block_q=16, block_k=16)
    hk = jnp.repeat(k, HQ // HKV, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, hk, precision="highest") / np.sqrt(D)
    mask = (
        (seg[:, None, :, None] == seg[:, None, None, :])
        & (seg[:, None, :, None] != 0)
        & (idx[:, None] >= idx)
    )
    want = jax.nn.logsumexp(jnp.where(mask, s, -jnp.inf), axis=-1)
    np.testing.assert_allclose(lse, want, atol=1e-5)  # -inf (padding rows) compare equal


@pytest.mark.parametrize("layout", ["contiguous", "striped"])
def test_fully_masked_tiles_are_skipped(layout):
    """The kernel's schedule visits exactly the tiles the ring's work count calls live."""
    n, length, block = 4, 256, 16
    perm = jnp.asarray(layout_permutation(length, n, layout))
    blocks, seg = perm.reshape(n, -1), jnp.ones((1, length // n), jnp.int32)
    for hop in range(n):
        live = [
            int(fa.live_tiles(blocks[r], blocks[(r - hop) % n], seg, seg, block, block, True).sum())
            for r in range(n)
        ]
        assert live == tile_work(length, n, layout, block=block)[hop].tolist()


def test_kernel_choice():
    assert resolve_kernel("auto", "gpu") == "pallas" and resolve_kernel("auto", "cuda") == "pallas"
    assert resolve_kernel("auto", "cpu") == "xla" and resolve_kernel("auto", "tpu") == "xla"
    assert resolve_kernel("pallas", "cpu") == "pallas"
    with pytest.raises(ValueError, match="attention_kernel"):
        resolve_kernel("cudnn")
    with pytest.raises(ValueError, match="does not lower on TPU"):
        resolve_kernel("pallas", "tpu")


def test_lowers_to_triton_for_cuda():
    """On a CPU host, lower the hop kernels for CUDA: every kernel becomes a Triton call.

    This checks the Pallas -> Triton lowering (shapes, primitives), not the PTX compile."""
    from jax import export

    b, length, hq, hk, d = 1, 256, 4, 2, 64
    x = jax.ShapeDtypeStruct((b, length, hq, d), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((b, length, hk, d), jnp.bfloat16)
    seg, idx = jax.ShapeDtypeStruct((b, length), jnp.int32), jax.ShapeDtypeStruct((length,), jnp.int32)
    rows = jax.ShapeDtypeStruct((b, hq, length), jnp.float32)

    def hop(q, k, v, idx, seg, do, lse, delta):
        kw = dict(causal=True, interpret=False)
        return (
            fa.hop_forward(q, k, v, idx, idx, seg, seg, **kw),
            fa.hop_backward(q, k, v, idx, idx, seg, seg, do, lse, delta, **kw),
        )

    check = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    lowered = export.export(jax.jit(hop), platforms=["cuda"], disabled_checks=[check])(
        x, kv, kv, idx, seg, x, rows, rows
    )
    assert lowered.mlir_module().count("stablehlo.custom_call @__gpu$xla.gpu.triton") == 3


def test_tiles_that_triton_cannot_take_are_refused():
    with pytest.raises(ValueError, match="power-of-two query tile"):
        fa.check_tiles(24, 32, 128, interpret=False)
    fa.check_tiles(24, 32, 128, interpret=True)  # interpret mode takes any tile


def test_model_with_the_fused_kernel_equals_the_xla_path():
    """The decoder (GQA, packed rows) gives the same loss gradient whichever kernel runs its hops."""
    from lwmkit.schemas.training import ModelConfig
    from lwmkit.trainer.model import LWMModel, init_params

    base = dict(
        text_vocab_size=96,
        vision_vocab_size=0,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_dim=64,
        attention_block=16,
    )
    xla, fused = ModelConfig(**base, attention_kernel="xla"), ModelConfig(**base, attention_kernel="pallas")
    params = init_params(xla, jax.random.PRNGKey(0))
    r = np.random.default_rng(0)
    ids = jnp.asarray(r.integers(0, 96, (2, 32)), jnp.int32)
    seg = jnp.asarray(np.where(np.arange(32) < 13, 1, 2)[None].repeat(2, 0), jnp.int32)
    pos = jnp.where(seg == 1, jnp.arange(32), jnp.arange(32) - 13)

    def loss_and_grad(config):
        def loss(p):
            return (
                LWMModel(config).apply({"params": p}, ids, ids < 0, pos, seg, method=LWMModel.logits)[0].std()
            )

        return jax.jit(jax.value_and_grad(loss))(params)

    (lx, gx), (lf, gf) = loss_and_grad(xla), loss_and_grad(fused)
    assert abs(float(lx - lf)) < 1e-6
    worst = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(gx), jax.tree.leaves(gf), strict=True)
    )
    assert worst < 1e-6, worst


def test_attention_kernel_is_checked_by_the_config_loader():
    from lwmkit.schemas.errors import ContractError
    from lwmkit.schemas.strict import from_dict
    from lwmkit.schemas.training import ModelConfig

    assert from_dict(ModelConfig, {"attention_kernel": "pallas"}).attention_kernel == "pallas"
    assert ModelConfig().attention_kernel == "auto"
    with pytest.raises(ContractError, match="attention_kernel"):
        from_dict(ModelConfig, {"attention_kernel": "cudnn"})


if __name__ == "__main__":
    print(json.dumps(_multidevice_cases()))
