"""Beam's S3 flags for the bucket access lwmkit does itself.

A job's shards go through Beam's ``FileSystems``, which reads ``--s3_endpoint_url``,
``--s3_access_key_id`` ... from the pipeline options. Three things a job does outside Beam talk
to the bucket through fsspec or botocore instead: the output lease
(:mod:`lwmkit.runtime.lease`), pack's listing and writing of shards, and the checks before a
run. Without this a MinIO user who passes only Beam's flags got a job that wrote its shards
but ran unleased ("could not take the output lease") or could not list its inputs.

:func:`beam_s3_for_fsspec` gives fsspec (and so the lease) the bucket settings the job's Beam
flags name, for the duration of the job: in this process (``fsspec.config.conf``) and in the
worker processes the job starts (``FSSPEC_S3_*`` environment variables, which fsspec reads at
import). A setting given as a Beam flag wins over fsspec's own for that run, so both ends talk
to the same server; everything is put back afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, S3Options

# Beam's S3Options field -> s3fs's keyword (fsspec config key)
_FLAT = {
    "s3_endpoint_url": "endpoint_url",
    "s3_access_key_id": "key",
    "s3_secret_access_key": "secret",
    "s3_session_token": "token",
}


def fsspec_s3_settings(options: PipelineOptions) -> dict[str, Any]:
    """The fsspec ``s3`` settings that ``options``' S3 flags name (only the flags given)."""
    s3 = options.view_as(S3Options)
    out: dict[str, Any] = {key: getattr(s3, flag) for flag, key in _FLAT.items() if getattr(s3, flag)}
    client: dict[str, Any] = {}
    if s3.s3_region_name:
        client["region_name"] = s3.s3_region_name
    if s3.s3_verify is not None:  # Beam: a CA bundle path, or a false-like string to skip checks
        verify = str(s3.s3_verify)
        client["verify"] = False if verify.lower() in ("false", "0", "no") else verify
    if client:
        out["client_kwargs"] = client
    if s3.s3_disable_ssl:
        out["use_ssl"] = False
    return out


def _env_name(key: str) -> str:
    return f"FSSPEC_S3_{key.upper()}"


@contextmanager
def beam_s3_for_fsspec(options: PipelineOptions) -> Iterator[dict[str, Any]]:
    """fsspec's ``s3`` settings overlaid with the Beam flags' for the block; yields what was set."""
    settings = fsspec_s3_settings(options)
    if not settings:
        yield settings
        return
    import fsspec

    saved_conf = fsspec.config.conf.get("s3")
    saved_env = {key: os.environ.get(_env_name(key)) for key in settings}
    merged = dict(saved_conf or {})
    if "client_kwargs" in settings:
        settings = {**settings, "client_kwargs": {**merged.get("client_kwargs", {}), **settings["client_kwargs"]}}
    merged.update(settings)
    fsspec.config.conf["s3"] = merged
    for key, value in settings.items():  # worker processes inherit these (fsspec json-parses values)
        os.environ[_env_name(key)] = json.dumps(value)
    try:
        yield settings
    finally:
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(_env_name(key), None)
            else:
                os.environ[_env_name(key)] = value
