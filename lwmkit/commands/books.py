"""``lwmkit books``: the Beam job chunking books and generating QA pairs for each chunk.

The flags are generated from the job's typed config, :class:`lwmkit.schemas.jobs.BooksJob`
(``lwmkit books --help`` lists them); Beam's own pass through untouched, so ``lwmkit books ...`` and ``python -m
lwmkit.pipelines.books ...`` take exactly the same arguments.
"""

from __future__ import annotations

import typer

from lwmkit.commands.beam_job import PASS_THROUGH, run_job


def books(ctx: typer.Context) -> None:
    """Chunk books by token budget, ask a short-context model for QA pairs, write book-chunk records.

    Example: lwmkit books --input 'books/*.txt' --output out/books
    (no --qa-endpoint: starts the embedded SmolLM2 server; lwmkit books --help lists every flag.)
    """
    run_job(ctx, "books", _failures)


def _failures() -> tuple[type[BaseException], ...]:
    from lwmkit.pipelines.books.job import BooksJobFailed
    from lwmkit.pipelines.books.llm_server import ServerError

    return (ServerError, BooksJobFailed)


def register(app: typer.Typer) -> None:
    app.command("books", context_settings=PASS_THROUGH)(books)
