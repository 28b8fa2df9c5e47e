"""Every data job's flags are generated from its typed config (schemas/jobs.py), in one style."""

from __future__ import annotations

import dataclasses

import pytest

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.flags import help_text, parse_job
from lwmkit.schemas.jobs import AuditJob, BooksJob, PackJob, RecountJob, VisionJob

JOBS = (VisionJob, BooksJob, PackJob, AuditJob, RecountJob)


def test_dashed_flags_make_the_job_and_the_rest_goes_to_beam():
    job, beam = parse_job(
        VisionJob,
        ["--inputs", "v/*.mp4", "--output", "out/", "--max-frames", "8", "--fps", "1", "--no-fallback",
         "--runner", "DirectRunner", "--direct_num_workers=2"],
        "vision",
    )  # fmt: skip
    assert (job.inputs, job.output, job.max_frames, job.fps, job.no_fallback) == (
        "v/*.mp4",
        "out",
        8,
        1.0,
        True,
    )
    assert beam == ["--runner", "DirectRunner", "--direct_num_workers=2"]


def test_underscored_and_old_names_still_work():
    new, _ = parse_job(
        VisionJob, ["--inputs", "x", "--output", "o", "--num-shards", "3", "--source", "clips"], "v"
    )
    old, _ = parse_job(
        VisionJob, ["--inputs", "x", "--output", "o", "--record_shards", "3", "--source_name", "clips"], "v"
    )
    assert new == old
    books, _ = parse_job(
        BooksJob, ["--input", "a.txt", "--input", "b.txt", "--output", "o", "--chunk_tokens", "64"], "b"
    )
    assert books.input == ("a.txt", "b.txt") and books.chunk_tokens == 64


def test_help_lists_dashed_flags_with_defaults_and_required_and_hides_aliases():
    text = help_text(BooksJob, "lwmkit books", "desc")
    assert "--chunk-tokens INT" in text and "(default: 1000)" in text
    assert "--output TEXT" in text and "(required)" in text
    assert "--chunk_tokens" not in text and "--record_shards" not in help_text(VisionJob, "v", "d")
    assert "{replace,strict}" in text


@pytest.mark.parametrize(
    ("job", "argv", "message"),
    [
        (BooksJob, ["--output", "o"], "missing required flag: --input"),
        (PackJob, ["--mixture", "m.yaml"], "missing required flag: --stage"),
        (BooksJob, ["--input", "a", "--output", "o", "--chunk-tokens", "ten"], "invalid int value: 'ten'"),
        (
            BooksJob,
            ["--input", "a", "--output", "o", "--chunk-tokens", "8"],
            "'--chunk-tokens': must be >= 16",
        ),
        (BooksJob, ["--input", "a", "--output", "o", "--encoding", "klingon"], "unknown encoding 'klingon'"),
        (BooksJob, ["--input", "a", "--output", "o", "--chunk-token", "500"], "did you mean --chunk-tokens?"),
        # closest to the hidden underscored alias, but the suggestion is the flag --help shows
        (BooksJob, ["--input", "a", "--output", "o", "--chunk_token", "500"], "did you mean --chunk-tokens?"),
        (VisionJob, ["--output", "o"], "'--inputs': is required (--inputs) unless --retry-dead-letters"),
        (VisionJob, ["--inputs", "x", "--output", "o", "--decoder", "vlc"], "invalid choice: 'vlc'"),
        (PackJob, ["--mixture", "m", "--stage", "s", "--out", "o"], "give --seq-len, or --train"),
        (AuditJob, ["--tolerance", "0.1"], "the following arguments are required: SHARDS"),
    ],
)
def test_bad_flags_are_one_clear_contract_error(job, argv, message):
    with pytest.raises(ContractError) as err:
        parse_job(job, argv, "lwmkit")
    assert message in str(err.value)


def test_audit_takes_its_shards_positionally_and_a_short_quiet():
    job, beam = parse_job(
        AuditJob, ["s3://b/set", "-q", "--json", "-", "--runner", "local", "--x_beam=1"], "audit"
    )
    assert (job.shards, job.quiet, job.json, job.runner, beam) == (
        "s3://b/set",
        True,
        "-",
        "local",
        ["--x_beam=1"],
    )


@pytest.mark.parametrize("job", JOBS)
def test_every_field_of_a_job_is_a_documented_flag(job):
    for f in dataclasses.fields(job):
        spec = f.metadata.get("flag")
        assert spec is not None and spec.help, f"{job.__name__}.{f.name} has no flag help"
