"""Chunked text/vision cross-entropy against a plain full-logits computation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.schemas.training import ModelConfig
from lwmkit.trainer.loss import loss_and_metrics
from lwmkit.trainer.model import LWMModel, init_params

CFG = ModelConfig(text_vocab_size=80, vision_vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                  mlp_dim=64, attention_block=8, loss_chunk=8)
B, L = 2, 32


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def packed_batch(seed: int = 0, vision: bool = True) -> dict[str, jnp.ndarray]:
    """Two examples per row, a vision block in the second, padding at the end."""
    r = np.random.default_rng(seed)
    seg = np.array([1] * 12 + [2] * 16 + [0] * 4, np.int32)
    pos = np.r_[np.arange(12), np.arange(16), np.zeros(4)].astype(np.int32)
    vm = np.zeros(L, bool)
    if vision:
        vm[16:25] = True
    ids = np.where(vm, r.integers(0, 48, L), r.integers(0, 80, L)).astype(np.int32)
    tgt = np.r_[ids[1:], 0].astype(np.int32)
    w = r.random(L).astype(np.float32) * (seg > 0)
    w[[11, 27]] = 0.0  # the last token of each example predicts nothing
    arrays = {"input_ids": ids, "target_ids": tgt, "loss_weights": w, "segment_ids": seg, "positions": pos,
              "vision_mask": vm, "target_vision_mask": np.r_[vm[1:], False]}
    return {k: jnp.asarray(np.stack([v, v[::-1] if k == "loss_weights" else v])) for k, v in arrays.items()}


@partial(jax.jit, static_argnames=("config",))
def loss_fn(params, batch, config=CFG):
    return loss_and_metrics(params, batch, config=config, rope_theta=1e4, mesh=None)


@partial(jax.jit, static_argnames=("config",))
def loss_and_grads(params, batch, config=CFG):
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, config)


def naive(params, batch):
    """Full logits, plain numpy cross-entropy per modality."""
    text, vision = LWMModel(CFG, 1e4).apply(
        {"params": params}, batch["input_ids"], batch["vision_mask"], batch["positions"], batch["segment_ids"],
        method=LWMModel.logits)
    out = {}
    for name, logits, sel in (("text", text, ~batch["target_vision_mask"]), ("vision", vision, batch["target_vision_mask"])):
        logits = np.asarray(logits, np.float64)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        tgt = np.where(sel, batch["target_ids"], 0)
        ce = lse - np.take_along_axis(logits, np.asarray(tgt)[..., None], -1)[..., 0]
        w = np.where(sel, batch["loss_weights"], 0.0)
        out[name] = (w * ce).sum() / w.sum() if w.sum() > 0 else None
    return out


def test_chunked_loss_equals_full_logits_loss(params):
    batch = packed_batch()
    loss, m = loss_fn(params, batch)
    want = naive(params, batch)
    assert float(m["text_loss"]) == pytest.approx(want["text"], rel=1e-5)
    assert float(m["vision_loss"]) == pytest.approx(want["vision"], rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * want["text"] + 0.5 * want["vision"], rel=1e-5)  # LWM's 0.5/0.5
    assert float(m["vision_tokens"]) == float((np.asarray(batch["target_vision_mask"]) & (np.asarray(batch["loss_weights"]) > 0)).sum())


def test_chunk_size_does_not_change_loss_or_grads(params):
    batch = packed_batch(1)
    big = ModelConfig(**{**CFG.__dict__, "loss_chunk": L})
    (l1, _), g1 = loss_and_grads(params, batch)
    (l2, _), g2 = loss_and_grads(params, batch, big)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def naive_jax_loss(params, batch):
    """Full logits in JAX (no chunks, nothing skipped), the same combination: a gradient reference."""
    text, vision = LWMModel(CFG, 1e4).apply(
        {"params": params}, batch["input_ids"], batch["vision_mask"], batch["positions"], batch["segment_ids"],
        method=LWMModel.logits)
    means = []
    for logits, sel in ((text, ~batch["target_vision_mask"]), (vision, batch["target_vision_mask"])):
        logits = logits.astype(jnp.float32)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, jnp.where(sel, batch["target_ids"], 0)[..., None], -1)[..., 0]
        w = jnp.where(sel, batch["loss_weights"], 0.0)
        if float(w.sum()) > 0:
            means.append((w * ce).sum() / w.sum())
    return sum(means) / len(means)


def test_chunks_without_loss_are_skipped_exactly(params):
    """Loss on a few tokens only (answers at the end of a chat): chunks without them skip the
    heads, and loss and gradients equal the full computation."""
    w = np.zeros((B, L), np.float32)
    w[0, 5:8] = 1.0  # row 0: loss in chunk 0 only (text)
    w[1, 17:23] = [0.5, 1.0, 1.0, 1.0, 1.0, 0.25]  # row 1: loss in chunk 2 only (vision and text)
    batch = {**packed_batch(4), "loss_weights": jnp.asarray(w)}
    (loss, m), grads = loss_and_grads(params, batch)
    want, want_grads = jax.value_and_grad(naive_jax_loss)(params, batch)
    assert float(m["text_tokens"]) + float(m["vision_tokens"]) == 9
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_absent_modality_gives_the_other_modality_loss(params):
    batch = packed_batch(2, vision=False)
    loss, m = loss_fn(params, batch)
    assert float(m["vision_weight"]) == 0.0 and float(m["vision_tokens"]) == 0.0
    assert float(loss) == pytest.approx(float(m["text_loss"]), rel=1e-6)  # not halved


def test_no_loss_tokens_gives_zero_loss_and_zero_grads(params):
    batch = {**packed_batch(3), "loss_weights": jnp.zeros((B, L), jnp.float32)}
    (loss, _), grads = loss_and_grads(params, batch)
    assert float(loss) == 0.0
    assert all(bool(jnp.all(g == 0)) for g in jax.tree_util.tree_leaves(grads))


def test_weights_are_relative_within_a_modality(params):
    batch = packed_batch(4)
    loss, _ = loss_fn(params, batch)
    scaled, _ = loss_fn(params, {**batch, "loss_weights": batch["loss_weights"] * 7.0})
    assert float(scaled) == pytest.approx(float(loss), rel=1e-5)


def test_text_only_model(params):
    cfg = ModelConfig(**{**CFG.__dict__, "vision_vocab_size": 0})
    p = init_params(cfg, jax.random.PRNGKey(1))
    loss, m = loss_fn(p, packed_batch(5, vision=False), config=cfg)
    assert np.isfinite(float(loss)) and float(m["vision_weight"]) == 0.0


def test_missing_array_is_named(params):
    batch = packed_batch()
    del batch["positions"]
    with pytest.raises(KeyError, match="positions"):
        loss_and_metrics(params, batch, config=CFG, rope_theta=1e4, mesh=None)
