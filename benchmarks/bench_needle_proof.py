"""The long-context proof: a tiny model trained stage by stage on lwmkit shards retrieves
needles at every depth of its final context, while the same model after stage 1 alone does
not beyond stage 1's length.

    nice -n 10 python benchmarks/bench_needle_proof.py --out runs/needle-proof
    nice -n 10 python benchmarks/bench_needle_proof.py --configs configs/multineedle-proof \
        --out runs/multineedle-proof --eval-needles 4 --eval-retrieve 2 --goal 0.9

Every step is lwmkit's real CLI (``needle-data`` -> ``pack`` -> ``train`` -> ``eval needle``)
with ``configs/longctx-proof/`` (or ``--configs DIR``: train.yaml, needles.yaml, mixture.yaml); a re-run resumes (finished steps are skipped, training
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
    from lwmkit.runtime.config import load_config
    from lwmkit.schemas import TrainConfig

    cfg = load_config(TrainConfig, str(train_yaml), overrides)
    return [{"name": s.name, "seq_len": s.seq_len} for s in cfg.stages], cfg.checkpoint.dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(CONFIGS), help="Recipe folder: train.yaml, needles.yaml, mixture.yaml.")
    ap.add_argument("--out", default="runs/needle-proof", help="Run folder (a re-run resumes it).")
    ap.add_argument("--needles", default=None,
                    help="The needle-data options of each stage (YAML: `all` and `stages.<name>`; default CONFIGS/needles.yaml).")
    ap.add_argument("--eval-needles", type=int, default=1, help="Needles per eval haystack.")
    ap.add_argument("--eval-retrieve", type=int, default=1, help="Needles asked per eval haystack.")
    ap.add_argument("--goal", type=float, default=0.95, help="Least accuracy in every cell of the final context.")
    ap.add_argument("--lengths", default="256,1K,2K,4K", help="Eval context lengths.")
    ap.add_argument("--depths", default="0,25,50,75,100", help="Eval needle depths (percent).")
    ap.add_argument("--trials", type=int, default=20, help="Haystacks per eval cell.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Override a training config field.")
    ap.add_argument("--docs", default=str(REPO / "docs"), help="Where the heatmaps are copied.")
    args = ap.parse_args()

    from lwmkit.demo import Runner, _lwmkit, config_key

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    configs = Path(args.configs).resolve()
    needles_yaml = args.needles or str(configs / "needles.yaml")
    prefix = "needle-proof" if configs.name == "longctx-proof" else configs.name  # heatmap names in docs/
    train_yaml = configs / "train.yaml"
    # Orbax wants an absolute checkpoint path; the config's is relative to the run folder.
    overrides = [f"checkpoint.dir={out / 'checkpoints'}", *args.overrides]
    stages, ckpt_dir = _plan(train_yaml, overrides)
    data = [needle_data_args(needles_yaml, s["name"]) for s in stages]
    r = Runner(out)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for s, opts in zip(stages, data, strict=True):
        made = r.step(f"needle-data-{s['name']}", _lwmkit(
            "needle-data", "--seq-len", str(s["seq_len"]), *opts, "--out", f"needles/{s['name']}/needles.parquet"))
        r.step(f"pack-{s['name']}", _lwmkit(
            "pack", "--mixture", str(configs / "mixture.yaml"), "--seq-len", str(s["seq_len"]), "--stage", s["name"],
            "--out", f"shards/{s['name']}", "--set", f"sources.0.path=needles/{s['name']}/*.parquet"), again=made)
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
            "--needles", str(args.eval_needles), "--retrieve", str(args.eval_retrieve),
            "--title", f"needle accuracy after stage {s['name']} (trained at {s['seq_len']} tokens)"), key=key)
        grids[s["name"]] = json.loads((out / "needle" / s["name"] / "needle.json").read_text())
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "needle" / s["name"] / "needle_heatmap.png", docs / f"{prefix}-{s['name']}.png")
        shutil.copyfile(out / "needle" / s["name"] / "needle_digits_heatmap.png",
                        docs / f"{prefix}-{s['name']}-digits.png")
    report(grids, stages, out, train_cpu, time.perf_counter() - t0, _cpu_seconds() - cpu0, args.goal)


# needle-data options in the order the bench passes them (the _IF_SET ones only where set)
_ALWAYS = {"examples": None, "needles-max": 4, "min-fill": 0.3, "repeat-share": 0.0, "far-share": 0.0}
_IF_SET = {"far-fill": float, "far-depth": float, "far-needles": int, "needles-min": int}


def needle_data_args(path: str, stage: str) -> list[str]:
    """``lwmkit needle-data`` options for ``stage`` from the needles YAML (``all`` + ``stages.<stage>``)."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    stages = spec.get("stages") or {}
    if stage not in stages:
        sys.exit(f"{path}: no needle-data options for stage '{stage}' (stages there: {', '.join(stages) or 'none'})")
    opts = {**(spec.get("all") or {}), **(stages[stage] or {})}
    known = (*_ALWAYS, *_IF_SET, "seed")
    unknown = sorted(set(opts) - set(known))
    if unknown:
        sys.exit(f"{path}: stage '{stage}': unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if opts.get("examples") is None:
        sys.exit(f"{path}: stage '{stage}' needs 'examples'")
    out = []
    for name, default in _ALWAYS.items():
        value = opts.get(name, default)
        out += [f"--{name}", str(float(value) if isinstance(default, float) else int(value))]
    out += [x for name, kind in _IF_SET.items() if name in opts for x in (f"--{name}", str(kind(opts[name])))]
    return [*out, "--seed", str(int(opts.get("seed", 0)))]


def report(grids: dict, stages: list[dict], out: Path, train_cpu: float, wall: float, cpu: float,
           goal: float = 0.95) -> None:
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
          f"({'PASS' if final_ok >= goal else 'FAIL'}: the goal is >= {goal:g} at every depth)")
    for name, g in grids.items():
        if g.get("recall_by_needle") and len(g["recall_by_needle"]) > 1:
            print(f"recall per asked needle after stage {name}: " + ", ".join(f"{r:.2f}" for r in g["recall_by_needle"]))
    print(f"training cost (this run's steps only; 0 if resumed from finished): {train_cpu / 60:.1f} CPU-minutes; "
          f"whole script {cpu / 60:.1f} CPU-minutes, {wall / 60:.1f} wall-minutes")


if __name__ == "__main__":
    main()
