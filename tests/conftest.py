"""Shared fixtures: real sample inputs (materialised once per test session), packed samples
and shard sets, an S3-compatible server, and emulated multi-device runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lwmkit.runtime.files import write_atomic
from lwmkit.schemas import (
    Manifest,
    PackedMeta,
    SegmentInfo,
    build_shard,
    encode_sample,
    shard_entry,
    shard_name,
)

# `python -m pytest` from the checkout puts its root on sys.path, where the top-level `tokenizers/`
# folder (lwmkit.tokenizers, reached through the editable install) would shadow Hugging Face's
# `tokenizers` package that `transformers` imports. lwmkit needs no root on the path: drop it.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]


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
            SegmentInfo(
                2, "ex-b", "clips", "image", n_tokens=4, n_loss_tokens=3, n_vision_tokens=2, n_frames=1
            ),
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


# ----------------------------------------------------------------------------- shard sets
MANIFEST_DEFAULTS: dict[str, Any] = {
    "seed": 0, "vqgan_id": None, "mixture": {}, "loss_weighting": "per_example",
    "vision_loss_weight": 0.5, "text_loss_weight": 0.5,
}  # fmt: skip


def write_shard_set(
    root: str, samples: Sequence[tuple[dict, PackedMeta]], *, per_shard: int, **manifest: Any
) -> Manifest:
    """``samples`` -> ``shard-00000.tar``... of ``per_shard`` samples under ``root`` (local or URL),
    then ``manifest.json`` (last, as the pack job writes it) of ``manifest`` fields listing them."""
    entries = []
    for start in range(0, len(samples), per_shard):
        chunk = samples[start : start + per_shard]
        data = build_shard([encode_sample(arrays, meta) for arrays, meta in chunk])
        name = shard_name(len(entries))
        write_atomic(f"{root}/{name}", data)
        entries.append(shard_entry(name, data, len(chunk)))
    result = Manifest(**{**MANIFEST_DEFAULTS, **manifest, "shards": tuple(entries)})
    write_atomic(f"{root}/manifest.json", result.to_json().encode())
    return result


@pytest.fixture(scope="session")
def shard_set_writer() -> Callable[..., Manifest]:
    """:func:`write_shard_set`: ``(root, samples, per_shard=, **manifest fields) -> Manifest``."""
    return write_shard_set


# ----------------------------------------------------------------------------- an S3 bucket
@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    fs: Any  # an fsspec s3 filesystem on it


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto's S3-compatible server on loopback, with credentials that exist only for it. fsspec
    reaches it in this process (fsspec's config) and in subprocesses (FSSPEC_S3_ENDPOINT_URL),
    as a user's MinIO would; Beam jobs take ``endpoint`` as ``--s3_endpoint_url``."""
    import fsspec

    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server._server.server_address
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        yield S3Server(endpoint, fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True))
    finally:
        server.stop()


# ----------------------------------------------------------------------------- emulated devices
@pytest.fixture(scope="session")
def run_on_devices() -> Callable[[str, int], Any]:
    """``(script, n) -> result``: run ``script`` on ``n`` emulated CPU devices (XLA's host
    platform; JAX reads the flag once, at start, so it needs its own process) and return the
    JSON on the last line of its stdout."""

    def run(script: str, n: int = 8) -> Any:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
            "JAX_PLATFORMS": "cpu",
        }
        proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


# ----------------------------------------------------------------------------- vision records
@pytest.fixture(scope="session")
def vision_records(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The real vision job's records of two sample clips (1 fps, up to 8 frames each), with the
    shipped VQGAN: the haystack frames of the video needle tests."""
    from lwmkit.pipelines.vision.job import run

    media = tmp_path_factory.mktemp("needle_media")
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        (media / name).symlink_to(sample_dir / "videos" / name)
    out = tmp_path_factory.mktemp("needle_records") / "records"
    run(["--inputs", str(media / "*.mp4"), "--output", str(out), "--num-shards", "1", "--fps", "1",
         "--max-frames", "8"])
    return [str(p) for p in sorted(out.glob("vision-*.parquet"))]
