"""``lwmkit eval needle``: needle-in-a-haystack retrieval of a trained checkpoint, as a heatmap."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate trained checkpoints.", no_args_is_help=True)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v.strip().lower().replace("k", "")) * (1024 if "k" in v.lower() else 1))
                       for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers (e.g. 512,1K,2K), got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what}: empty")
    return values


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated percentages, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what}: empty")
    return values


@app.command("needle")
def needle(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Trainer checkpoint: a stage folder (its final), or one step folder."),
    lengths: str = typer.Option("", "--lengths", help="Context lengths in tokens, e.g. 256,512,1K (default: 1/4, 1/2, 1, 2 x the stage's)."),
    depths: str = typer.Option("0,25,50,75,100", "--depths", help="Needle depths in percent."),
    trials: int = typer.Option(4, "--trials", help="Haystacks per (length, depth) cell."),
    needles: int = typer.Option(1, "--needles", help="Needles inserted per haystack (multi-needle: > 1)."),
    retrieve: int = typer.Option(1, "--retrieve", help="Needles asked per haystack (each its own question)."),
    book: str = typer.Option(None, "--book", help="Haystack text file (default: the sample book, Botchan)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="SentencePiece .model (default: the shipped one); must be the one the model trained with."),
    out: str = typer.Option(..., "--out", help="Output folder: needle.json, cases.jsonl, needle_heatmap.png."),
    sequence: int = typer.Option(1, "--sequence-parallel", help="Shard the sequence over this many devices (ring attention)."),
    tensor: int = typer.Option(1, "--tensor-parallel", help="Shard heads/MLP over this many devices (the rest shard params, FSDP-style)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Haystacks decoded together."),
    kv_cache: bool = typer.Option(True, "--kv-cache/--no-kv-cache", help="Decode against a KV cache (sharded like the activations); --no-kv-cache re-runs the whole context per answer token (slower; holds no cache)."),
    seed: int = typer.Option(0, "--seed", help="Seed of needles, depths and haystack offsets."),
    title: str = typer.Option(None, "--title", help="Heatmap title."),
    modality: str = typer.Option("text", "--modality", help="text: needles in book haystacks; video: needle frames in haystacks of vision records."),
    records: str = typer.Option(None, "--records", help="Video: the vision job's records (Parquet glob) the haystacks are cut from."),
    vqgan: str = typer.Option(None, "--vqgan", help="Video: the VQGAN that tokenized --records (default: the shipped one)."),
    frames: str = typer.Option("", "--frames", help="Video: the grid's lengths in frames (needles included), e.g. 16,32,64; instead of --lengths."),
) -> None:
    """Build haystacks at LENGTHS x DEPTHS, ask for the needles, score exact retrieval, draw the heatmap.

    --modality video: haystacks of the vision records' frames with needle frames ("The secret
    number is 4821") in them; one question asks for every needle's number, in order (so
    --retrieve equals --needles); needle.json adds the frames per length and per-needle recall.
    """
    if modality not in ("text", "video"):
        raise typer.BadParameter(f"--modality: text or video, got {modality!r}")
    if modality == "text" and (records or vqgan or frames):
        raise typer.BadParameter("--records, --vqgan and --frames are for --modality video")
    if modality == "video":
        if not records:
            raise typer.BadParameter("--modality video needs --records (the vision job's Parquet records)")
        if book is not None:
            raise typer.BadParameter("--book is for text needles, not --modality video")
        if frames and lengths:
            raise typer.BadParameter("give the video grid as --frames or --lengths, not both")
    from lwmkit.runtime.progress import bar, step
    from lwmkit.schemas import ContractError
    from lwmkit.tokenizers.needle_text import Haystack
    from lwmkit.tokenizers.text import TextTokenizer
    from lwmkit.trainer.generate import load_model
    from lwmkit.trainer.needle import NeedleGrid, build_cases, evaluate, write_report

    mesh = None
    if sequence > 1 or tensor > 1:
        from lwmkit.schemas import MeshConfig
        from lwmkit.trainer.mesh import make_mesh

        mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=tensor, sequence=sequence))
    model = load_model(checkpoint, mesh)
    tok = TextTokenizer.load(tokenizer)
    if model.tokenizer_id and model.tokenizer_id != tok.id:
        raise ContractError(f"the model was trained with tokenizer {model.tokenizer_id[:12]}, not {tok.id[:12]}; "
                            "pass the same --tokenizer", field="tokenizer", source=checkpoint)
    n = model.seq_len
    grid_lengths = _ints(lengths, "--lengths") if lengths else tuple(sorted({max(n // 4, 128), n // 2, n, 2 * n}))
    if frames:
        from lwmkit.trainer.needle_video import length_of_frames

        grid_lengths = tuple(length_of_frames(tok, f, needles) for f in _ints(frames, "--frames"))
    try:
        grid = NeedleGrid(grid_lengths, _floats(depths, "--depths"), trials, needles, retrieve, seed, batch_size)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if modality == "video":
        report = _video(model, tok, grid, records, vqgan, mesh, kv_cache)
    else:
        if book is None:
            from lwmkit.runtime.sample_data import book_source

            book = str(book_source())
        with open(book, encoding="utf-8", errors="replace") as f:
            hay = Haystack(f.read(), tok)
        total = len(build_cases(hay, grid))
        step(f"needle eval: stage {model.stage} (trained at {n} tokens, RoPE theta {model.rope_theta:g}) "
             f"on lengths {list(grid.lengths)} x depths {list(grid.depths)}, {total} questions")
        with bar("needle questions", total) as advance:
            report = evaluate(model, tok, hay, grid, mesh=mesh, on_batch=advance, kv_cache=kv_cache)
    paths = write_report(report, out, title)
    for length, row in zip(report.lengths, report.accuracy, strict=True):
        step(f"  {length:>7} tokens: " + "  ".join(f"{d:g}%={a:.2f}" for d, a in zip(report.depths, row, strict=True)))
    digits = report.summary()["digits_overall"]
    if report.retrieve > 1:
        step("  recall by needle: " + ", ".join(f"#{k + 1} {r:.2f}" for k, r in enumerate(report.summary()["recall_by_needle"])))
    step(f"needle accuracy {report.overall:.3f} overall (digit accuracy {digits:.3f}); "
         f"heatmaps {paths['heatmap']}, {paths['digits_heatmap']}; results {paths['json']}")


def _video(model, tok, grid, records: str, vqgan: str | None, mesh, kv_cache: bool):
    """The video grid: haystacks from ``records``, needle frames from ``vqgan``."""
    import fsspec

    from lwmkit.needle_video_data import read_pool
    from lwmkit.runtime.progress import bar, step
    from lwmkit.schemas import ContractError
    from lwmkit.tokenizers import vqgan as vq
    from lwmkit.trainer.needle_video import build_video_cases, evaluate_video, frames_per_length

    if not model.config.vision_vocab_size:  # fail before reading records and tokenizing needles
        raise ContractError("the model has no vision vocabulary (vision_vocab_size 0): it cannot read video",
                            field="vision_vocab_size", source=model.path)
    fs, _, paths = fsspec.get_fs_token_paths(records)
    if not paths:
        raise typer.BadParameter(f"--records: no files match {records!r}")
    pool = read_pool([fs.unstrip_protocol(p) if "://" in records else p for p in paths], tok.vocab_layout())
    vq_tok = vq.load(vqgan)
    try:
        cases = build_video_cases(pool, vq_tok, tok, grid)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    step(f"needle eval (video): stage {model.stage} (trained at {model.seq_len} tokens) on lengths "
         f"{list(grid.lengths)} ({frames_per_length(tok, grid.lengths, grid.needles)} frames) x depths "
         f"{list(grid.depths)}, {len(cases)} questions, haystacks from {len(pool.codes)} frames of {len(pool.record_ids)} records")
    with bar("needle questions", len(cases)) as advance:
        return evaluate_video(model, tok, pool, vq_tok, grid, mesh=mesh, on_batch=advance, kv_cache=kv_cache,
                              cases=cases)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
