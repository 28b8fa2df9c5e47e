"""The optimizer of a stage: AdamW with warmup then constant, cosine or linear decay.

LWM: b1 0.9, b2 0.95, weight decay 0.1, clip 1.0. Weight decay skips vectors (norm scales)
as LLaMA-style trainers do; gradients are clipped by global norm before Adam.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lwmkit.schemas import OptimizerConfig


def lr_schedule(opt: OptimizerConfig, steps: int) -> optax.Schedule:
    """Learning rate at optimizer count ``c`` (0-based): linear warmup reaching ``lr`` at
    step ``warmup_steps`` (never 0 on the first step), then constant / cosine / linear to
    ``end_lr`` at the stage's last step."""
    peak, warmup = opt.lr, opt.warmup_steps
    end = peak if opt.end_lr is None else opt.end_lr
    decay_steps = max(steps - warmup, 1)

    def schedule(count: jax.Array) -> jax.Array:
        c = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum((c + 1.0) / max(warmup, 1), 1.0)
        t = jnp.clip((c - warmup) / decay_steps, 0.0, 1.0)
        if opt.schedule == "cosine":
            after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        elif opt.schedule == "linear":
            after = peak + (end - peak) * t
        else:
            after = jnp.asarray(peak, jnp.float32)
        return jnp.where(c < warmup, warm, after)

    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (embeddings, projections, heads), not on norm scales."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: OptimizerConfig, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(opt, steps)
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule


def _has_count(node: Any) -> bool:
    # every tuple has a .count method; optax states carry an array field named count
    return hasattr(node, "_fields") and "count" in node._fields


def reset_counts(opt_state: Any) -> Any:
    """The same state with every step count at 0: carried moments, fresh warmup/schedule."""

    def reset(node: Any) -> Any:
        return node._replace(count=jnp.zeros_like(node.count)) if _has_count(node) else node

    return jax.tree_util.tree_map(reset, opt_state, is_leaf=_has_count)
