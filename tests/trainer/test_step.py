"""Gradient accumulation is exact: micro-batches give the undivided batch's loss, metrics and
gradients, however unevenly loss weight falls across them (the case averaging gets wrong)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwmkit.schemas import ModelConfig
from lwmkit.trainer.loss import loss_and_metrics
from lwmkit.trainer.model import init_params
from lwmkit.trainer.step import accumulate

CFG = ModelConfig(text_vocab_size=64, vision_vocab_size=32, d_model=32, n_layers=2, n_heads=4, mlp_dim=64,
                  attention_block=16, loss_chunk=16)
B, L = 4, 32


def _batch() -> dict[str, jax.Array]:
    """Rows that differ on purpose: micro-batch j takes rows j, j + accum, ...; with accum 2
    the first micro-batch (rows 0, 2) holds all the vision targets and a few text targets,
    the second (rows 1, 3) many text targets with unequal per-token weights."""
    rng = np.random.default_rng(0)
    vision = np.zeros((B, L), bool)
    vision[0, 4:28] = vision[2, 8:30] = True
    weights = np.zeros((B, L), np.float32)
    weights[0, :] = 1.0  # text and vision targets
    weights[2, 28:] = 0.25  # a short answer
    weights[1, 2:] = rng.uniform(0.1, 2.0, L - 2)
    weights[3, 1:] = 1.0
    ids = np.where(vision, rng.integers(0, 32, (B, L)), rng.integers(3, 64, (B, L))).astype(np.int32)
    targets = np.roll(ids, -1, axis=1)
    return {"input_ids": jnp.asarray(ids), "target_ids": jnp.asarray(targets),
            "loss_weights": jnp.asarray(weights), "segment_ids": jnp.ones((B, L), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)),
            "vision_mask": jnp.asarray(vision), "target_vision_mask": jnp.asarray(np.roll(vision, -1, axis=1))}


def _loss(params, batch, totals=None):
    return loss_and_metrics(params, batch, config=CFG, rope_theta=10000.0, mesh=None, totals=totals)


@pytest.fixture(scope="module")
def whole():
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = _batch()
    grads, metrics = jax.jit(partial(accumulate, _loss, accum=1, model=CFG))(params, batch)
    return params, batch, grads, metrics


def _close(a, b, rtol=2e-5, atol=1e-6) -> bool:
    return all(bool(jnp.allclose(x, y, rtol=rtol, atol=atol)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


@pytest.mark.parametrize("accum", [2, 4])
def test_micro_batches_reproduce_the_whole_batch(whole, accum: int):
    params, batch, grads, metrics = whole
    g, m = jax.jit(partial(accumulate, _loss, accum=accum, model=CFG))(params, batch)
    assert set(m) == set(metrics)
    for key in metrics:
        assert np.isclose(float(m[key]), float(metrics[key]), rtol=2e-5, atol=1e-6), (key, m[key], metrics[key])
    assert _close(g, grads)
    assert float(metrics["vision_tokens"]) > 0 and float(metrics["text_tokens"]) > 0


def test_averaging_micro_batch_means_would_differ(whole):
    """The test has teeth: averaging the two micro-batches' own means misses the batch's loss
    and gradient by ~1000x the tolerance the exact accumulation meets."""
    params, batch, grads, metrics = whole
    halves = [{k: v[j::2] for k, v in batch.items()} for j in range(2)]
    averaged = jax.grad(lambda p: sum(_loss(p, h)[0] for h in halves) / 2)(params)
    own = np.mean([float(_loss(params, h)[0]) for h in halves])
    assert abs(own - float(metrics["loss"])) > 0.02 * float(metrics["loss"])
    diff = float(optax.tree.norm(jax.tree_util.tree_map(jnp.subtract, averaged, grads)))
    assert diff > 0.02 * float(optax.tree.norm(grads))
