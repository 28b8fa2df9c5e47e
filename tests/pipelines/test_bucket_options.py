"""Beam's --s3_* flags alone reach the bucket for what a job does outside Beam (listing, the
output lease, pack's shard writes): a MinIO user with no fsspec config and no AWS variables."""

from __future__ import annotations

import os

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.pipelines.bucket_options import beam_s3_for_fsspec, fsspec_s3_settings
from lwmkit.runtime.lease import LEASE_NAME, BucketLease, LeaseHeld


def test_the_flags_map_to_fsspec_settings_and_are_put_back(monkeypatch):
    import fsspec

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://old:1", "anon": False})
    monkeypatch.delenv("FSSPEC_S3_ENDPOINT_URL", raising=False)
    flags = ["--s3_endpoint_url", "http://minio:9000", "--s3_access_key_id", "123", "--s3_region_name", "eu-1",
             "--s3_verify", "false", "--runner", "DirectRunner"]  # fmt: skip
    options = PipelineOptions(flags)
    assert fsspec_s3_settings(options) == {
        "endpoint_url": "http://minio:9000", "key": "123",
        "client_kwargs": {"region_name": "eu-1", "verify": False},
    }  # fmt: skip
    with beam_s3_for_fsspec(options):
        assert fsspec.config.conf["s3"] == {
            "endpoint_url": "http://minio:9000", "anon": False, "key": "123",
            "client_kwargs": {"region_name": "eu-1", "verify": False},
        }  # fmt: skip
        # what a worker process started now reads at import: the key stays a string
        conf: dict = {}
        fsspec.config.set_conf_env(conf, os.environ)
        assert conf["s3"]["key"] == "123" and conf["s3"]["client_kwargs"]["verify"] is False
    assert fsspec.config.conf["s3"] == {"endpoint_url": "http://old:1", "anon": False}
    assert "FSSPEC_S3_ENDPOINT_URL" not in os.environ and "FSSPEC_S3_KEY" not in os.environ
    with beam_s3_for_fsspec(PipelineOptions(["--runner", "DirectRunner"])) as nothing:
        assert nothing == {} and fsspec.config.conf["s3"]["endpoint_url"] == "http://old:1"


def test_pack_with_only_beams_flags_lists_leases_and_writes_the_bucket(tmp_path, botchan, s3_server, monkeypatch, capsys):
    import fsspec

    from lwmkit.pack_demo import write_text_sources
    from lwmkit.pipelines.pack.job import run_pack

    fs = s3_server.fs
    fs.mkdir("flags-bucket")
    local = write_text_sources(tmp_path / "text", botchan, n_docs=12)
    fs.put(str(local["jsonl"]), "flags-bucket/in/web.jsonl")
    mixture = tmp_path / "m.yaml"
    mixture.write_text(yaml.safe_dump({"sources": [
        {"name": "web", "kind": "text", "path": "s3://flags-bucket/in/*.jsonl", "weight": 1.0}]}))  # fmt: skip
    # the user's machine: no fsspec config, no AWS credentials; only Beam's flags name the server
    monkeypatch.delitem(fsspec.config.conf, "s3")
    for name in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    flags = ["--s3_endpoint_url", s3_server.endpoint, "--s3_access_key_id", "test",
             "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1"]  # fmt: skip
    out = "s3://flags-bucket/shards"
    # another run holds the output on that server: the job must see its lease there and stop
    with beam_s3_for_fsspec(PipelineOptions(flags)), BucketLease(out, "the other run"):
        with pytest.raises(LeaseHeld, match="the other run"):
            run_pack(str(mixture), 512, "flags", out, pipeline_args=flags)
    capsys.readouterr()
    manifest = run_pack(str(mixture), 512, "flags", out, pipeline_args=flags)
    assert "unleased" not in capsys.readouterr().out
    assert manifest.n_sequences > 0 and set(manifest.per_source) == {"web"}
    fs.invalidate_cache()
    assert fs.exists("flags-bucket/shards/manifest.json")
    assert not fs.exists(f"flags-bucket/shards/{LEASE_NAME}")  # released
    assert "s3" not in fsspec.config.conf  # the job put fsspec's config back
