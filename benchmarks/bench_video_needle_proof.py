"""The video needle proof: a small vision model trained stage by stage on lwmkit shards (needle
videos cut from the sample clips' frames, plus the captioned clips) reads the secret number off
a needle frame at every depth of its final context (16 frames, ~4K tokens, sized to 2 CPU
cores), while the same model after stage 1 (2-3 frames) fails beyond it.

    nice -n 10 python benchmarks/bench_video_needle_proof.py --out runs/video-needle-proof
    python benchmarks/bench_video_needle_proof.py --long --out runs/video-needle-proof   # + 32/64 frames (GPU)
    python benchmarks/bench_video_needle_proof.py --tiny --out runs/video-needle-tiny   # minutes: the recipe runs

Every step is lwmkit's real CLI (``sample-data`` -> ``vision`` -> ``needle-data --modality
video`` -> ``pack`` -> ``train`` -> ``eval needle --modality video``) with
``configs/video-needle-proof/`` (``train.yaml`` the proof's stages; ``train-long.yaml`` the same
stages then 32 and 64 frames, ~16K tokens); a re-run resumes (finished steps are skipped,
training resumes from its checkpoint, so ``--long`` in the same folder goes on from the proof).
Prints the grids after stage 1 and after the last stage (the shared report of
``bench_needle_proof.py``) and the cost in CPU-minutes; copies the heatmaps to ``docs/`` (not in
``--tiny`` mode, whose model learns nothing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_needle_proof import _cpu_seconds, _plan, needle_data_args, report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "video-needle-proof"
# (train config, needles config, eval frames, trials, depths, vision fps, frames per clip)
MODES = {
    "full": ("train.yaml", "needles.yaml", "4,8,12,16", 20, "0,25,50,75,100", 8.0, 64),  # ~170 pool frames
    "long": ("train-long.yaml", "needles.yaml", "8,16,32,64", 20, "0,25,50,75,100", 8.0, 64),
    "tiny": ("train-tiny.yaml", "needles-tiny.yaml", "2,4,8", 1, "0,100", 1.0, 8),
}


def write_manifest(out: Path) -> None:
    """The vision job's input manifest: the sample clips with the demo's captions."""
    import json

    from lwmkit.demo import CAPTIONS

    videos = sorted((out / "samples" / "videos").glob("*.mp4"))
    if not videos:
        sys.exit(f"no sample videos under {out / 'samples' / 'videos'}")
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    lines = ["uri,caption"] + [
        f"{v.resolve().as_posix()},{json.dumps(CAPTIONS.get(v.stem, 'A short video clip.'))}" for v in videos
    ]
    (out / "inputs" / "videos.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/video-needle-proof", help="Run folder (a re-run resumes it).")
    ap.add_argument(
        "--tiny", action="store_true", help="Toy sizes (4 -> 8 frames, 2 steps a stage): the recipe runs."
    )
    ap.add_argument(
        "--long", action="store_true", help="Go on to 32 and 64 frames (~16K tokens; hours on a CPU, minutes on a GPU)."
    )
    ap.add_argument("--frames", help="Eval lengths in frames (default: 4,8,12,16; long: 8,16,32,64; tiny: 2,4,8).")
    ap.add_argument("--trials", type=int, help="Haystacks per eval cell (default 20; tiny 1).")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Override a training config field."
    )
    ap.add_argument(
        "--docs", default=str(REPO / "docs"), help="Where the heatmaps are copied (not with --tiny)."
    )
    args = ap.parse_args()
    if args.tiny and args.long:
        sys.exit("--tiny and --long: choose one")
    mode = "tiny" if args.tiny else "long" if args.long else "full"
    train_name, needles_name, frames, trials, depths, fps, per_clip = MODES[mode]

    from lwmkit.demo import Runner, _lwmkit, config_key
    from lwmkit.tokenizers.text import TextTokenizer
    from lwmkit.trainer.needle_video import frames_per_length

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_yaml, needles_yaml = CONFIGS / train_name, CONFIGS / needles_name
    overrides = [f"checkpoint.dir={out / 'checkpoints'}", *args.overrides]  # Orbax wants an absolute path
    stages, ckpt_dir = _plan(train_yaml, overrides)
    r = Runner(out)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    r.step("sample-data", _lwmkit("sample-data", "samples"))
    r.step("inputs", lambda: write_manifest(out))
    r.step(
        "vision",
        _lwmkit(
            "vision",
            "--inputs",
            "inputs/videos.csv",
            "--output",
            "vision",
            "--source",
            "clips",
            "--fps",
            str(fps),
            "--max-frames",
            str(per_clip),
            "--vqgan-batch",
            "2",
            "--num-shards",
            "1",
        ),
    )
    tok = TextTokenizer.load()
    for s in stages:
        opts = needle_data_args(str(needles_yaml), s["name"])
        made = r.step(
            f"needle-data-{s['name']}",
            _lwmkit(
                "needle-data",
                "--modality",
                "video",
                "--records",
                "vision/*.parquet",
                "--seq-len",
                str(s["seq_len"]),
                *opts,
                "--out",
                f"needles/{s['name']}/needles.parquet",
            ),
        )
        # the captioned clips stay inside the stage: at most 12 frames, and fewer than it holds
        clip_frames = max(1, min(12, frames_per_length(tok, (s["seq_len"],), 1)[0] - 1))
        r.step(
            f"pack-{s['name']}",
            _lwmkit(
                "pack",
                "--mixture",
                str(CONFIGS / "mixture.yaml"),
                "--seq-len",
                str(s["seq_len"]),
                "--stage",
                s["name"],
                "--out",
                f"shards/{s['name']}",
                "--set",
                f"sources.0.path=needles/{s['name']}/*.parquet",
                "--set",
                f"sources.1.max_frames={clip_frames}",
            ),
            again=made,
        )
    sets = [x for o in overrides for x in ("--set", o)]
    cpu_train0 = _cpu_seconds()
    key = config_key(train_yaml, needles_yaml)
    r.step("train", _lwmkit("train", str(train_yaml), *sets), key=key)
    train_cpu = _cpu_seconds() - cpu_train0
    grids = {}
    for s in (stages[0], stages[-1]):
        r.step(
            f"eval-{s['name']}",
            _lwmkit(
                "eval",
                "needle",
                "--modality",
                "video",
                "--records",
                "vision/*.parquet",
                "--checkpoint",
                f"{ckpt_dir}/{s['name']}",
                "--frames",
                args.frames or frames,
                "--depths",
                depths,
                "--trials",
                str(args.trials or trials),
                "--batch-size",
                "4",
                "--out",
                f"needle/{s['name']}",
                "--title",
                f"video needle accuracy after stage {s['name']} (trained at {s['seq_len']} tokens)",
            ),
            key=key,
        )
        import json

        grids[s["name"]] = json.loads((out / "needle" / s["name"] / "needle.json").read_text())
        if not args.tiny:
            docs = Path(args.docs)
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(
                out / "needle" / s["name"] / "needle_heatmap.png",
                docs / f"video-needle-proof-{s['name']}.png",
            )
    report(grids, stages, out, train_cpu, time.perf_counter() - t0, _cpu_seconds() - cpu0)
    for name, g in grids.items():
        print(f"frames per length after stage {name}: {dict(zip(g['lengths'], g['frames'], strict=True))}")


if __name__ == "__main__":
    main()
