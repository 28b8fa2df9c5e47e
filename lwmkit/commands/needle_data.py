"""``lwmkit needle-data``: retrieval-bearing book-QA records (needles in book haystacks) for the pack job."""

from __future__ import annotations

import typer


def needle_data(
    out: str = typer.Option(..., "--out", help="Output Parquet file (BOOK_CHUNK records; video: VISION_RECORD), local or bucket URL."),
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
    far_needles: int = typer.Option(0, "--far-needles", help="How many of a far haystack's needles sit near its start; the others go anywhere, as a multi-needle eval places them (0: all)."),
    modality: str = typer.Option("text", "--modality", help="text: needles in book haystacks; video: needle frames in haystacks of vision records."),
    records: str = typer.Option(None, "--records", help="Video: the vision job's records (Parquet glob) the haystacks are cut from."),
    vqgan: str = typer.Option(None, "--vqgan", help="Video: the VQGAN that tokenized --records (default: the shipped one)."),
) -> None:
    """Write haystacks with needles as book chunks whose QA pairs ask for them.

    Pack them with a ``book_qa_chat`` source: each haystack becomes one long chat, loss on the
    answers only (the format ``lwmkit eval needle`` asks in).
    Example: lwmkit needle-data --seq-len 2048 --examples 500 --out needles/s2k/needles.parquet

    Video (--modality video): needle frames ("The secret number is 4821") in haystacks of the
    vision records' frames, as vision records whose caption is the answer. Pack them with a
    ``video_text`` source, ``understanding_share: 1.0`` and ``prompt`` set to the needle question
    (configs/video-needle-proof/mixture.yaml).
    Example: lwmkit needle-data --modality video --records 'vision/*.parquet' --seq-len 4096 --examples 200 --out needles/v4k/needles.parquet
    """
    if modality not in ("text", "video"):
        raise typer.BadParameter(f"--modality: text or video, got {modality!r}")
    if modality == "video":
        if records is None:
            raise typer.BadParameter("--modality video needs --records (the vision job's Parquet records)")
        if book is not None or repeat_share:
            raise typer.BadParameter("--book and --repeat-share are for text needles, not --modality video")
        _video(out, seq_len, examples, records, vqgan, tokenizer, needles_min, needles_max, min_fill, seed, source,
               far_share, far_fill, far_depth, far_needles)
        return
    if records is not None or vqgan is not None:
        raise typer.BadParameter("--records and --vqgan are for --modality video")
    from lwmkit.needle_data import NeedleDataConfig, write_needle_data
    from lwmkit.runtime.progress import step
    from lwmkit.tokenizers.text import TextTokenizer

    try:
        cfg = NeedleDataConfig(seq_len, examples, needles_min, needles_max, min_fill, chunk_tokens, seed, source,
                                repeat_share, far_share, far_fill, far_depth, far_needles)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if book is None:
        from lwmkit.runtime.sample_data import book_source

        book = str(book_source())
    import fsspec

    with fsspec.open(book, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    n = write_needle_data(text, out, cfg, TextTokenizer.load(tokenizer))
    step(f"needle-data: {examples} examples ({n} chunks; repeat share {repeat_share:g}, far share {far_share:g}{_far(far_share, far_fill, far_depth, far_needles)}) for seq_len {seq_len} -> {out}")


def _video(out: str, seq_len: int, examples: int, records: str, vqgan: str | None, tokenizer: str | None,
           needles_min: int, needles_max: int, min_fill: float, seed: int, source: str, far_share: float,
           far_fill: float, far_depth: float, far_needles: int) -> None:
    import fsspec

    from lwmkit.needle_video_data import VideoNeedleConfig, write_video_needle_data
    from lwmkit.runtime.progress import step
    from lwmkit.tokenizers import vqgan as vq
    from lwmkit.tokenizers.text import TextTokenizer

    try:
        cfg = VideoNeedleConfig(seq_len, examples, needles_min, needles_max, min_fill, seed,
                                "needle-video" if source == "needles" else source, far_share, far_fill, far_depth,
                                far_needles)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    fs, _, paths = fsspec.get_fs_token_paths(records)
    if not paths:
        raise typer.BadParameter(f"--records: no files match {records!r}")
    paths = [fs.unstrip_protocol(p) if "://" in records else p for p in paths]
    n = write_video_needle_data(paths, out, cfg, TextTokenizer.load(tokenizer), vq.load(vqgan))
    step(f"needle-data: {n} needle videos ({needles_min}-{needles_max} needles, far share {far_share:g}"
         f"{_far(far_share, far_fill, far_depth, far_needles)}) "
         f"for seq_len {seq_len} from {len(paths)} record file(s) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("needle-data")(needle_data)


def _far(share: float, fill: float, depth: float, needles: int) -> str:
    """The far-needle settings as the progress line states them ('' when there are none)."""
    if not share:
        return ""
    return f" (fill >= {fill:g}, {needles or 'all'} needle(s) at depth <= {depth:g})"
