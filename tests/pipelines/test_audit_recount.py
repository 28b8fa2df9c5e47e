"""The recount itself: exact against a writer that knows what it wrote, the same as a Beam job
and from a bucket, bounded tallies that merge associatively."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwmkit.pipelines.audit.compare import EXIT_DRIFT, EXIT_OK
from lwmkit.pipelines.audit.job import (
    AuditConfig,
    audit,
    open_shard_set,
    recount,
    recount_local,
    recount_shard,
)
from lwmkit.pipelines.audit.stats import Histogram, Recount, bin_index, bin_lower
from lwmkit.schemas import Manifest, MixtureConfig, SourceConfig


def test_recount_is_exact(audit_set):
    root, m = audit_set
    rc = recount_local(open_shard_set(root))
    assert (rc.n_sequences, rc.tokens, rc.padding_tokens) == (m.n_sequences, rc.tokens, m.padding_tokens)
    for name, t in rc.by_source().items():
        want = m.per_source[name]
        assert (t.examples, t.tokens, t.loss_tokens, t.vision_tokens) == (
            want.examples,
            want.tokens,
            want.loss_tokens,
            want.vision_tokens,
        )
        # per-example weighting: each example's weights sum to 1, so a source's weight = its examples
        assert t.loss_weight == pytest.approx(want.examples, rel=1e-5)
    by_mod = rc.by_modality()
    assert by_mod["image"].frames == by_mod["image"].examples  # one frame per image
    assert by_mod["video"].frames >= 2 * by_mod["video"].examples
    assert rc.example_tokens["web"].count == m.per_source["web"].examples
    assert 8 <= rc.example_tokens["web"].min <= rc.example_tokens["web"].max <= 40
    assert rc.sequence_tokens.count == rc.segments_per_sequence.count == m.n_sequences
    assert rc.sequence_tokens.total == rc.tokens


def test_undeclared_and_missing_sources_drift(audit_set):
    root, _ = audit_set
    mixture = MixtureConfig(sources=(
        SourceConfig("web", "text", "x", 0.6), SourceConfig("pics", "image_text", "x", 0.2),
        SourceConfig("books", "text", "x", 0.2),
    ))  # fmt: skip
    result = audit(root, mixture=mixture)
    assert result.exit_code == EXIT_DRIFT
    assert {f.subject for f in result.errors("undeclared_source")} == {"clips"}
    assert "books" in {f.subject for f in result.errors("drift")}  # declared, absent: 0% vs 20%


def test_a_set_without_a_declared_mixture_is_not_drift_checked(audit_set):
    root, m = audit_set
    unmixed = Manifest(**{**m.__dict__, "mixture": {}})
    (Path(root) / "manifest.json").write_text(unmixed.to_json())
    result = audit(root)
    assert result.exit_code == EXIT_OK and result.targets_from is None
    assert [f.kind for f in result.findings] == ["no_mixture"]
    assert {r.status for r in result.sources} == {"unchecked"}


@pytest.mark.slow
def test_beam_job_gives_the_local_recount(audit_set):
    root, _ = audit_set
    ref = open_shard_set(root)
    local = recount_local(ref)
    beam = recount(ref, AuditConfig(runner="DirectRunner"), ["--direct_num_workers=2"])
    assert _rounded(local) == _rounded(beam)


@pytest.mark.slow
def test_audit_reads_a_bucket(tmp_path, audit_set_writer, s3_server):
    fs = s3_server.fs
    fs.mkdir("audit-bucket")
    audit_set_writer(
        "s3://audit-bucket/stage", {"web": ("text", 12, 8, 30), "pics": ("image", 6, 12, 20)}, per_shard=1
    )
    fs.invalidate_cache()
    assert audit("s3://audit-bucket/stage").exit_code == EXIT_OK
    fs.rm("s3://audit-bucket/stage/shard-00001.tar")
    result = audit("s3://audit-bucket/stage/manifest.json")
    assert [f.subject for f in result.errors("missing_shard")] == ["shard-00001.tar"]


@given(st.lists(st.integers(0, 3_000_000), max_size=60), st.lists(st.integers(0, 3_000_000), max_size=60))
@settings(max_examples=60, deadline=None)
def test_histograms_merge_exactly_and_bins_cover_their_values(xs, ys):
    a, b, both = Histogram(), Histogram(), Histogram()
    a.add(xs)
    b.add(ys)
    both.add(xs + ys)
    assert a.merge(b) == both == b.merge(a)
    for v, i in zip(xs, bin_index(np.array(xs, dtype=np.int64)).tolist(), strict=True):
        assert bin_lower(i) <= v < bin_lower(i + 1)
        assert bin_lower(i + 1) - bin_lower(i) <= max(1, v // 4 + 1)  # bins stay within ~25%
    if xs:
        assert min(xs) <= a.quantile(0.5) <= max(xs) and a.quantile(1.0) == max(xs)


def _rounded(rc: Recount) -> dict:
    """The recount as a dict with loss-weight sums rounded (floats summed in another order)."""
    d = rc.to_dict()
    for mods in d["slices"].values():
        for t in mods.values():
            t["loss_weight"] = round(t["loss_weight"], 6)
    return d


def test_recounts_merge_associatively(audit_set):
    root, _ = audit_set
    ref = open_shard_set(root)
    parts = [recount_shard(ref, e) for e in ref.shards]
    left = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))
    right = Recount().merge(parts[3]).merge(parts[2]).merge(parts[0]).merge(parts[1])
    assert _rounded(left) == _rounded(right) == _rounded(recount_local(ref))
    assert Recount.from_dict(left.to_dict()).to_dict() == left.to_dict()


def test_a_shard_is_streamed_not_loaded(tmp_path, audit_set_writer):
    """Peak memory while recounting a shard stays a fraction of the shard: samples are read
    one at a time off the stream, never the whole tar."""
    import tracemalloc

    root = str(tmp_path / "big")
    m = audit_set_writer(root, {"web": ("text", 16, 12_000, 16_000)}, seq_len=16_384, per_shard=16)
    assert len(m.shards) == 1
    ref = open_shard_set(root)
    tracemalloc.start()
    try:
        rc = recount_shard(ref, ref.shards[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc.shards[0].status == "ok" and rc.n_sequences == 16
    per_sample = m.shards[0].size_bytes / 16
    assert peak < 6 * per_sample, (peak, per_sample)  # a few samples' worth (raw + decoded), not 16
