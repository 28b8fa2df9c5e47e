"""Beam's own flags pass through every job untouched: none is mistaken for a typo of a job's flag."""

from __future__ import annotations

import argparse

import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from lwmkit.schemas.flags import parse_job
from lwmkit.schemas.jobs import AuditJob, BooksJob, PackJob, RecountJob, VisionJob

REQUIRED = {
    VisionJob: ["--inputs", "x", "--output", "o"],
    BooksJob: ["--input", "x", "--output", "o"],
    PackJob: ["--mixture", "m", "--stage", "s", "--seq-len", "8", "--out", "o"],
    AuditJob: ["shards"],
    RecountJob: ["--shards", "s", "--recount-output", "r"],
}


def _beam_flags() -> list[str]:
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        cls._add_argparse_args(parser)
    return sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})


@pytest.mark.parametrize("job", list(REQUIRED))
def test_every_beam_flag_passes_through(job):
    beam = _beam_flags()
    assert {"--runner", "--num_workers", "--s3_endpoint_url", "--dask_client_address"} <= set(beam)
    ours = {s for s in ("--runner",) if job in (PackJob, AuditJob)}  # their own --runner picks the runner
    args = [f"{flag}=1" for flag in beam if flag not in ours]
    _, rest = parse_job(job, [*REQUIRED[job], *args], "job")
    assert rest == args
