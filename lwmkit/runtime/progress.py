"""One way to report progress, for every job: a rich console on stderr.

Lines are plain and timestamped when stderr is not a terminal (CI logs, Beam workers);
on a terminal they get colour. Jobs call :func:`step` for milestones and :func:`bar` to
wrap an iterable or count units of work.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def find_os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its chain of causes and contexts: Beam wraps a
    worker's exception in a RuntimeError), or None."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        # An error raised "from None" says its context is not the story (a lease refusal that
        # began as a lock attempt is not an I/O failure).
        todo += [e.__cause__] if e.__suppress_context__ else [e.__cause__, e.__context__]
    return None


def describe_os_error(err: OSError) -> str:
    """One line naming the operation and path: ``writing PATH: No space left on device``.

    The operation comes from a note the writer added (``err.add_note("writing PATH")``);
    without one, the failing path stands alone."""
    notes = [n for n in getattr(err, "__notes__", []) if n]
    what = err.strerror or str(err) or type(err).__name__
    if notes:
        return f"{notes[0]}: {what}"
    where = f" ({err.filename})" if err.filename else ""
    return f"I/O error{where}: {what}"


_STORAGE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_STORAGE_PATH = re.compile(r'(?:Failed writing|Failed to open|local file):? "([^"]+)"')


def describe_io_failure(err: BaseException) -> str | None:
    """One line for an I/O failure behind ``err``: an OSError in its chain, or a storage library's
    error that carries an OS error code (TensorStore, under orbax: ``[os_error_code='28']``)."""
    os_err = find_os_error(err)
    if os_err is not None:
        return describe_os_error(os_err)
    seen: BaseException | None = err
    while seen is not None:
        code = _STORAGE_ERRNO.search(str(seen))
        if code:
            import os

            path = _STORAGE_PATH.search(str(seen))
            where = f"writing {path.group(1)}" if path else f"storage error ({type(seen).__name__})"
            return f"{where}: {os.strerror(int(code.group(1)))}"
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def errors_to_log(path: str, *loggers: str) -> Iterator[None]:
    """Send the error records (with their tracebacks) of ``loggers`` (e.g. ``apache_beam``, which
    logs every worker traceback, or ``absl`` for orbax) to ``path`` for the block, so a failing
    job prints one line on the terminal and keeps the detail in its log."""
    import os

    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    except OSError:
        yield
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    split, saved = _ErrorsTo(handler), []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(split)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(split)
            logger.propagate = propagate
        handler.close()


class _ErrorsTo(logging.Handler):
    """Errors and tracebacks to ``target``; everything else on to the root logger (so Beam's
    warnings still reach the terminal, and a run that goes well leaves no log file)."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.target.handle(record)
        else:
            logging.getLogger().handle(record)


def job_log_path(job: str) -> str:
    """Where a job without a log folder of its own keeps its log: the temp folder."""
    import os
    import tempfile

    return os.path.join(
        tempfile.gettempdir(), f"lwmkit-{job}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    )


def crash_log(job: str, err: BaseException, log_dir: str | None = None, path: str | None = None) -> str:
    """Write ``err``'s full traceback to ``log_dir/JOB-crash-<time>-<pid>.log`` (default: the temp
    folder) and return that path, so a failure can be one line on the terminal and whole in a file."""
    import os
    import tempfile
    import traceback

    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if path is not None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(trace)
            return path
        except OSError:
            pass  # fall back to a fresh file below
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
