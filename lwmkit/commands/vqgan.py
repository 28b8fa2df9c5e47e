"""``lwmkit vqgan``: train, evaluate, import and inspect VQGAN vision tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lwmkit.runtime.progress import step

app = typer.Typer(help="VQGAN vision tokenizer (256 codes per 256x256 frame, LWM's architecture).",
                  no_args_is_help=True)  # fmt: skip

DEFAULT_HOLDOUT = "bikes.mp4"  # a whole clip the shipped default never sees, for honest PSNR


def _default_inputs(holdout: list[str]) -> list[Path]:
    from lwmkit.runtime.sample_data import video_sources
    from lwmkit.tokenizers.vqgan_frames import installed_images

    return [p for p in video_sources() if p.name not in holdout] + installed_images()


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.msgpack)."),
    inputs: list[Path] = typer.Argument(
        None, help="Videos/images to train on; default: the sample clips + installed photos."
    ),
    holdout: list[str] = typer.Option([DEFAULT_HOLDOUT], help="File names never trained on (kept for eval)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML VQGANTrainConfig (e.g. configs/vqgan-small.yaml)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: key=value (e.g. steps=500)."),
    max_frames: int = typer.Option(0, help="Frames kept per clip (linspace); 0 = all."),
) -> None:
    """Train a VQGAN on frames (reconstruction + codebook + commitment losses, dead-code restarts)."""
    from lwmkit.runtime.config import load_config
    from lwmkit.tokenizers.vqgan_frames import frame_pool
    from lwmkit.tokenizers.vqgan_train import VQGANTrainConfig, train

    cfg = load_config(VQGANTrainConfig, str(config) if config else None, set_)
    paths = [p for p in (inputs or _default_inputs(holdout)) if p.name not in holdout]
    if not paths:
        raise typer.BadParameter("no training inputs left after --holdout")
    pool = frame_pool(paths, max_frames or None, cfg.model.resolution)
    step(
        f"training on {len(pool)} frames from {len(paths)} file(s); held out: {', '.join(holdout) or 'nothing'}"
    )
    meta = {"train_inputs": [p.name for p in paths], "holdout": list(holdout), "n_train_frames": len(pool)}
    ckpt = train(pool, cfg, out, meta)
    step(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), id {ckpt.id[:16]}")


@app.command("eval")
def eval_cmd(
    inputs: list[Path] = typer.Argument(
        None, help="Videos/images to reconstruct; default: the held-out sample clip."
    ),
    checkpoint: str | None = typer.Option(None, help="lwmkit VQGAN checkpoint; default: the shipped one."),
    max_frames: int = typer.Option(32, help="Frames per clip (linspace); 0 = all."),
    grid: Path | None = typer.Option(None, help="Write a PNG of originals beside reconstructions here."),
    dtype: str = typer.Option("float32", help="Compute dtype: float32 or bfloat16."),
) -> None:
    """Reconstruction PSNR and codebook usage on frames (centre-cropped 256x256); prints JSON."""
    import numpy as np

    from lwmkit.runtime.sample_data import video_sources
    from lwmkit.tokenizers import vqgan
    from lwmkit.tokenizers.vqgan_frames import center_crop, frame_pool
    from lwmkit.tokenizers.vqgan_quality import evaluate, save_grid

    tok = vqgan.load(checkpoint, dtype=dtype)
    paths = inputs or [p for p in video_sources() if p.name == DEFAULT_HOLDOUT]
    r = tok.config.resolution
    frames = np.stack([center_crop(f, r) for f in frame_pool(paths, max_frames or None, r)])
    step(f"evaluating {tok.id[:16]} on {len(frames)} frames from {len(paths)} file(s)")
    report, recon = evaluate(tok, frames)
    if grid:
        pick = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
        step(f"wrote {save_grid(frames[pick], recon[pick], grid)}")
    typer.echo(json.dumps(report.to_dict(), indent=2))


@app.command("import-lwm")
def import_lwm_cmd(
    src: str = typer.Argument(..., help="LWM's pickled VQGAN params (the `vqgan` file of LWM-*-Jax)."),
    out: str = typer.Argument(..., help="lwmkit checkpoint to write (.msgpack)."),
) -> None:
    """Convert LWM's pickle to lwmkit's safe format (restricted unpickler: dicts and numpy arrays only)."""
    from lwmkit.tokenizers.vqgan_checkpoint import import_lwm

    ckpt = import_lwm(src, out)
    n = sum(int(a.size) for a in _leaves(ckpt.params))
    step(f"imported {n / 1e6:.1f}M parameters, widths {list(ckpt.config.widths)}, "
         f"codebook {ckpt.config.num_embeddings}x{ckpt.config.embed_dim}; wrote {out}, id {ckpt.id[:16]}")  # fmt: skip


@app.command("info")
def info_cmd(
    checkpoint: str | None = typer.Argument(None, help="Checkpoint; default: the shipped one."),
) -> None:
    """Print a checkpoint's id, config, parameter count and how it was made (JSON)."""
    from lwmkit.schemas.strict import to_dict
    from lwmkit.tokenizers.vqgan import default_checkpoint_path
    from lwmkit.tokenizers.vqgan_checkpoint import read_checkpoint

    path = checkpoint or default_checkpoint_path()
    ckpt = read_checkpoint(path)
    n = sum(int(a.size) for a in _leaves(ckpt.params))
    doc = {"path": path, "id": ckpt.id, "n_params": n, "config": to_dict(ckpt.config), "meta": ckpt.meta}
    typer.echo(json.dumps(doc, indent=2, default=str))


def _leaves(tree: dict):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else (v,))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="vqgan")
