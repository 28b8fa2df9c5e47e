"""``lwmkit pack``: a mixture config + a stage (of a training config, or a bare seq_len) ->
packed shards + manifest. The flags are :class:`lwmkit.schemas.jobs.PackJob`'s (``lwmkit pack
--help``); Beam's own pass through."""

from __future__ import annotations

import typer

from lwmkit.commands.beam_job import PASS_THROUGH


def pack(ctx: typer.Context) -> None:
    """Format, sample by mixture and pack the sources into webdataset shards (Apache Beam).

    The stage is the one source of seq_len: `--train T.yaml --stage NAME` reads it from the
    training config (a --seq-len given as well must agree). Flags not of pack go to Beam
    (e.g. --direct_running_mode=multi_threading). lwmkit pack --help lists every flag.
    """
    from lwmkit.pipelines.pack.job import help_text, run
    from lwmkit.runtime.progress import crash_log, describe_io_failure, error, errors_to_log, job_log_path
    from lwmkit.schemas import ContractError

    args = list(ctx.args)
    if not args or "--help" in args or "-h" in args:
        typer.echo(help_text())
        return
    log = job_log_path("pack")
    try:
        with errors_to_log(log, "apache_beam"):
            manifest = run(args)
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
        f"{manifest.n_sequences} sequences x {manifest.seq_len} in {len(manifest.shards)} shards, "
        f"packing efficiency {manifest.packing_efficiency:.4f}; token shares "
        + ", ".join(f"{n} {t / total:.3f}" for n, t in shares.items())
    )


def register(app: typer.Typer) -> None:
    app.command("pack", context_settings=PASS_THROUGH)(pack)
