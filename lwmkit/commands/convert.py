"""``lwmkit convert import|export``: LLaMA / LWM weights <-> lwmkit trainer checkpoints."""

from __future__ import annotations

import typer

app = typer.Typer(help="Convert LLaMA / LWM weights into trainer checkpoints and back.", no_args_is_help=True)
FORMAT_HELP = ("hf (a Hugging Face Llama folder, text or vision: transformers / vLLM load it), llama-hf (HF safetensors + "
               "config.json, text only), llama-meta (Meta names, safetensors + params.json) or lwm (LWM/EasyLM "
               "streaming_params).")


@app.command("import")
def import_(
    src: str = typer.Argument(..., help="Weights: an HF/Meta folder or .safetensors file (an lwmkit hf export gets its vision vocabulary back), or an LWM streaming_params file."),
    fmt: str = typer.Option(..., "--format", help=FORMAT_HELP),
    out: str = typer.Option(..., "--out", help="Checkpoint root: writes <out>/<stage-name>/final/0 (use it as init_from: <out>/<stage-name>)."),
    config: str = typer.Option(None, "--config", help="Training config YAML whose `model` gives the shape (default: the folder's config.json / params.json)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="The model's SentencePiece tokenizer.model (default: one beside the weights); its id is recorded for the trainer's shard check."),
    no_tokenizer: bool = typer.Option(False, "--no-tokenizer", help="Record no tokenizer id (the trainer then cannot check that shards match)."),
    stage_name: str = typer.Option("import", "--stage-name", help="Stage name recorded in the checkpoint (its folder under --out)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Context the weights were trained at (default: config.json's max_position_embeddings)."),
    rope_theta: float = typer.Option(None, "--rope-theta", help="Their RoPE theta (default: config.json / params.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a checkpoint already at <out>/<stage-name>."),
) -> None:
    """Import LLaMA or LWM weights as an lwmkit trainer checkpoint (never unpickles: safetensors/msgpack only)."""
    from lwmkit.trainer.convert_checkpoint import Source, import_checkpoint

    model = None
    if config is not None:
        from lwmkit.runtime.config import load_config
        from lwmkit.schemas import TrainConfig

        model = load_config(TrainConfig, config, []).model
    source = Source(src, fmt, model=model, tokenizer=tokenizer, no_tokenizer=no_tokenizer, seq_len=seq_len,
                    rope_theta=rope_theta)
    path = import_checkpoint(source, out, stage_name=stage_name, overwrite=overwrite)
    typer.echo(f"checkpoint {path} (train from it with `init_from: {path}`)")


@app.command("export")
def export(
    ckpt: str = typer.Argument(..., help="Trainer checkpoint: a stage folder (its final, else latest step), final/steps folder or one step folder."),
    fmt: str = typer.Option(..., "--format", help=FORMAT_HELP),
    out: str = typer.Option(..., "--out", help="Output folder (hf, llama-hf, llama-meta) or streaming_params file path (lwm)."),
    text_only: bool = typer.Option(False, "--text-only", help="LLaMA formats: drop the vision embedding/head (refused without it)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="hf: the model's SentencePiece tokenizer.model, copied into the folder with tokenizer.json (default: the one the checkpoint names; its id must match)."),
    no_tokenizer: bool = typer.Option(False, "--no-tokenizer", help="hf: write no tokenizer files."),
    max_shard_size: str = typer.Option(None, "--max-shard-size", help="hf: largest safetensors file, e.g. 5GB (the default, as transformers), 500MB or 2GiB; a bigger model is written as model-0000i-of-0000N.safetensors + model.safetensors.index.json."),
    dtype: str = typer.Option(None, "--dtype", help="hf: float32 (default, exact), bfloat16 or float16 (half the size; rounded to nearest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files already at --out."),
) -> None:
    """Export a trainer checkpoint as a Hugging Face Llama folder (hf: text or vision), LLaMA safetensors (+ config.json / params.json) or LWM streaming_params."""
    from lwmkit.trainer.convert_checkpoint import export_checkpoint

    for path in export_checkpoint(ckpt, fmt, out, text_only=text_only, overwrite=overwrite, tokenizer=tokenizer,
                                  no_tokenizer=no_tokenizer, max_shard_size=max_shard_size, dtype=dtype):
        typer.echo(path)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="convert")
