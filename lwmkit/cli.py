"""The ``lwmkit`` command: one subcommand per job.

Heavy libraries (JAX, Beam) are imported inside the commands, so ``lwmkit --help`` is fast.
Every command that takes a config accepts ``--set key=value`` overrides; contract errors
print one clear line (file, field, reason) and exit with status 2.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer
import typer.core

from lwmkit import __version__, commands
from lwmkit.runtime.progress import crash_log, describe_io_failure, error
from lwmkit.schemas import ContractError

app = typer.Typer(
    name="lwmkit",
    help=(
        "Build million-token video+language training data with Apache Beam and train long-context "
        "models on it, stage by stage (the Large World Model recipe)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Each module in lwmkit/commands/ defines ``register(app)``; adding a job's command is adding
# its module there (modules import their heavy dependencies inside the command functions).
for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"lwmkit.commands.{_info.name}")
    if hasattr(_module, "register"):
        _module.register(app)

# `lwmkit --help` lists the commands in the order the data flows through them; others follow.
PIPELINE_ORDER = ("sample-data", "tokenizer", "vqgan", "vision", "vision-preview", "books", "needle-data", "pack",
                  "audit", "train", "eval", "convert", "validate", "demo")


def _flow_position(info) -> int:
    name = info.name or ""
    return PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER else len(PIPELINE_ORDER)


app.registered_commands.sort(key=_flow_position)
app.registered_groups.sort(key=_flow_position)


def _conventional(display_type):
    """Typer 0.29 labels every value with its Python type ("<bool>", "<list[str]>") and a required
    argument as "{config}"; show what command-line tools conventionally show instead: nothing for a
    flag, TEXT / INTEGER / FLOAT / PATH, choices as [a|b], a repeatable option as "TEXT ..."."""

    def label(self, ctx):
        shown = display_type(self, ctx)
        if not (isinstance(shown, str) and shown.startswith("<") and shown.endswith(">")):
            return shown
        inner, many = shown[1:-1], ""
        if inner.startswith("list[") and inner.endswith("]"):
            inner, many = inner[5:-1], " ..."
        if inner == "bool":
            return "" if not many else "BOOLEAN ..."
        if "|" in inner:
            return f"[{inner}]{many}"
        return {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH"}.get(inner, inner.upper()) + many

    return label


def _usage_name(self) -> str:
    name = self.display_name_raw.upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


if hasattr(typer.core, "_TyperParameter") and hasattr(typer.core._TyperParameter, "display_type"):
    typer.core._TyperParameter.display_type = _conventional(typer.core._TyperParameter.display_type)
if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_name


class _BeamImportNoise(logging.Filter):
    """Beam logs two warnings on import that say nothing about lwmkit's jobs: BigQuery's optional
    client (apitools) is missing, and the `resource` module check for RunInference's memory
    estimate. Dropped from the root logger, where Beam logs them; every other record passes."""

    NOISE = ("apitools not found", "Resource module is not available")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(str(record.msg).startswith(n) for n in self.NOISE)


logging.getLogger().addFilter(_BeamImportNoise())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lwmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """lwmkit: the Large World Model recipe as software."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning contract errors into one readable line."""
    try:
        # Without standalone mode click *returns* a typer.Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except ContractError as err:
        error(str(err))
        sys.exit(2)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as err:
        # Usage errors: typer vendors its own click (typer._click), so match by interface.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(err.exit_code)
        failure = describe_io_failure(err)
        if failure is None:
            raise
        # A full disk, a read-only folder, a file where a folder should be: one line; the trace in a log.
        command = next((a for a in (argv or sys.argv[1:]) if not a.startswith("-")), "lwmkit")
        error(f"{failure}; full trace in {crash_log(command, err)}")
        sys.exit(1)

if __name__ == "__main__":
    main()
