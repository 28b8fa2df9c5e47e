"""``lwmkit needle-data``: retrieval-bearing book-QA records (needles in book haystacks) for the pack job."""

from __future__ import annotations

import typer


def needle_data(
    out: str = typer.Option(..., "--out", help="Output Parquet file (BOOK_CHUNK records), local or bucket URL."),
    seq_len: int = typer.Option(..., "--seq-len", help="The stage length every haystack chat must fit."),
    examples: int = typer.Option(..., "--examples", help="Number of haystacks (one chat each)."),
    book: str = typer.Option(None, "--book", help="Haystack text file (default: the sample book, Botchan)."),
    needles_min: int = typer.Option(1, "--needles-min", help="Fewest needles per haystack."),
    needles_max: int = typer.Option(4, "--needles-max", help="Most needles per haystack (all are asked)."),
    min_fill: float = typer.Option(0.3, "--min-fill", help="Shortest haystack as a share of seq-len."),
    chunk_tokens: int = typer.Option(1000, "--chunk-tokens", help="Tokens per book chunk (LWM: 1000)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="SentencePiece .model (default: the shipped one)."),
    seed: int = typer.Option(0, "--seed", help="Seed of needles, depths and haystack offsets."),
    source: str = typer.Option("needles", "--source", help="Source name recorded in every row."),
    repeat_share: float = typer.Option(0.0, "--repeat-share", help="Share of examples that are repeat-the-passage tasks (dense copy practice) instead of needles."),
    far_share: float = typer.Option(0.0, "--far-share", help="Share of needle haystacks that are far needles: the haystack fills the context and the needle sits near its start (the longest distances; uniform depths rarely give them)."),
    far_fill: float = typer.Option(0.95, "--far-fill", help="A far needle's haystack fills at least this share of seq-len."),
    far_depth: float = typer.Option(0.15, "--far-depth", help="A far needle sits in the first this share of its haystack."),
) -> None:
    """Write haystacks with needles as book chunks whose QA pairs ask for them.

    Pack them with a ``book_qa_chat`` source: each haystack becomes one long chat, loss on the
    answers only (the format ``lwmkit eval needle`` asks in).
    Example: lwmkit needle-data --seq-len 2048 --examples 500 --out needles/s2k/needles.parquet
    """
    from lwmkit.needle_data import NeedleDataConfig, write_needle_data
    from lwmkit.runtime.progress import step
    from lwmkit.tokenizers.text import TextTokenizer

    try:
        cfg = NeedleDataConfig(seq_len, examples, needles_min, needles_max, min_fill, chunk_tokens, seed, source,
                                repeat_share, far_share, far_fill, far_depth)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if book is None:
        from lwmkit.runtime.sample_data import book_source

        book = str(book_source())
    import fsspec

    with fsspec.open(book, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    n = write_needle_data(text, out, cfg, TextTokenizer.load(tokenizer))
    step(f"needle-data: {examples} examples ({n} chunks; repeat share {repeat_share:g}, far share {far_share:g}{f' (fill >= {far_fill:g}, depth <= {far_depth:g})' if far_share else ''}) for seq_len {seq_len} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("needle-data")(needle_data)
