"""``lwmkit tokenizer``: train, inspect and use the text tokenizer."""

from __future__ import annotations

from pathlib import Path

import typer

from lwmkit.runtime.progress import step

app = typer.Typer(help="Text tokenizer (SentencePiece with LWM's conventions).", no_args_is_help=True)


@app.command("train")
def train_cmd(
    inputs: list[Path] = typer.Argument(..., help="Text files to train on (UTF-8)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output prefix; writes OUT.model and OUT.vocab."),
    vocab_size: int = typer.Option(8000, help="Vocabulary size (LLaMA-2: 32000)."),
    model_type: str = typer.Option("bpe", help="bpe (as LLaMA) or unigram."),
) -> None:
    """Train a LLaMA-style SentencePiece model (BPE, byte fallback, split digits; unk 0, BOS 1, EOS 2)."""
    from lwmkit.tokenizers.text import TextTokenizer, train

    step(f"training a {model_type} tokenizer, vocab {vocab_size}, on {len(inputs)} file(s)")
    model = train(inputs, out, vocab_size=vocab_size, model_type=model_type)
    tok = TextTokenizer.load(model)
    step(f"wrote {model} ({model.stat().st_size / 1024:.0f} KiB), id {tok.id[:16]}")


@app.command("encode")
def encode_cmd(
    text: str = typer.Argument(..., help="Text to encode."),
    model: Path | None = typer.Option(None, help="SentencePiece model; default: the embedded one."),
) -> None:
    """Print the token ids and pieces of TEXT (no BOS/EOS, as LWM encodes)."""
    from lwmkit.tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(model)
    ids = tok.encode(text)
    typer.echo(" ".join(str(i) for i in ids))
    typer.echo(" ".join(tok.processor.IdToPiece(i) for i in ids))


@app.command("info")
def info_cmd(model: Path | None = typer.Option(None, help="SentencePiece model; default: the embedded one.")) -> None:
    """Print the model's id (sha256), vocab size and the vocabulary layout it gives."""
    import json

    from lwmkit.schemas import to_dict
    from lwmkit.tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(model)
    typer.echo(json.dumps({"path": tok.path, "id": tok.id, "vocab_layout": to_dict(tok.vocab_layout())}, indent=2))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tokenizer")
