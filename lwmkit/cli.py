"""The ``lwmkit`` command: one subcommand per job.

Heavy libraries (JAX, Beam) are imported inside the commands, so ``lwmkit --help`` is fast.
Every command that takes a config accepts ``--set key=value`` overrides; contract errors
print one clear line (file, field, reason) and exit with status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from lwmkit import __version__, commands
from lwmkit.progress import crash_log, describe_io_failure, error
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
