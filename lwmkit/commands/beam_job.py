"""Running a Beam job from the CLI with its flags passed through untouched.

``lwmkit JOB ...`` and ``python -m lwmkit.pipelines.JOB ...`` take exactly the same arguments:
the command hands ``ctx.args`` to the job's ``run(argv)``; no arguments or ``--help`` print the
job's ``help_text()``; the job's own failure exception becomes one error line and exit 1.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import typer

from lwmkit.runtime.progress import error

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def run_job(ctx: typer.Context, job: str, failures: Callable[[], tuple[type[BaseException], ...]]) -> None:
    """Run ``lwmkit.pipelines.<job>.run(ctx.args)``; ``failures()`` names the job's expected errors
    (called lazily, so heavy modules load only when the job runs)."""
    module = importlib.import_module(f"lwmkit.pipelines.{job}.job")
    args = list(ctx.args)
    if not args or "--help" in args or "-h" in args:
        typer.echo(module.help_text())
        return
    try:
        module.run(args)
    except failures() as err:
        error(str(err))
        raise typer.Exit(1) from None
