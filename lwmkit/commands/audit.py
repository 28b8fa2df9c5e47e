"""``lwmkit audit``: recount a packed shard set and gate on drift and corruption."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from lwmkit.commands.beam_job import PASS_THROUGH
from lwmkit.schemas.errors import ContractError

if TYPE_CHECKING:
    from lwmkit.schemas.jobs import AuditJob

_HELP_EXIT = (
    "Exit status: 0 pass; 1 a source's share drifted beyond the tolerance (or is undeclared); "
    "3 integrity failure: a shard missing or corrupt (a malformed array, .npy header, tar or member), "
    "or a manifest the shards contradict; 2 unusable input (no manifest, a bad mixture file or flag, "
    "a report path that cannot be written); 4 internal error of the audit itself (one line; the full "
    "trace goes to a log file it names). Only 1 and 3 are verdicts about the data."
)


def audit(ctx: typer.Context) -> None:
    """Recount what a shard set really holds (tokens, loss tokens, examples, sequences per source and
    modality; padding; length and frame distributions), verify every shard's checksum, and compare
    the declared mixture, the manifest and the recount. Flags not of audit go to Beam.
    lwmkit audit --help lists every flag."""
    from lwmkit.schemas.flags import help_text, parse_job
    from lwmkit.schemas.jobs import AuditJob

    args = list(ctx.args)
    if not args or "--help" in args or "-h" in args:
        typer.echo(help_text(AuditJob, "lwmkit audit", AuditJob.__doc__.split(": ", 1)[1], _HELP_EXIT))
        return
    job, beam_args = parse_job(AuditJob, args, "audit")
    try:
        code = _audit(job, beam_args)
    except ContractError:
        raise  # exit 2 with one line (lwmkit.cli.main)
    except OSError as err:  # an output we were told to write cannot be
        raise ContractError(f"cannot write ({type(err).__name__}: {err.strerror or err})",
                            source=getattr(err, "filename", None) or "report") from None  # fmt: skip
    except Exception as err:  # a bug or an unforeseen input: never mistaken for a verdict
        from lwmkit.pipelines.audit.compare import EXIT_INTERNAL
        from lwmkit.runtime.progress import crash_log, error

        error(
            f"internal error in audit ({type(err).__name__}: {err}); full trace in {crash_log('audit', err)}"
        )
        raise SystemExit(EXIT_INTERNAL) from None
    if code:
        # SystemExit, not typer.Exit: click run with standalone_mode=False (as lwmkit.cli.main
        # does) turns typer.Exit(n) into a return value, and the status would be lost.
        raise SystemExit(code)


def _audit(job: AuditJob, beam_args: list[str]) -> int:
    """The audit and its reports; returns the verdict's exit status."""
    from lwmkit.pipelines.audit.job import AuditConfig
    from lwmkit.pipelines.audit.job import audit as run_audit
    from lwmkit.pipelines.audit.report import print_report, report_console, write_html, write_json
    from lwmkit.runtime.progress import step
    from lwmkit.schemas import MixtureConfig

    mix = None
    if job.mixture:
        from lwmkit.runtime.config import load_config

        mix = load_config(MixtureConfig, job.mixture, job.set)
    config = AuditConfig(tolerance=job.tolerance, runner=job.runner)
    result = run_audit(job.shards, mixture=mix, mixture_from=job.mixture, config=config, beam_args=beam_args)
    json_out, report, dashboard = job.json, job.report, job.dashboard
    console = report_console(stderr=json_out == "-")
    if job.quiet:
        for f in result.findings:
            console.print(f"{f.severity} [{f.kind}] {f.subject}: {f.message}", markup=False, soft_wrap=True)
        console.print(f"{result.verdict.upper()} {result.path}", markup=False)
    else:
        print_report(result, console)
    if json_out == "-":
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    elif json_out:
        write_json(result, json_out)
        step(f"JSON report: {json_out}")
    if report:
        write_html(result, report)
        step(f"HTML report: {report}")
    if dashboard:
        from lwmkit.pipelines.audit.plots import render_dashboard
        from lwmkit.runtime.files import write_atomic

        write_atomic(dashboard, render_dashboard(result))
        step(f"dashboard: {dashboard}")
    return result.exit_code


def register(app: typer.Typer) -> None:
    app.command("audit", epilog=_HELP_EXIT, context_settings=PASS_THROUGH)(audit)
