"""``lwmkit train CONFIG.yaml``: run (or resume) every stage of a training config."""

from __future__ import annotations

import json

import typer


def train(
    config: str = typer.Argument(..., help="Training config YAML (local path or bucket URL)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set stages.1.steps=500."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check manifests, lower and compile every stage, report memory; train nothing."),
    coordinator: str = typer.Option(None, "--coordinator", help="Multi-host: host:port of process 0 (or LWMKIT_COORDINATOR)."),
    num_processes: int = typer.Option(None, "--num-processes", help="Multi-host: number of processes (or LWMKIT_NUM_PROCESSES)."),
    process_id: int = typer.Option(None, "--process-id", help="Multi-host: this process's id (or LWMKIT_PROCESS_ID)."),
    auto_distributed: bool = typer.Option(False, "--distributed-auto", help="Let JAX detect the cluster (TPU pod, SLURM, MPI)."),
    allow_resume_changes: bool = typer.Option(
        False, "--allow-resume-changes",
        help="Resume even though seed, optimizer or data differ from the checkpoint's (recorded in the lineage).",
    ),  # fmt: skip
) -> None:
    """Train stage by stage: each stage's shards checked against it, checkpoints with exact resume.

    Re-running the same command after a crash or kill resumes from the latest checkpoint.
    """
    from lwmkit.runtime.config import load_config
    from lwmkit.schemas import TrainConfig
    from lwmkit.trainer.distributed import from_env, initialize

    cfg = load_config(TrainConfig, config, overrides)
    initialize(from_env(coordinator=coordinator, num_processes=num_processes, process_id=process_id, auto=auto_distributed))
    if dry_run:
        from lwmkit.runtime.progress import step
        from lwmkit.trainer.stages import describe, plan_stages
        from lwmkit.trainer.train import dry_run as compile_all

        for line in describe(plan_stages(cfg)):
            step(line)
        for r in compile_all(cfg):
            gib = r.get("peak_estimate_bytes", 0) / 2**30
            step(
                f"stage '{r['stage']}': compiled on {r['devices']} devices, {r['params']:,} params, "
                f"~{gib:.3f} GiB per device (args {r.get('argument_size_in_bytes', 0) / 2**20:.1f} MiB, "
                f"temp {r.get('temp_size_in_bytes', 0) / 2**20:.1f} MiB), {r['model_flops_per_step']:.3g} model FLOPs/step"
            )
            typer.echo(json.dumps(r, sort_keys=True))
        return
    from lwmkit.runtime.progress import crash_log, describe_io_failure, error, errors_to_log, job_log_path
    from lwmkit.schemas import ContractError
    from lwmkit.trainer.checkpoint import CheckpointError
    from lwmkit.trainer.train import train as run

    log = job_log_path("train")
    try:
        with errors_to_log(log, "absl", "asyncio"):  # orbax: a failed save's traceback via absl; its tasks' via asyncio
            results = run(cfg, allow_resume_changes=allow_resume_changes)
    except CheckpointError as err:  # one line naming the checkpoint, not orbax's tracebacks
        # orbax's failed writer tasks report ("Task exception was never retrieved") only when they
        # are collected, possibly at exit: their asyncio records go to the log from here on too.
        _asyncio_to_log(log)
        error(f"{err}; full trace in {crash_log('train', getattr(err, 'original', err), path=log)}")
        raise typer.Exit(1) from None
    except Exception as err:
        failure = None if isinstance(err, ContractError) else describe_io_failure(err)
        if failure is None:
            raise
        error(f"{failure}; full trace in {crash_log('train', err, path=log)}")
        raise SystemExit(1) from None
    for result in results:
        state = "skipped (already final)" if result.skipped else f"{len(result.losses)} steps from step {result.first_step}"
        typer.echo(f"stage {result.name}: {state}; final checkpoint {result.final_dir}")


def _asyncio_to_log(path: str) -> None:
    import logging

    handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    logger.propagate = False


def register(app: typer.Typer) -> None:
    app.command("train")(train)
