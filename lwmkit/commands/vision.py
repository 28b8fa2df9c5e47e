"""``lwmkit vision``: the Beam job turning videos and images into VQGAN vision records.

The flags are generated from the job's typed config, :class:`lwmkit.schemas.jobs.VisionJob`
(``lwmkit vision --help`` lists them); Beam's own pass through untouched, so ``lwmkit vision ...`` and ``python -m
lwmkit.pipelines.vision ...`` take exactly the same arguments.
"""

from __future__ import annotations

import typer

from lwmkit.commands.beam_job import PASS_THROUGH, run_job


def vision(ctx: typer.Context) -> None:
    """Decode videos/images, tokenize every frame with the VQGAN, write vision records (Parquet).

    Example: lwmkit vision --inputs 'videos/*' --output out/ --fps 1 --preview 4
    (lwmkit vision --help lists every flag.)
    """
    run_job(ctx, "vision", _failures)


def _failures() -> tuple[type[BaseException], ...]:
    from lwmkit.pipelines.vision.driver import VisionJobFailed

    return (VisionJobFailed,)


def preview(
    output: str = typer.Argument(..., help="A vision job's output folder."),
    n: int = typer.Option(4, "--n", help="Records to show (the first N by id)."),
    vqgan: str = typer.Option(None, "--vqgan", help="VQGAN checkpoint (default: the shipped one)."),
    dest: str = typer.Option(None, "--dest", help="PNG path (default OUTPUT/preview.png)."),
) -> None:
    """Write a PNG grid of original frames beside their VQGAN reconstructions."""
    from lwmkit.pipelines.vision.preview import write_preview

    typer.echo(write_preview(output, n, checkpoint=vqgan, dest=dest))


def register(app: typer.Typer) -> None:
    app.command("vision", context_settings=PASS_THROUGH)(vision)
    app.command("vision-preview")(preview)
