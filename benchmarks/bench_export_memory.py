"""Peak host memory of ``lwmkit convert export`` (``--format hf`` or another), against the model's fp32 size;
with ``--import``, of ``lwmkit convert import`` of that export too.

Builds a random-init checkpoint through the project's own path (``init_params`` +
``write_checkpoint``, as the tests do; a vision model with LWM's 8448-id vision vocabulary),
then exports it in a fresh process and reports that process's peak RSS: after its imports
(JAX's own footprint, the floor) and at the end. ``--baseline REV`` also runs the export of an
older commit (extracted with ``git archive``) on the same checkpoint, e.g. the last commit
before the streaming export, and checks that both wrote the same tensors bit for bit.

    python benchmarks/bench_export_memory.py --baseline 184d725      # 186M params, ~1 min here
    python benchmarks/bench_export_memory.py --d-model 2048 --layers 16 --max-shard-size 1GB   # bigger
    python benchmarks/bench_export_memory.py --format llama-hf --baseline 79b170b   # text-only LLaMA / lwm formats
    python benchmarks/bench_export_memory.py --import --baseline f9f51bf   # import too (lazy safetensors reads)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process with the code under test appended to sys.path (appended: the
# repository's top-level `tokenizers/` must not shadow Hugging Face's).
CHILD = """
import json, resource, sys, time
sys.path.append(sys.argv[1])
import jax, numpy, safetensors, lwmkit.trainer.convert_checkpoint  # the floor: what any export imports
from lwmkit.cli import main
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
try:
    main(["convert", *sys.argv[2:]])
except SystemExit as ex:
    assert not ex.code, ex.code
