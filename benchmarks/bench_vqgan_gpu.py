"""Train a bigger VQGAN on one GPU inside a fixed time, then measure it here (issue 22's 28 dB goal).

    # 1. here (needs decord, Pillow and matplotlib's fonts, which the GPU machine lacks): the frames
    python benchmarks/bench_vqgan_gpu.py pack --config configs/vqgan-base-gpu.yaml --out benchmarks/.vqgan-frames
    # 2. on the GPU machine, carrying benchmarks/.vqgan-frames (~40 MB): train for a wall-clock budget
    python benchmarks/bench_vqgan_gpu.py train --frames benchmarks/.vqgan-frames \\
        --config configs/vqgan-base-gpu.yaml --minutes 6 --out $OUT/vqgan-base.msgpack
    # 3. here, on the checkpoint that came back: every probe of the quality bench
    python benchmarks/bench_vqgan_quality.py --checkpoint tokenizers/data/vqgan-lwmkit-small.msgpack \\
        --checkpoint <returned>/vqgan-base.msgpack --png docs/vqgan-probes-base.png

``pack`` writes the training pool (the sample clips but the held-out bikes.mp4, and matplotlib's
photos; ``--every`` keeps every k-th frame of a clip, adjacent frames being near copies), the config's
rendered frames, and 32 centre-cropped held-out frames, as ``frames.npz`` (plain uint8 arrays, read
with ``allow_pickle=False``). ``train`` trains with ``fit_steps_to_budget``: it times a few steps once
compiled, then sizes the cosine schedule to end inside ``--minutes`` (a schedule cut off by the clock
stops at a high learning rate), and prints the held-out PSNR and codebook usage as JSON. ``--small`` shrinks everything for a CPU check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

T0 = time.monotonic()
HOLDOUT = "bikes.mp4"


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def _config(path: Path, sets: list[str]):
    from lwmkit.runtime.config import load_config
    from lwmkit.tokenizers.vqgan_train import VQGANTrainConfig

    return load_config(VQGANTrainConfig, str(path), sets)


def pack(args: argparse.Namespace) -> None:
    from lwmkit.runtime.sample_data import video_sources
    from lwmkit.tokenizers.vqgan_frames import center_crop, installed_images, read_any, read_video_frames
    from lwmkit.tokenizers.vqgan_synthetic import synthetic_frames

    cfg = _config(args.config, args.set)
    side = cfg.model.resolution
    arrays: dict[str, np.ndarray] = {}
    for path in [p for p in video_sources() if p.name != HOLDOUT] + installed_images():
        frames = read_any(path, None, side)
        kept = np.stack(frames[:: args.every] if len(frames) > 1 else frames)
        arrays[f"train/{path.name}"] = kept
        say(f"{path.name}: {len(kept)} of {len(frames)} frames, {kept.shape[1]}x{kept.shape[2]}")
    holdout = next(p for p in video_sources() if p.name == HOLDOUT)
    arrays["holdout"] = center_crop(read_video_frames(holdout, max_frames=32, short_side=side), side)
    arrays["rendered"] = np.stack(
        synthetic_frames(cfg.synthetic_frames, cfg.seed, side, grey_share=cfg.synthetic_grey_share)
    ) if cfg.synthetic_frames else np.zeros((0, side, side, 3), np.uint8)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / "frames.npz"
    np.savez_compressed(dest, **arrays)
    say(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MiB): {sum(len(v) for k, v in arrays.items() if k.startswith('train/'))} "
        f"training frames, {len(arrays['rendered'])} rendered, {len(arrays['holdout'])} held out")  # fmt: skip


def _load(folder: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    with np.load(folder / "frames.npz", allow_pickle=False) as data:
        pool = [f for k in data.files if k.startswith("train/") for f in data[k]]
        return pool, data["rendered"], data["holdout"]


def train_timed(args: argparse.Namespace) -> None:
    import jax

    from lwmkit.tokenizers import vqgan
    from lwmkit.tokenizers.vqgan_quality import evaluate
    from lwmkit.tokenizers.vqgan_train import train

    cfg = _config(args.config, args.set)
    pool, rendered, holdout = _load(args.frames)
    say(f"{jax.devices()[0].device_kind}: {len(pool)} training frames, {len(rendered)} rendered, "
        f"{len(holdout)} held out; budget {args.minutes} min")  # fmt: skip
    budget = args.minutes * 60 - (time.monotonic() - T0) - 60  # a minute for the checkpoint and the eval
    cfg = dataclasses.replace(cfg, steps=max(cfg.steps, 1_000_000), time_budget_s=max(budget, 1.0),
                              fit_steps_to_budget=True)  # fmt: skip
    meta = {"train_inputs": [str(args.frames / "frames.npz")], "holdout": [HOLDOUT],
            "n_train_frames": len(pool), "device": jax.devices()[0].device_kind}  # fmt: skip
    ckpt = train(pool, cfg, args.out, meta, list(rendered))
    report, _ = evaluate(vqgan.load(str(args.out)), holdout)
    result = {"checkpoint": str(args.out), "id": ckpt.id, "steps_done": ckpt.meta["steps_done"],
              "schedule_steps": ckpt.meta["train_config"]["steps"], "train_seconds": ckpt.meta["seconds"],
              "holdout": report.to_dict()}  # fmt: skip
    print(json.dumps(result, indent=2), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write frames.npz (here)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/.vqgan-frames"))
    p.add_argument("--every", type=int, default=2, help="keep every k-th frame of a clip")
    t = sub.add_parser("train", help="train for --minutes and measure the held-out frames (the GPU)")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--frames", type=Path, default=Path("benchmarks/.vqgan-frames"))
    t.add_argument("--minutes", type=float, default=6.0)
    t.add_argument("--out", type=Path, required=True)
    for q in (p, t):
        q.add_argument("--set", action="append", default=[], help="override a config field: key=value")
        q.add_argument("--small", action="store_true", help="a tiny model and data: checks the script on CPU")
    args = ap.parse_args()
    if args.small:  # CPU smoke check: a few-channel model, 128-px crops, few rendered frames
        args.set = ["model.hidden_channels=4", "model.z_channels=8", "model.num_embeddings=64",
                    "model.embed_dim=8", "model.norm_groups=4", "batch_size=4", "synthetic_frames=6",
                    "log_every=5", "large_crop_every=0", *args.set]  # fmt: skip
    if args.cmd == "pack":
        if args.every < 1:
            ap.error("--every must be >= 1")
        pack(args)
    else:
        if args.minutes <= 0:
            ap.error("--minutes must be positive")
        train_timed(args)


if __name__ == "__main__":
    main()
