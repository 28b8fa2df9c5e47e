"""Shared fixtures: real sample inputs, materialised once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lwmkit.schemas import PackedMeta, SegmentInfo


def make_packed_sample(seq_len: int = 12, key: str = "s-000000"):
    """Two segments (5 and 4 tokens) and 3 padding tokens."""
    seg = np.array([1] * 5 + [2] * 4 + [0] * 3, dtype=np.int32)
    pos = np.array(list(range(5)) + list(range(4)) + [0] * 3, dtype=np.int32)
    w = np.array([0, 0.5, 0.5, 0, 0] + [1 / 3] * 3 + [0] + [0] * 3, dtype=np.float32)
    vm = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    arrays = {
        "input_ids": np.arange(seq_len, dtype=np.int32),
        "target_ids": np.arange(1, seq_len + 1, dtype=np.int32),
        "loss_weights": w,
        "segment_ids": seg,
        "positions": pos,
        "vision_mask": vm,
        "target_vision_mask": np.roll(vm, -1),
    }
    meta = PackedMeta(
        key=key,
        seq_len=seq_len,
        segments=(
            SegmentInfo(1, "ex-a", "web", "text", n_tokens=5, n_loss_tokens=2),
            SegmentInfo(2, "ex-b", "clips", "image", n_tokens=4, n_loss_tokens=3, n_vision_tokens=2, n_frames=1),
        ),
    )
    return arrays, meta


@pytest.fixture
def make_packed():
    """Builder of a valid packed sample: two segments (5 and 4 tokens), 3 padding."""
    return make_packed_sample


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample videos and the sample book (real files from PyPI packages)."""
    from lwmkit.runtime.sample_data import materialise

    dest = tmp_path_factory.mktemp("samples")
    materialise(dest)
    return dest


@pytest.fixture(scope="session")
def botchan(sample_dir: Path) -> str:
    return (sample_dir / "books" / "botchan.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def vision_records(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The real vision job's records of two sample clips (1 fps, up to 8 frames each), with the
    shipped VQGAN: the haystack frames of the video needle tests."""
    from lwmkit.pipelines.vision import run

    media = tmp_path_factory.mktemp("needle_media")
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        (media / name).symlink_to(sample_dir / "videos" / name)
    out = tmp_path_factory.mktemp("needle_records") / "records"
    run(["--inputs", str(media / "*.mp4"), "--output", str(out), "--record_shards", "1", "--fps", "1",
         "--max_frames", "8"])
    return [str(p) for p in sorted(out.glob("vision-*.parquet"))]
