"""The vision job on other runners and filesystems: multi-process DirectRunner reading and writing
an S3-compatible bucket (moto's server on loopback) must produce the same records as the
in-process DirectRunner. (Beam's Dask runner: tests/pipelines/test_dask_runner.py.)"""

from __future__ import annotations

import io
import shutil

import pyarrow.parquet as pq
import pytest

from lwmkit.pipelines.vision.job import run

pytestmark = pytest.mark.slow
INPUTS = ("image.png", "wide.mp4", "random.mp4")  # two good, one bad: dead letters cross runners too


def _local_rows(out) -> dict[str, list]:
    rows = []
    for path in sorted(out.glob("vision-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vision_media, vqgan_checkpoint):
    """In-process DirectRunner output over INPUTS (the baseline every runner must match)."""
    media = tmp_path_factory.mktemp("runner_media")
    for name in INPUTS:
        shutil.copy(vision_media[name], media / name)
    out = tmp_path_factory.mktemp("ref") / "out"
    run(["--inputs", str(media / "*"), "--output", str(out), "--vqgan", vqgan_checkpoint, "--fps", "1",
         "--num-shards", "2", "--max-failure-ratio", "0.5"])  # fmt: skip
    return media, out


@pytest.fixture
def media_bucket(s3_server):
    """Bucket ``media`` on the shared S3 server; (endpoint, boto3 client)."""
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket="media")
    return s3_server.endpoint, client


def test_multiprocess_direct_runner_on_an_s3_bucket(reference, media_bucket, vqgan_checkpoint):
    media, ref_out = reference
    endpoint, client = media_bucket
    for name in INPUTS:
        client.upload_file(str(media / name), "media", f"in/{name}")
    s3 = ["--s3_endpoint_url", endpoint, "--s3_access_key_id", "test", "--s3_secret_access_key", "test",
          "--s3_region_name", "us-east-1"]  # fmt: skip
    summary = run(["--inputs", "s3://media/in/*", "--output", "s3://media/out", "--vqgan", vqgan_checkpoint,
                   "--fps", "1", "--num-shards", "2", "--max-failure-ratio", "0.5", *s3,
                   "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])  # fmt: skip
    assert summary.attempted == 3 and summary.failed == 1 and summary.records == 2
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="media", Prefix="out/")["Contents"])
    assert keys == ["out/dead_letters/vision.jsonl", "out/vision-00000-of-00002.parquet",
                    "out/vision-00001-of-00002.parquet", "out/vision_job.json"]  # fmt: skip
    rows = {}
    for key in keys:
        if key.endswith(".parquet"):
            body = client.get_object(Bucket="media", Key=key)["Body"].read()
            rows.update({r["id"]: r for r in pq.read_table(io.BytesIO(body)).to_pylist()})
    ref = _local_rows(ref_out)
    # same codes and frames; only the uri (and so the id) names the bucket instead of the folder
    by_name = {r["uri"].rsplit("/", 1)[1]: r for r in rows.values()}
    for r in ref.values():
        got = by_name[r["uri"].rsplit("/", 1)[1]]
        assert (
            got["tokens"] == r["tokens"]
            and got["n_frames"] == r["n_frames"]
            and got["uri"].startswith("s3://media/in/")
        )
    letters = client.get_object(Bucket="media", Key="out/dead_letters/vision.jsonl")["Body"].read().decode()
    assert "s3://media/in/random.mp4" in letters and "UnreadableMedia" in letters
