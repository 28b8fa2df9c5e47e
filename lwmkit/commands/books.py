"""``lwmkit books``: the Beam job chunking books and generating QA pairs for each chunk.

The flags are the job's ``BooksOptions`` (``lwmkit books --help`` lists them) plus Beam's
own, passed through untouched, so ``lwmkit books ...`` and ``python -m
lwmkit.pipelines.books ...`` take exactly the same arguments.
"""

from __future__ import annotations

import typer

from lwmkit.progress import error

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def books(ctx: typer.Context) -> None:
    """Chunk books by token budget, ask a short-context model for QA pairs, write book-chunk records.

    Example: lwmkit books --input 'books/*.txt' --output out/books
    (no --qa_endpoint: starts the embedded SmolLM2 server; lwmkit books --help lists every flag.)
    """
    args = list(ctx.args)
    if not args or "--help" in args or "-h" in args:
        from lwmkit.pipelines.books import help_text

        typer.echo(help_text())
        return
    from lwmkit.pipelines.books import run
    from lwmkit.pipelines.llm_server import ServerError

    try:
        run(args)
    except ServerError as err:
        error(str(err))
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("books", context_settings=_PASS_THROUGH)(books)
