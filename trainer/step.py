"""The jitted train step of a stage, with explicit shardings, and its ahead-of-time compile.

One step: split the global batch into ``grad_accum`` micro-batches, sum their gradients in a
``lax.scan`` (memory of one micro-batch), clip, AdamW, apply. Params and optimizer state are
donated, so the step updates them in place.

Accumulation is exact: each micro-batch's loss is divided by the WHOLE batch's loss weight
per modality (``loss.modality_weights``), so the micro-batch losses, metrics and gradients
add up to those of the undivided batch, however unevenly the loss weight (text vs vision,
short vs long examples) falls across micro-batches. Averaging micro-batch means instead
would weight a micro-batch with one loss-bearing token like one with thousands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwmkit.schemas import PACKED_ARRAYS, ModelConfig
from lwmkit.trainer.stages import StagePlan


@dataclass
class StepFn:
    """A stage's compiled-on-demand step and the shardings it was built with."""

    fn: Any  # jitted (params, opt_state, batch) -> (params, opt_state, metrics)
    param_shardings: Any
    opt_shardings: Any
    batch_sharding: NamedSharding
    abstract_params: Any
    abstract_opt: Any

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            name: jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=self.batch_sharding)
            for name, dtype in PACKED_ARRAYS.items()
        }


def _micro_batches(batch: dict[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """``[B, L]`` -> ``[accum, B/accum, L]``; micro-batch j takes rows j, j+accum, ... so each
    data shard's rows stay on their devices."""
    return {k: jnp.moveaxis(v.reshape(v.shape[0] // accum, accum, *v.shape[1:]), 1, 0) for k, v in batch.items()}


def _loss_fn(model: ModelConfig, plan: StagePlan, mesh: Mesh, permutation: np.ndarray | None):
    from lwmkit.trainer.loss import loss_and_metrics

    m = plan.manifest

    def loss(params, batch, totals=None):
        return loss_and_metrics(
            params,
            batch,
            config=model,
            rope_theta=plan.config.rope_theta,
            mesh=mesh,
            permutation=permutation,
            vision_loss_weight=m.vision_loss_weight,
            text_loss_weight=m.text_loss_weight,
            totals=totals,
        )

    return loss


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items() if jnp.ndim(v) == 0}


def accumulate(loss: Any, params: Any, batch: dict[str, jax.Array], accum: int,
               model: ModelConfig) -> tuple[Any, dict[str, jax.Array]]:
    """``(grads, metrics)`` of ``batch`` computed ``accum`` micro-batches at a time.

    ``loss(params, batch, totals)`` -> ``(value, metrics)`` (``totals=None``: the batch is
    whole). Equal, up to float summation order, to ``accum == 1`` (see the module docstring).
    """
    from lwmkit.trainer.loss import modality_weights

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if accum == 1:
        (value, metrics), grads = grad_fn(params, batch, None)
        return grads, {"loss": value, **_scalar_metrics(metrics)}
    totals = modality_weights(batch, model)

    def micro(grads, mb):
        (value, metrics), g = grad_fn(params, mb, totals)
        return jax.tree_util.tree_map(jnp.add, grads, g), {"loss": value, **_scalar_metrics(metrics)}

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads, per_micro = jax.lax.scan(micro, zeros, _micro_batches(batch, accum))
    return grads, jax.tree_util.tree_map(lambda x: x.sum(0), per_micro)  # every metric is an additive share


def build_step(
    model: ModelConfig,
    plan: StagePlan,
    mesh: Mesh,
    optimizer: optax.GradientTransformation,
    abstract_params: Any,
    permutation: np.ndarray | None = None,
) -> StepFn:
    """The jitted step for one stage on ``mesh``; ``permutation``: the stage's ring layout
    (:func:`~lwmkit.trainer.train.stage_permutation`; None = contiguous)."""
    from lwmkit.trainer.mesh import batch_sharding, param_shardings

    accum = plan.optimizer.grad_accum
    loss = _loss_fn(model, plan, mesh, permutation)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    p_sh = param_shardings(abstract_params, mesh)
    o_sh = param_shardings(abstract_opt, mesh)
    b_sh = batch_sharding(mesh, plan.batch_size // accum)

    def step(params, opt_state, batch):
        grads, metrics = accumulate(loss, params, batch, accum, model)
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, metrics

    replicated = NamedSharding(mesh, P())
    fn = jax.jit(
        step,
        in_shardings=(p_sh, o_sh, {k: b_sh for k in PACKED_ARRAYS}),
        out_shardings=(p_sh, o_sh, replicated),
        donate_argnums=(0, 1),
    )
    with_sh = lambda tree, sh: jax.tree_util.tree_map(  # noqa: E731
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh
    )
    return StepFn(fn, p_sh, o_sh, b_sh, with_sh(abstract_params, p_sh), with_sh(abstract_opt, o_sh))


def compile_report(step: StepFn, plan: StagePlan) -> dict[str, Any]:
    """Lower and compile the step ahead of time; memory per device from XLA's analysis."""
    batch = step.abstract_batch(plan.batch_size, plan.config.seq_len)
    compiled = step.fn.lower(step.abstract_params, step.abstract_opt, batch).compile()
    report: dict[str, Any] = {"stage": plan.name}
    mem = compiled.memory_analysis()
    if mem is not None:
        for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                    "generated_code_size_in_bytes", "alias_size_in_bytes"):
            report[key] = int(getattr(mem, key, 0) or 0)
        report["peak_estimate_bytes"] = (
            report["argument_size_in_bytes"] + report["output_size_in_bytes"]
            - report["alias_size_in_bytes"] + report["temp_size_in_bytes"]
        )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) and cost else cost
    if cost:
        report["xla_flops"] = float(cost.get("flops", 0.0))
    return report
