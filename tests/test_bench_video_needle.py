"""The video needle proof's recipe runs end to end at toy size (benchmarks/bench_video_needle_proof.py
--tiny: vision job -> needle-data --modality video -> pack -> train -> eval); it does not learn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_recipe_runs(tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_video_needle_proof.py"), "--tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("v4", "v8"):
        s = json.loads((out / "needle" / stage / "needle.json").read_text())
        assert s["modality"] == "video" and s["frames"] == [2, 4, 8] and s["cell_counts"] == [[1, 1]] * 3
    assert "lowest accuracy at the final context" in proc.stdout
    assert not (REPO / "docs" / "video-needle-proof-v4.png").exists()  # a tiny run never lands in docs/
