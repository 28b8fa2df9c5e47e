"""``lwmkit pack``: a mixture config + a stage (of a training config, or a bare seq_len) ->
packed shards + manifest."""

from __future__ import annotations

import typer


def pack(
    ctx: typer.Context,
    mixture: str = typer.Option(..., "--mixture", help="Mixture config YAML (local path or bucket URL)."),
    train: str = typer.Option(
        None, "--train", help="Training config YAML: seq_len, ids and --out come from its stage --stage."
    ),
    seq_len: int = typer.Option(
        None, "--seq-len", help="Without --train: every sequence has exactly this many tokens."
    ),
    stage: str = typer.Option(..., "--stage", help="Stage name recorded in the manifest (e.g. chat-32k)."),
    out: str = typer.Option(
        None, "--out", help="Output folder (local or gs:// / s3://); with --train, default: the stage's data."
    ),
    tokenizer: str = typer.Option(
        None, "--tokenizer", help="SentencePiece .model (default: the shipped one)."
    ),
    overrides: list[str] = typer.Option(  # noqa: B008 - typer reads defaults this way
        None, "--set", help="Override a mixture field: --set seed=3 --set sources.0.weight=2."
    ),
    train_overrides: list[str] = typer.Option(  # noqa: B008
        None, "--train-set", help="Override a training-config field (as lwmkit train --set)."
    ),
    runner: str = typer.Option("DirectRunner", "--runner", help="Beam runner."),
    workers: int = typer.Option(
        0, "--workers", help="DirectRunner: run with N worker processes (0 = in-process)."
    ),
) -> None:
    """Format, sample by mixture and pack the sources into webdataset shards (Apache Beam).

    The stage is the one source of seq_len: `--train T.yaml --stage NAME` reads it from the
    training config (a --seq-len given as well must agree). Extra arguments after the options
    go to Beam unchanged (e.g. --direct_running_mode=multi_threading).
    """
    from lwmkit.pipelines.pack import run_pack, stage_target
    from lwmkit.runtime.progress import crash_log, describe_io_failure, error, errors_to_log, job_log_path
    from lwmkit.schemas import ContractError

    target = stage_target(train, stage, seq_len, train_overrides or ()) if train else None
    out = out or (target.out if target else None)
    beam_args = [f"--runner={runner}", *ctx.args]
    if workers:
        beam_args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    log = job_log_path("pack")
    try:
        with errors_to_log(log, "apache_beam"):
            manifest = run_pack(
                mixture,
                seq_len,
                stage,
                out,
                tokenizer=tokenizer,
                overrides=overrides or (),
                pipeline_args=beam_args,
                target=target,
            )
    except Exception as err:
        failure = None if isinstance(err, ContractError) else describe_io_failure(err)
        if failure is None:
            raise
        # A full disk, a read-only or blocked folder: one line, the whole story in the job's log.
        error(f"{failure}; full trace in {crash_log('pack', err, path=log)}")
        raise SystemExit(1) from None
    shares = {name: c.tokens for name, c in manifest.per_source.items()}
    total = sum(shares.values()) or 1
    typer.echo(
        f"{out}: {manifest.n_sequences} sequences x {manifest.seq_len} in {len(manifest.shards)} shards, "
        f"packing efficiency {manifest.packing_efficiency:.4f}; token shares "
        + ", ".join(f"{n} {t / total:.3f}" for n, t in shares.items())
    )


def register(app: typer.Typer) -> None:
    app.command("pack", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(pack)
