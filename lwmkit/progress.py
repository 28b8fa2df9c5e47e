"""One way to report progress, for every job: a rich console on stderr.

Lines are plain and timestamped when stderr is not a terminal (CI logs, Beam workers);
on a terminal they get colour. Jobs call :func:`step` for milestones and :func:`bar` to
wrap an iterable or count units of work.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True, highlight=False)
_T0 = time.monotonic()


def step(message: str) -> None:
    """A milestone: ``[  12.3s] message``."""
    console.print(f"[dim][{time.monotonic() - _T0:7.1f}s][/dim] {message}", soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def error(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)


@contextmanager
def bar(description: str, total: int | None = None) -> Iterator[callable]:
    """A progress bar; yields ``advance(n=1)``. Plain start/end lines when not on a terminal."""
    if not console.is_terminal:
        step(f"{description} ...")
        count = [0]

        def advance(n: int = 1) -> None:
            count[0] += n

        yield advance
        step(f"{description}: {count[0]}{f'/{total}' if total else ''} done")
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with bar(description, total) as advance:
        for item in items:
            yield item
            advance()


def crash_log(job: str, err: BaseException, log_dir: str | None = None) -> str:
    """Write ``err``'s full traceback to ``log_dir/JOB-crash-<time>-<pid>.log`` (default: the temp
    folder) and return that path, so a failure can be one line on the terminal and whole in a file."""
    import os
    import tempfile
    import traceback

    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    name = f"{job}-crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir, tempfile.gettempdir()):
        if not folder:
            continue
        path = os.path.join(folder, name)
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(trace)
            return path
        except OSError:
            continue  # the job's own folder may be what failed: fall back to the temp folder
    return "(no writable log folder)"
