"""Where a stage starts: its own latest checkpoint (resume), ``init_from``, the previous
stage's final checkpoint, or a fresh init — restored straight onto the stage's mesh.

Starting from another checkpoint checks it first: its lineage's tokenizer must be the one
the stage's shards were tokenized with, and its parameter tree must match the model's, except
that a text-only checkpoint may gain fresh vision parameters when the stage says
``add_vision`` (LWM's text -> vision step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import optax

from lwmkit.schemas import ContractError, ModelConfig, TrainConfig, to_dict
from lwmkit.trainer.checkpoint import (
    StageCheckpoints,
    absolute,
    open_checkpoint,
    params_metadata,
    read_meta,
    restore_from,
)
from lwmkit.trainer.convert import VISION_KEYS, add_vision_params, missing_vision, without_vision
from lwmkit.trainer.optim import reset_counts
from lwmkit.trainer.stages import StagePlan
from lwmkit.trainer.step import StepFn


@dataclass
class StageStart:
    params: Any
    opt_state: Any
    step: int
    source: str  # human-readable: "resumed from step 40", "from stage 's1' final", "fresh init"
    lineage: list[dict[str, Any]] = field(default_factory=list)  # stages the weights came through
    resumed: bool = False
    resume_changes: list[dict[str, Any]] = field(default_factory=list)  # accepted changes, recorded in the lineage


def abstract_model_params(model: ModelConfig) -> Any:
    from lwmkit.trainer.model import param_shapes

    return param_shapes(model)


def _paths(tree: Any) -> set[str]:
    return {jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _check_lineage(meta: dict[str, Any], plan: StagePlan, source: str) -> None:
    lineage = meta.get("lineage") or []
    if not lineage:
        return
    last = lineage[-1]
    tok = last.get("tokenizer_id")
    if tok and tok != plan.manifest.tokenizer_id:
        raise ContractError(
            f"checkpoint was trained on tokenizer {tok[:16]}, stage '{plan.name}' shards use "
            f"{plan.manifest.tokenizer_id[:16]}", field="tokenizer_id", source=source)


def _fresh(model: ModelConfig, step_fn: StepFn, seed: int) -> Any:
    from lwmkit.trainer.model import init_params

    init = jax.jit(partial(init_params, model), out_shardings=step_fn.param_shardings)
    return init(jax.random.PRNGKey(seed))


def _from_checkpoint(cfg: TrainConfig, plan: StagePlan, path: str, step_fn: StepFn, optimizer) -> StageStart:
    manager, step = open_checkpoint(path)
    meta = read_meta(manager, step)
    _check_lineage(meta, plan, path)
    stored = params_metadata(manager, step)
    want = step_fn.abstract_params
    missing = missing_vision(stored, want)
    if missing and not plan.config.add_vision:
        raise ContractError(
            f"checkpoint has no {', '.join(missing)} (a text-only model); set add_vision: true on the "
            f"stage to add fresh vision parameters", field=f"stages[{plan.index}].add_vision", source=path)
    extra, absent = _paths(stored) - _paths(want), _paths(want) - _paths(stored) - set(missing)
    if extra or absent:
        raise ContractError(
            f"parameter tree differs from the model's (extra: {sorted(extra)[:3]}, missing: {sorted(absent)[:3]})",
            field="model", source=path)
    target = without_vision(want) if missing else want
    carry = plan.config.carry_optimizer and not missing and bool(meta.get("has_opt_state", True))
    restored = restore_from(manager, step, target, step_fn.abstract_opt if carry else None)
    params = restored.params
    if missing:
        params = add_vision_params(params, cfg.model, jax.random.PRNGKey(cfg.seed + 1 + plan.index),
                                   shardings=step_fn.param_shardings)
    opt_state = reset_counts(restored.opt_state) if carry else _init_opt(optimizer, step_fn, params)
    what = f"from {path} (step {step}{', + fresh vision params' if missing else ''}{', optimizer carried' if carry else ''})"
    return StageStart(params, opt_state, 0, what, list(meta.get("lineage") or []))


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] if len(text) == 64 else text  # a sha256: its prefix is enough


def _init_opt(optimizer: optax.GradientTransformation, step_fn: StepFn, params: Any) -> Any:
    return jax.jit(optimizer.init, out_shardings=step_fn.opt_shardings)(params)


def resume_differences(cfg: TrainConfig, plan: StagePlan, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a resume would change against the checkpoint it resumes: ``{what: {"was", "now"}}``
    over the seed, the stage's optimizer and its data (shard set, batch size)."""
    data = meta.get("data") or {}
    saved_cfg = meta.get("config") or {}
    stages = saved_cfg.get("stages") or []
    saved_stage = stages[plan.index] if plan.index < len(stages) and isinstance(stages[plan.index], dict) else {}
    was_opt = saved_stage.get("optimizer") or saved_cfg.get("optimizer")
    now = {"seed": cfg.seed, "optimizer": to_dict(plan.optimizer), "manifest_sha256": plan.manifest.sha256,
           "batch_size": plan.batch_size}  # fmt: skip
    was = {"seed": data.get("seed"), "optimizer": was_opt, "manifest_sha256": data.get("manifest_sha256"),
           "batch_size": data.get("batch_size")}  # fmt: skip
    now = json.loads(json.dumps(now))  # as the checkpoint's JSON holds it (tuples become lists)
    return {k: {"was": was[k], "now": now[k]} for k in now if was[k] is not None and was[k] != now[k]}


def start_stage(
    cfg: TrainConfig, plan: StagePlan, prev: StagePlan | None, ckpts: StageCheckpoints, step_fn: StepFn, optimizer,
    *, allow_resume_changes: bool = False,
) -> StageStart:  # fmt: skip
    """Params, optimizer state and first step of a stage (see the module docstring).

    A resume whose seed, optimizer or data differ from the checkpoint's is refused (it would
    not continue the same run) unless ``allow_resume_changes``; accepted changes are recorded
    in the stage's lineage entry."""
    latest = ckpts.latest_step()
    if latest is not None:
        restored = ckpts.restore(step_fn.abstract_params, step_fn.abstract_opt)
        changed = resume_differences(cfg, plan, restored.meta)
        if changed and not allow_resume_changes:
            what = "; ".join(f"{k} {_short(v['was'])} -> {_short(v['now'])}" for k, v in changed.items())
            raise ContractError(
                f"resuming stage '{plan.name}' at step {latest} would change {what}; restore the original "
                "settings, move the checkpoints away, or pass --allow-resume-changes if this is meant",
                field=", ".join(changed), source=ckpts.dir)  # fmt: skip
        lineage = list(restored.meta.get("lineage") or [])
        recorded = list((lineage[-1] if lineage else {}).get("resume_changes") or [])
        if changed:
            recorded.append({"at_step": latest, "changed": changed})
        return StageStart(restored.params, restored.opt_state, int(restored.meta["step"]),
                          f"resumed from step {latest}", lineage[:-1], resumed=True,
                          resume_changes=recorded)  # fmt: skip
    source = plan.config.init_from
    if source is None and prev is not None:
        source = f"{absolute(cfg.checkpoint.dir).rstrip('/')}/{prev.name}/final"
    if source is None:
        params = _fresh(cfg.model, step_fn, cfg.seed)
        return StageStart(params, _init_opt(optimizer, step_fn, params), 0, "fresh init")
    return _from_checkpoint(cfg, plan, source, step_fn, optimizer)


__all__ = ["StageStart", "abstract_model_params", "start_stage", "VISION_KEYS"]
