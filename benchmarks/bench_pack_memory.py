"""Peak memory of ``lwmkit pack`` on one huge single-line document (issue 17: bounded memory).

Writes a JSONL text source holding one single-line document of ``--mb`` MB (real words from
the sample book, shuffled, no newline) plus a few ordinary documents, packs it with
``overlong: truncate`` at ``--seq-len``, and reports the pack process's peak RSS (the whole
process tree: ``RUSAGE_CHILDREN``) and wall time. The goal is a peak that does not grow with
the longest document: under 1 GB for 50 MB.

    python benchmarks/bench_pack_memory.py                 # 50 MB, seq_len 4096 (~1 min here)
    python benchmarks/bench_pack_memory.py --mb 200        # bigger
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_inputs(root: Path, mb: int, seed: int = 0) -> Path:
    from lwmkit.runtime.sample_data import materialise

    samples = root / "samples"
    materialise(samples)
    words = (samples / "books" / "botchan.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    parts, size = [], 0
    while size < mb * 1_000_000:
        chunk = " ".join(rng.choices(words, k=10_000))
        parts.append(chunk)
        size += len(chunk) + 1
    huge = " ".join(parts)[: mb * 1_000_000]
    src = root / "web.jsonl"
    with src.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"text": huge}) + "\n")
        for i in range(20):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=300 + 50 * i))}) + "\n")
    del huge, parts
    mixture = root / "mixture.yaml"
    mixture.write_text(
        f"seed: 0\noverlong: truncate\nsources:\n  - {{name: web, kind: text, path: '{src}', weight: 1.0}}\n"
    )
    return mixture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50, help="Size of the single-line document, MB.")
    ap.add_argument("--seq-len", type=int, default=4096)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lwmkit-bench-packmem-") as tmp:
        root = Path(tmp)
        mixture = write_inputs(root, args.mb)
        cmd = [sys.executable, "-c", "from lwmkit.cli import main; main()", "pack", "--mixture", str(mixture),
               "--seq-len", str(args.seq_len), "--stage", "mem", "--out", str(root / "out")]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
        if proc.returncode != 0:
            sys.exit(f"pack failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        manifest = json.loads((root / "out" / "manifest.json").read_text())
    print(json.dumps({
        "document_mb": args.mb, "seq_len": args.seq_len, "peak_rss_mb": round(peak_kb / 1024, 1),
        "wall_s": round(wall, 1), "n_sequences": manifest["n_sequences"],
        "truncated": manifest["policy_counts"].get("truncated.web", 0),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
