"""The training loop: stages in order, each from the previous stage's final weights.

``train(cfg)`` plans every stage (manifest checks before anything compiles), then for each
stage: skip it if its final checkpoint exists; else resume from its latest checkpoint, or
start from ``init_from`` / the previous stage's final checkpoint / a fresh init. Batches are
a pure function of the step (see :mod:`lwmkit.trainer.data`), so a resumed run reproduces the
uninterrupted one step for step. RoPE theta, mesh, batch and optimizer may change per stage;
parameters are restored onto the new stage's mesh.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lwmkit.schemas import ShardSet, TrainConfig, to_dict
from lwmkit.trainer.checkpoint import StageCheckpoints, code_version
from lwmkit.trainer.data import BatchPlan, ShardReader, global_batch
from lwmkit.trainer.init import StageStart, abstract_model_params, start_stage
from lwmkit.trainer.logs import TrainLogger, measure_peak_flops
from lwmkit.trainer.optim import make_optimizer
from lwmkit.trainer.ring_attention import layout_permutation
from lwmkit.trainer.stages import StagePlan, describe, plan_stages
from lwmkit.trainer.step import build_step, compile_report


@dataclass
class StageResult:
    name: str
    losses: list[float] = field(default_factory=list)  # per step run in this process
    first_step: int = 0
    skipped: bool = False
    final_dir: str = ""


def _lineage_entry(plan: StagePlan) -> dict[str, Any]:
    m = plan.manifest
    return {
        "stage": plan.name, "manifest": plan.manifest_path, "manifest_sha256": m.sha256,
        "tokenizer_id": m.tokenizer_id, "vqgan_id": m.vqgan_id, "seq_len": m.seq_len,
        "rope_theta": plan.config.rope_theta, "steps": plan.steps, "batch_size": plan.batch_size,
    }


def _meta(cfg: TrainConfig, plan: StagePlan, start: StageStart, step: int, global_step: int) -> dict[str, Any]:
    entry = _lineage_entry(plan)
    if start.resume_changes:  # resumes that changed seed/optimizer/data on purpose stay on record
        entry["resume_changes"] = start.resume_changes
    return {
        "stage": plan.name, "stage_index": plan.index, "step": step, "global_step": global_step,
        "data": {"seed": cfg.seed, "stage": plan.name, "manifest_sha256": plan.manifest.sha256,
                 "batch_size": plan.batch_size, "next_step": step},
        "rng": np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), global_step))).tolist(),
        "lineage": start.lineage + [entry],
        "init": start.source, "config": to_dict(cfg), "code_version": code_version(),
    }


def stage_permutation(plan: StagePlan, mesh: Mesh) -> np.ndarray | None:
    """The stage's ring layout on ``mesh``: slot order of a sequence (None: contiguous). Computed
    once per stage; the shard reader permutes every batch by it and the loss masks with it."""
    if plan.config.layout == "contiguous":
        return None
    return layout_permutation(plan.config.seq_len, mesh.shape["sp"], plan.config.layout)


def _reader(cfg: TrainConfig, plan: StagePlan, permutation: np.ndarray | None) -> ShardReader:
    shards = ShardSet.open(plan.manifest_path)
    batch = BatchPlan(cfg.seed, plan.name, plan.manifest.sha256, plan.manifest.n_sequences, plan.batch_size)
    return ShardReader(shards, batch, layout=permutation, prefetch=cfg.prefetch)


def _flops_per_step(cfg: TrainConfig, plan: StagePlan) -> float:
    from lwmkit.trainer import flops

    return float(flops.step_flops(cfg.model, plan.config.seq_len, plan.batch_size).total_halved)


def run_stage(cfg: TrainConfig, plan: StagePlan, prev: StagePlan | None, logger: TrainLogger, global_step: int,
              *, allow_resume_changes: bool = False) -> StageResult:  # fmt: skip
    from lwmkit.trainer.mesh import describe as describe_mesh
    from lwmkit.trainer.mesh import make_mesh

    ck = cfg.checkpoint
    ckpts = StageCheckpoints(ck.dir, plan.name, keep=ck.keep)
    result = StageResult(plan.name, final_dir=ckpts.final.directory.as_posix())
    if ckpts.is_final():
        logger.event(f"stage '{plan.name}' already has its final checkpoint; skipping", stage=plan.name)
        result.skipped = True
        return result
    mesh = make_mesh(plan.mesh)
    permutation = stage_permutation(plan, mesh)
    optimizer, schedule = make_optimizer(plan.optimizer, plan.steps)
    step_fn = build_step(cfg.model, plan, mesh, optimizer, abstract_model_params(cfg.model), permutation)
    start = start_stage(cfg, plan, prev, ckpts, step_fn, optimizer, allow_resume_changes=allow_resume_changes)
    if start.resumed:  # the steps after the checkpoint run again: their old records go
        logger.rewind(plan.name, start.step)
    for change in start.resume_changes[-1:] if start.resumed else []:
        logger.event(f"stage '{plan.name}' resumed with changes (allowed): {change['changed']}", stage=plan.name)
    logger.event(f"stage '{plan.name}' on mesh {describe_mesh(mesh)}: {start.source}, step {start.step}/{plan.steps}",
                 stage=plan.name, step=start.step, init=start.source)
    params, opt_state = start.params, start.opt_state
    result.first_step = start.step
    flops = _flops_per_step(cfg, plan)
    window = {"t": time.perf_counter(), "data": 0.0, "steps": 0, "metrics": []}
    with _reader(cfg, plan, permutation) as reader:
        for step in range(start.step, plan.steps):
            t0 = time.perf_counter()
            batch = global_batch(reader, step, step_fn.batch_sharding)
            window["data"] += time.perf_counter() - t0
            lr = float(schedule(step))  # the optimizer's count equals the stage step
            params, opt_state, metrics = step_fn.fn(params, opt_state, batch)
            ckpts.check()  # a background save that failed stops the run now, naming its path
            window["steps"] += 1
            window["metrics"].append(metrics)
            done = step + 1
            if done % cfg.log_every == 0 or done == plan.steps:
                result.losses += _log(logger, plan, window, done, global_step + done, flops, lr)
            if done % ck.every_steps == 0 and done < plan.steps:
                ckpts.save(done, params, opt_state, _meta(cfg, plan, start, done, global_step + done))
                logger.event(f"checkpoint step {done}: the loop waited {ckpts.blocked_seconds:.2f} s (copy to host); "
                             "written in the background", stage=plan.name, step=done,
                             blocked_seconds=ckpts.blocked_seconds)
        ckpts.save(plan.steps, params, opt_state, _meta(cfg, plan, start, plan.steps, global_step + plan.steps), final=True)
    logger.event(f"stage '{plan.name}' done: final checkpoint {result.final_dir}", stage=plan.name)
    ckpts.close()
    return result


def _log(logger: TrainLogger, plan: StagePlan, window: dict, done: int, global_step: int, flops: float, lr: float) -> list[float]:
    got = jax.device_get(window["metrics"])  # waits for the steps: timing covers their compute
    seconds = time.perf_counter() - window["t"]
    mean = {k: float(np.mean([m[k] for m in got])) for k in got[-1]}
    n = window["steps"]
    logger.record(stage=plan.name, step=done, steps=plan.steps, global_step=global_step, metrics=mean,
                  tokens=n * plan.tokens_per_step, seconds=seconds, data_seconds=window["data"], flops=n * flops, lr=lr)
    window.update(t=time.perf_counter(), data=0.0, steps=0, metrics=[])
    losses = [float(m["loss"]) for m in got]
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"stage '{plan.name}' step {done}: loss is not finite ({losses[-1]})")
    return losses


def _logger(cfg: TrainConfig) -> TrainLogger:
    if cfg.peak_flops is not None:
        peak, source = cfg.peak_flops, "configured"
    else:
        peak, source = measure_peak_flops(cfg.model.dtype)  # the compute dtype's peak, not fp32's
    log_dir = cfg.log_dir or f"{cfg.checkpoint.dir.rstrip('/')}/logs"
    return TrainLogger(log_dir, peak_flops=peak, peak_source=source, n_devices=jax.device_count(),
                       is_main=jax.process_index() == 0)


def train(cfg: TrainConfig, *, allow_resume_changes: bool = False) -> list[StageResult]:
    """Run (or resume) every stage of ``cfg`` in order (``allow_resume_changes``: see start_stage)."""
    plans = plan_stages(cfg)
    with _checkpoint_lease(cfg):
        logger = _logger(cfg)
        for line in describe(plans):
            logger.event(line)
        results, global_step, prev = [], 0, None
        try:
            for plan in plans:
                result = run_stage(cfg, plan, prev, logger, global_step, allow_resume_changes=allow_resume_changes)
                results.append(result)
                global_step += plan.steps
                prev = plan
        finally:
            logger.close()
    return results


def _checkpoint_lease(cfg: TrainConfig) -> AbstractContextManager:
    """One run per checkpoint folder (held by process 0: the hosts of one run share it)."""
    from lwmkit.runtime.lease import lease_output
    from lwmkit.runtime.progress import warn

    if jax.process_index() != 0:
        return nullcontext()
    return lease_output(cfg.checkpoint.dir, "lwmkit train", note=warn)


def dry_run(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Plan, lower and compile every stage on its mesh; report memory per device."""
    from lwmkit.trainer.mesh import make_mesh

    reports = []
    for plan in plan_stages(cfg):
        mesh = make_mesh(plan.mesh)
        optimizer, _ = make_optimizer(plan.optimizer, plan.steps)
        step_fn = build_step(cfg.model, plan, mesh, optimizer, abstract_model_params(cfg.model),
                             stage_permutation(plan, mesh))  # fmt: skip
        report = compile_report(step_fn, plan)
        report["devices"] = int(mesh.devices.size)
        report["params"] = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(step_fn.abstract_params)))
        report["model_flops_per_step"] = _flops_per_step(cfg, plan)
        reports.append(report)
    return reports

