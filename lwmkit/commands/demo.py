"""``lwmkit demo``: one command from raw media to a longer-context model, with a needle test."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: str = typer.Option("lwmkit-demo", "--out", help="Output folder (a re-run resumes it)."),
    # One size today ("smallest", a few minutes on 2 cores), so the option stays out of --help; the
    # long-context proof is benchmarks/bench_needle_proof.py.
    size: str = typer.Option("smallest", "--size", hidden=True),
) -> None:
    """Sample data -> vision job -> book-QA job (local SmolLM2) -> pack per stage -> audit (gated)
    -> train a tiny model stage by stage -> needle eval -> summary with the paths of what it made.

    Every step is the real job run through its CLI in a subprocess (logs in OUT/logs/).
    """
    from lwmkit.demo import SIZES, DemoFailed, check_tools, run_demo
    from lwmkit.runtime.progress import error, step

    if size not in SIZES:
        raise typer.BadParameter(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    check_tools()
    out = Path(out)
    try:
        result = run_demo(out.resolve(), SIZES[size])
    except DemoFailed as err:
        error(str(err))
        raise typer.Exit(1) from None
    step(f"demo ({size}) finished in {out}:")
    for name, path in result.artefacts.items():
        step(f"  {name:28s} {out / path}")
    for stage, acc in result.needle.items():
        step(f"  needle accuracy after {stage}: {acc:.2f}")
    step(f"  summary: {out / 'SUMMARY.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
