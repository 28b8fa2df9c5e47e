"""The long-context proof: a tiny model trained stage by stage on lwmkit shards retrieves
needles at every depth of its final context, while the same model after stage 1 alone does
not beyond stage 1's length.

    nice -n 10 python benchmarks/bench_needle_proof.py --out runs/needle-proof

Every step is lwmkit's real CLI (``needle-data`` -> ``pack`` -> ``train`` -> ``eval needle``)
with ``configs/longctx-proof/``; a re-run resumes (finished steps are skipped, training
resumes from its checkpoint). Prints the accuracy grids after stage 1 (the baseline, measured
in the same run) and after the last stage, the ratio at lengths beyond stage 1's, and the
training cost in CPU-minutes; copies the heatmaps to ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "longctx-proof"


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _plan(train_yaml: Path, overrides: list[str]) -> tuple[list[dict], str]:
    """The stages (name, seq_len) and the checkpoint folder, after the overrides."""
    from lwmkit.config import load_config
    from lwmkit.schemas import TrainConfig

    cfg = load_config(TrainConfig, str(train_yaml), overrides)
    return [{"name": s.name, "seq_len": s.seq_len} for s in cfg.stages], cfg.checkpoint.dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/needle-proof", help="Run folder (a re-run resumes it).")
    ap.add_argument("--examples", default="30000,2000,1200,600,1200,800,800", help="Needle haystacks per stage, comma-separated.")
    ap.add_argument("--needles-max", type=int, default=1, help="Most needles per training haystack (the eval asks one).")
    ap.add_argument("--repeat-share", default="0.5,0.2,0.2,0.2,0.2,0.2,0.2",
                    help="Share of repeat-the-passage chats per stage (dense copy practice), comma-separated.")
    ap.add_argument("--min-fill", default="0.3,0.3,0.3,0.9,0.3,0.3,0.3",
                    help="Shortest haystack as a share of the stage length, per stage, comma-separated.")
    ap.add_argument("--far-share", default="0,0,0,0,0.4,0.4,0.5",
                    help="Share of needle haystacks that are far needles (context-filling, needle near the start), per stage.")
    ap.add_argument("--data-seed", default="0,0,0,0,0,1,2",
                    help="needle-data seed per stage (a stage drawn like an earlier one of the same length gets fresh data).")
    ap.add_argument("--lengths", default="256,1K,2K,4K", help="Eval context lengths.")
    ap.add_argument("--depths", default="0,25,50,75,100", help="Eval needle depths (percent).")
    ap.add_argument("--trials", type=int, default=20, help="Haystacks per eval cell.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Override a training config field.")
    ap.add_argument("--docs", default=str(REPO / "docs"), help="Where the heatmaps are copied.")
    args = ap.parse_args()

    from lwmkit.demo import Runner, _lwmkit, config_key

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_yaml = CONFIGS / "train.yaml"
    # Orbax wants an absolute checkpoint path; the config's is relative to the run folder.
    overrides = [f"checkpoint.dir={out / 'checkpoints'}", *args.overrides]
    stages, ckpt_dir = _plan(train_yaml, overrides)
    examples = [int(x) for x in args.examples.split(",")]
    repeat = [float(x) for x in args.repeat_share.split(",")]
    fills = [float(x) for x in args.min_fill.split(",")]
    fars = [float(x) for x in args.far_share.split(",")]
    seeds = [int(x) for x in args.data_seed.split(",")]
    if not len(examples) == len(repeat) == len(fills) == len(fars) == len(seeds) == len(stages):
        sys.exit(f"--examples, --repeat-share, --min-fill, --far-share and --data-seed need one value per stage "
                 f"({len(stages)})")
    r = Runner(out)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for s, n, share, fill, far, seed in zip(stages, examples, repeat, fills, fars, seeds, strict=True):
        r.step(f"needle-data-{s['name']}", _lwmkit(
            "needle-data", "--seq-len", str(s["seq_len"]), "--examples", str(n), "--needles-max", str(args.needles_max),
            "--min-fill", str(fill), "--repeat-share", str(share), "--far-share", str(far), "--seed", str(seed), "--out", f"needles/{s['name']}/needles.parquet"))
        r.step(f"pack-{s['name']}", _lwmkit(
            "pack", "--mixture", str(CONFIGS / "mixture.yaml"), "--seq-len", str(s["seq_len"]), "--stage", s["name"],
            "--out", f"shards/{s['name']}", "--set", f"sources.0.path=needles/{s['name']}/*.parquet"))
    sets = [x for o in overrides for x in ("--set", o)]
    cpu_train0 = _cpu_seconds()
    key = config_key(train_yaml)  # a changed recipe trains (new or changed stages) and evaluates again
    r.step("train", _lwmkit("train", str(train_yaml), *sets), key=key)
    train_cpu = _cpu_seconds() - cpu_train0
    grids = {}
    for s in (stages[0], stages[-1]):
        r.step(f"eval-{s['name']}", _lwmkit(
            "eval", "needle", "--checkpoint", f"{ckpt_dir}/{s['name']}", "--lengths", args.lengths,
            "--depths", args.depths, "--trials", str(args.trials), "--out", f"needle/{s['name']}",
            "--title", f"needle accuracy after stage {s['name']} (trained at {s['seq_len']} tokens)"), key=key)
        grids[s["name"]] = json.loads((out / "needle" / s["name"] / "needle.json").read_text())
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "needle" / s["name"] / "needle_heatmap.png", docs / f"needle-proof-{s['name']}.png")
        shutil.copyfile(out / "needle" / s["name"] / "needle_digits_heatmap.png",
                        docs / f"needle-proof-{s['name']}-digits.png")
    report(grids, stages, out, train_cpu, time.perf_counter() - t0, _cpu_seconds() - cpu0)


def report(grids: dict, stages: list[dict], out: Path, train_cpu: float, wall: float, cpu: float) -> None:
    first, last = stages[0], stages[-1]
    print(f"\nneedle accuracy (rows: context length, columns: depth %), {out}")
    for name, g in grids.items():
        for key, what in (("accuracy", "exact retrieval"), ("digit_accuracy", "digit accuracy")):
            print(f"after stage {name} (trained at {g['trained_seq_len']}), {what}:")
            print("  length  " + " ".join(f"{d:>6g}" for d in g["depths"]))
            for n, row in zip(g["lengths"], g[key], strict=True):
                print(f"  {n:>6}  " + " ".join(f"{a:6.2f}" for a in row))
    beyond = [i for i, n in enumerate(grids[first["name"]]["lengths"]) if n > first["seq_len"]]
    final_ok = min(min(r) for r in grids[last["name"]]["accuracy"][-1:])
    base = [a for i in beyond for a in grids[first["name"]]["accuracy"][i]]
    fin = [a for i in beyond for a in grids[last["name"]]["accuracy"][i]]
    mean_base = sum(base) / len(base) if base else float("nan")
    mean_fin = sum(fin) / len(fin) if fin else float("nan")
    print(f"\nbeyond {first['seq_len']} tokens, exact retrieval: after stage {first['name']} {mean_base:.3f}, "
          f"after stage {last['name']} {mean_fin:.3f} (ratio {mean_fin / max(mean_base, 1e-9):.1f}x)")
    for name, g in grids.items():
        by_len = {n: sum(r) / len(r) for n, r in zip(g["lengths"], g["digit_accuracy"], strict=True)}
        print(f"digit accuracy by length after stage {name}: " + ", ".join(f"{n}: {a:.2f}" for n, a in by_len.items()))
    print(f"lowest accuracy at the final context ({last['seq_len']}): {final_ok:.2f} "
          f"({'PASS' if final_ok >= 0.95 else 'FAIL'}: the goal is >= 0.95 at every depth)")
    print(f"training cost (this run's steps only; 0 if resumed from finished): {train_cpu / 60:.1f} CPU-minutes; "
          f"whole script {cpu / 60:.1f} CPU-minutes, {wall / 60:.1f} wall-minutes")


if __name__ == "__main__":
    main()