print(json.dumps({"floor": floor, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - t}))
"""

BUILD = """
import sys
sys.path.append(sys.argv[1])
import jax
from lwmkit.schemas import CheckpointConfig, ModelConfig, StageConfig, TrainConfig
from lwmkit.trainer.convert_checkpoint import write_checkpoint
from lwmkit.trainer.model import init_params
d, layers, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = ModelConfig(text_vocab_size=32000, vision_vocab_size=8448, d_model=d, n_layers=layers, n_heads=d // 64,
                    mlp_dim=256 * -(-(8 * d // 3) // 256))
stage = StageConfig(name="bench", seq_len=4096, rope_theta=1e4, data="-", steps=1, batch_size=1)
cfg = TrainConfig(model=model, stages=(stage,), checkpoint=CheckpointConfig(dir=out))
params = init_params(model, jax.random.PRNGKey(0))
print(sum(x.size for x in jax.tree_util.tree_leaves(params)))
write_checkpoint(out, cfg, params, [], note="bench_export_memory")
"""


FORMAT_ARGS = {"hf": ["--no-tokenizer"], "llama-hf": ["--text-only"], "llama-meta": ["--text-only"], "lwm": []}


def export(code: Path, ckpt: str, out: Path, fmt: str, *extra: str) -> dict:
    return convert(code, out, "export", ckpt, "--format", fmt, "--out", str(out), *FORMAT_ARGS[fmt], *extra)


def convert(code: Path, out: Path, *args: str) -> dict:
    """``lwmkit convert *args`` with ``code`` in a fresh process: its peak RSS and wall time."""
    # cwd: a neutral folder (`python -c` puts the cwd first on sys.path: run from the repository,
    # its lwmkit/ would shadow the baseline's)
    done = subprocess.run([sys.executable, "-c", CHILD, str(code), *args], capture_output=True, text=True,
                          cwd=out.parent)  # fmt: skip
    if done.returncode:
        sys.exit(f"convert {args[0]} with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of folder ``a`` equals ``b``'s, read one at a time (either form, any shards);
    an LWM ``streaming_params`` file: the same bytes."""
    import numpy as np
    from safetensors import safe_open

    if a.is_file() or b.is_file():
        return a.read_bytes() == b.read_bytes()

    def where(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "np") as h:
                out.update({k: f for k in h.keys()})
        return out

    wa, wb = where(a), where(b)
    if wa.keys() != wb.keys():
        return False
    for k in wa:
        with safe_open(str(wa[k]), "np") as ha, safe_open(str(wb[k]), "np") as hb:
            if not np.array_equal(ha.get_tensor(k), hb.get_tensor(k)):
                return False
    return True


def same_checkpoints(a: Path, b: Path) -> bool:
    """Two imported checkpoints hold the same parameters, compared a tensor at a time."""
    import numpy as np

    sys.path.append(str(ROOT))
    from lwmkit.trainer.stored_params import StoredParams

    pa, pb = StoredParams(str(a)), StoredParams(str(b))
    return pa.shapes.keys() == pb.shapes.keys() and all(
        np.array_equal(pa(k), pb(k)) for k in pa.shapes
    )


def row(name: str, r: dict, model_bytes: int) -> str:
    gb = 1e9
    return (
        f"| {name} | {r['peak'] / gb:.2f} GB | {r['floor'] / gb:.2f} GB | {(r['peak'] - r['floor']) / gb:.2f} GB | "
        f"{r['peak'] / model_bytes:.2f} | {(r['peak'] - r['floor']) / model_bytes:.2f} | {r['seconds']:.1f} s |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument(
        "--max-shard-size", default="200MB", help="Also export sharded at this size (none: skip)."
    )
    ap.add_argument("--format", default="hf", choices=sorted(FORMAT_ARGS), help="Export format (LLaMA ones: --text-only).")
    ap.add_argument("--baseline", help="A git revision whose export to measure too (e.g. 184d725).")
    ap.add_argument(
        "--import", dest="import_", action="store_true", help="Also measure `convert import` of the export."
    )
    args = ap.parse_args()
    if args.import_ and args.format == "lwm":
        sys.exit("--import: the safetensors formats (an lwm file is read by msgpack, not lazily)")
    with tempfile.TemporaryDirectory(prefix="lwmkit-bench-export-") as tmp:
        tmp_path = Path(tmp)
        ckpt = str(tmp_path / "ck")
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(ROOT), str(args.d_model), str(args.layers), ckpt],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"building the checkpoint failed:\n{done.stderr[-3000:]}")
        n = int(done.stdout.strip().splitlines()[-1])
        model_bytes = 4 * n
        print(
            f"checkpoint: {n / 1e6:.0f}M params, {model_bytes / 1e9:.2f} GB fp32 ({time.perf_counter() - t:.0f} s)"
        )
        fmt = args.format
        runs = {f"{fmt}, this tree": export(ROOT, ckpt + "/bench", tmp_path / "new", fmt)}
        if args.max_shard_size.lower() != "none" and fmt == "hf":
            runs[f"streaming, {args.max_shard_size} shards"] = export(
                ROOT, ckpt + "/bench", tmp_path / "sharded", fmt, "--max-shard-size", args.max_shard_size
            )
        if args.baseline:
            base = tmp_path / "base"
            base.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            runs[f"before ({args.baseline})"] = export(base, ckpt + "/bench", tmp_path / "old", fmt)
            print(
                f"same tensors as {args.baseline}'s export: {same_tensors(tmp_path / 'old', tmp_path / 'new')}"
            )
        if args.import_:
            back = ["--format", fmt, "--no-tokenizer"]
            runs["import, this tree"] = convert(ROOT, tmp_path / "new", "import", str(tmp_path / "new"), *back,
                                                "--out", str(tmp_path / "in-new"))
            if args.baseline:
                runs[f"import before ({args.baseline})"] = convert(base, tmp_path / "new", "import",
                                                                    str(tmp_path / "new"), *back,
                                                                    "--out", str(tmp_path / "in-old"))
                print(f"same imported parameters as {args.baseline}'s import: "
                      f"{same_checkpoints(tmp_path / 'in-new' / 'import', tmp_path / 'in-old' / 'import')}")
        if (tmp_path / "sharded").exists():
            print(
                f"sharded export holds the same tensors: {same_tensors(tmp_path / 'sharded', tmp_path / 'new')}"
            )
        print(
            "\n| export | peak RSS | floor (imports) | peak - floor | peak / model | (peak - floor) / model | wall |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, r in runs.items():
            print(row(name, r, model_bytes))
        pairs = [(f"{fmt}, this tree", f"before ({args.baseline})", "export")]
        pairs += [("import, this tree", f"import before ({args.baseline})", "import")] if args.import_ else []
        for now, then, what in pairs if args.baseline else ():
            old, new = runs[then], runs[now]
            print(
                f"\n{what}: peak RSS after / before: {new['peak'] / old['peak']:.2f}; above the import floor: "
                f"{(new['peak'] - new['floor']) / (old['peak'] - old['floor']):.3f}"
            )


if __name__ == "__main__":
    main()
