"""The LWM decoder: parameter names/shapes, RoPE convention, vision routing, packing, switches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.model import (
    LWMModel,
    apply_rope,
    count_params,
    init_params,
    param_shapes,
    stack_layers,
    unstack_layers,
)

TINY = ModelConfig(text_vocab_size=96, vision_vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   mlp_dim=64, attention_block=8, loss_chunk=8)
L = 32


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.PRNGKey(0))


def inputs(seed: int = 0, length: int = L):
    r = np.random.default_rng(seed)
    vm = np.zeros((2, length), bool)
    vm[:, 10:20] = True
    ids = np.where(vm, r.integers(0, 40, (2, length)), r.integers(0, 96, (2, length))).astype(np.int32)
    pos = np.tile(np.arange(length, dtype=np.int32), (2, 1))
    seg = np.ones((2, length), np.int32)
    return jnp.asarray(ids), jnp.asarray(vm), jnp.asarray(pos), jnp.asarray(seg)


def forward(params, *args, config=TINY):
    return _forward(config)(params, *args)


_COMPILED: dict = {}


def _forward(config):
    if config not in _COMPILED:
        model = LWMModel(config, 10000.0)
        _COMPILED[config] = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
    return _COMPILED[config]


def test_param_tree_uses_easylm_names_and_shapes(params):
    assert set(params) == {"transformer", "lm_head", "vision_head"}
    tr = params["transformer"]
    assert tr["wte"]["embedding"].shape == (96, 32) and tr["vte"]["embedding"].shape == (40, 32)
    assert tr["ln_f"]["kernel"].shape == (32,)
    assert set(tr["h"]) == {"0", "1"}
    layer = tr["h"]["0"]
    assert layer["attention"]["wq"]["kernel"].shape == (32, 32)
    assert layer["attention"]["wk"]["kernel"].shape == (32, 16)  # 2 kv heads x 8
    assert layer["attention"]["wo"]["kernel"].shape == (32, 32)
    assert layer["feed_forward"]["w1"]["kernel"].shape == (32, 64)
    assert layer["feed_forward"]["w2"]["kernel"].shape == (64, 32)
    assert set(layer) == {"attention", "feed_forward", "attention_norm", "ffn_norm"}
    assert params["lm_head"]["kernel"].shape == (32, 96) and params["vision_head"]["kernel"].shape == (32, 40)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_llama2_7b_shape_has_its_known_parameter_count():
    shapes = param_shapes(ModelConfig(vision_vocab_size=0))  # abstract: nothing allocated
    assert count_params(shapes) == 6_738_415_616  # LLaMA-2-7B


def test_text_only_model_has_no_vision_params():
    p = param_shapes(ModelConfig(text_vocab_size=64, vision_vocab_size=0, d_model=16, n_layers=1, n_heads=2,
                                 mlp_dim=32))
    assert "vision_head" not in p and "vte" not in p["transformer"]


def test_rope_is_interleaved_pairs_as_complex_rotation():
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 2, 8))
    pos = jnp.arange(5)[None]
    got = apply_rope(x, pos, 10000.0)
    freqs = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
    z = np.asarray(x[..., 0::2]) + 1j * np.asarray(x[..., 1::2])  # pairs (2i, 2i+1) as complex
    rot = z * np.exp(1j * np.arange(5)[None, :, None, None] * freqs)
    want = np.stack([rot.real, rot.imag], axis=-1).reshape(x.shape)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rope_scores_depend_only_on_distance():
    q, k = jax.random.normal(jax.random.PRNGKey(2), (2, 1, 1, 1, 16))
    score = lambda i, j: float(jnp.sum(apply_rope(q, jnp.array([[i]]), 1e6) * apply_rope(k, jnp.array([[j]]), 1e6)))  # noqa: E731
    assert score(7, 3) == pytest.approx(score(1004, 1000), abs=1e-4)


def test_vision_positions_use_vision_table(params):
    ids, vm, pos, seg = inputs()
    base = forward(params, ids, vm, pos, seg)
    bumped = jax.tree_util.tree_map(lambda x: x, params)
    bumped["transformer"]["vte"]["embedding"] = params["transformer"]["vte"]["embedding"] + 1.0
    out = forward(bumped, ids, vm, pos, seg)
    changed = np.abs(np.asarray(out - base)).max(axis=-1)
    assert (changed[:, :10] == 0).all()  # causal: positions before the vision block cannot see it
    assert (changed[:, 10:] > 0).all()
    logits = jax.jit(lambda p, *a: LWMModel(TINY).apply({"params": p}, *a, method=LWMModel.logits))
    text_logits, vision_logits = logits(params, ids, vm, pos, seg)
    assert text_logits.shape == (2, L, 96) and vision_logits.shape == (2, L, 40)


def test_future_tokens_do_not_change_the_past(params):
    ids, vm, pos, seg = inputs()
    out = forward(params, ids, vm, pos, seg)
    ids2 = ids.at[:, 25:].set(3)
    np.testing.assert_allclose(forward(params, ids2, vm, pos, seg)[:, :25], out[:, :25], atol=1e-6)


def test_packed_example_equals_the_example_alone(params):
    ids, vm, pos, seg = inputs(1)
    seg = jnp.asarray(np.r_[[1] * 12, [2] * 20][None].repeat(2, 0).astype(np.int32))
    pos = jnp.asarray(np.r_[np.arange(12), np.arange(20)][None].repeat(2, 0).astype(np.int32))
    packed = forward(params, ids, vm, pos, seg)
    alone = forward(params, ids[:, 12:], vm[:, 12:], pos[:, 12:], seg[:, 12:])
    np.testing.assert_allclose(packed[:, 12:], alone, atol=1e-5)


@pytest.mark.slow
def test_scan_and_remat_switches_give_the_same_outputs(params):
    args = inputs(2)
    base = forward(params, *args)
    scanned = ModelConfig(**{**TINY.__dict__, "scan_layers": True})
    stacked = stack_layers(params, TINY.n_layers)
    assert stacked["transformer"]["h"]["attention"]["wq"]["kernel"].shape == (2, 32, 32)
    np.testing.assert_allclose(forward(stacked, *args, config=scanned), base, atol=1e-5)
    unstacked = unstack_layers(stacked, TINY.n_layers)
    assert jax.tree_util.tree_structure(unstacked) == jax.tree_util.tree_structure(params)
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(forward(p, *args) ** 2)))(params)
    for remat, scan in (("full", True), ("dots", False)):
        cfg = ModelConfig(**{**TINY.__dict__, "remat": remat, "scan_layers": scan})
        p = stacked if scan else params
        g = jax.jit(jax.grad(lambda p, cfg=cfg: jnp.sum(forward(p, *args, config=cfg) ** 2)))(p)
        g = unstack_layers(g, TINY.n_layers) if scan else g
        err = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)))
        assert err < 1e-5, remat


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(params):
    args = inputs(3)
    cfg = ModelConfig(**{**TINY.__dict__, "dtype": "bfloat16"})
    out = forward(params, *args, config=cfg)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), forward(params, *args), atol=0.1)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(forward(p, *args, config=cfg).astype(jnp.float32))))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("field,value", [("n_kv_heads", 3), ("n_heads", 5), ("attention_block", 0),
                                         ("loss_chunk", -1)])
def test_bad_model_config_names_the_field(field, value):
    with pytest.raises(ContractError, match=field):
        ModelConfig(**{**TINY.__dict__, field: value})
