"""The audit against shard sets written by the real pack job: faithful, skewed, tampered,
short a shard, and with a manifest edited to lie."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lwmkit.pipelines.audit.compare import EXIT_DRIFT, EXIT_INTEGRITY, EXIT_OK
from lwmkit.pipelines.audit.job import AuditConfig, audit, open_shard_set
from lwmkit.runtime.config import load_config
from lwmkit.schemas import ContractError, Manifest, MixtureConfig, TokenCounts, load_manifest

TARGET = {"prose": 0.4, "talk": 0.2, "images": 0.2, "videos": 0.2}
SKEWED = {"prose": 0.6, "talk": 0.1, "images": 0.2, "videos": 0.1}
SEQ_LEN = 2048


@pytest.fixture(scope="module")
def packed(tmp_path_factory, pack_inputs) -> dict:
    """One faithful set and one packed from a skewed mixture (the pack job runs twice per module)."""
    from lwmkit.pipelines.pack.job import run_pack

    root = tmp_path_factory.mktemp("packed")
    out = {"target_yaml": pack_inputs(TARGET, root / "target.yaml")}
    out["faithful"] = str(root / "faithful")
    run_pack(out["target_yaml"], SEQ_LEN, "s2k", out["faithful"])
    out["skewed"] = str(root / "skewed")
    run_pack(pack_inputs(SKEWED, root / "skewed.yaml"), SEQ_LEN, "s2k", out["skewed"])
    return out


def _copy(src: str, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(src, dest)
    return dest


def test_faithful_set_passes_and_the_recount_equals_the_manifest(packed):
    mixture = load_config(MixtureConfig, packed["target_yaml"])
    result = audit(packed["faithful"], mixture=mixture, mixture_from="target.yaml")
    assert result.exit_code == EXIT_OK, result.findings
    assert [f for f in result.findings if f.severity == "error"] == []
    m, rc = load_manifest(f"{packed['faithful']}/manifest.json"), result.recount
    assert len(m.shards) > 1 and all(s.status == "ok" for s in rc.shards)
    assert [s.name for s in rc.shards] == [s.name for s in m.shards]
    assert (rc.n_sequences, rc.padding_tokens) == (m.n_sequences, m.padding_tokens)
    assert rc.packing_efficiency == pytest.approx(m.packing_efficiency)
    for name, tally in rc.by_source().items():
        assert (
            TokenCounts(tally.examples, tally.tokens, tally.loss_tokens, tally.vision_tokens)
            == m.per_source[name]
        )
    assert set(rc.by_modality()) == {"text", "image", "video"} == set(m.per_modality)
    rows = {r.name: r for r in result.sources}
    assert set(rows) == set(TARGET)
    for name, target in TARGET.items():
        assert rows[name].target == pytest.approx(target)
        assert abs(rows[name].share - target) <= 0.02 and rows[name].status == "ok"
    # vision: every image is one frame; the sample videos have three frames each
    assert rc.frames_per_example["images"].max == 1 and rc.frames_per_example["videos"].min == 3
    assert rows["prose"].tally.vision_tokens == 0 and rows["images"].tally.vision_tokens > 0


def test_the_recorded_mixture_is_the_default_target(packed):
    result = audit(packed["faithful"])
    assert result.targets_from == "manifest" and result.exit_code == EXIT_OK


def test_skewed_set_fails_naming_the_drifting_sources(packed):
    mixture = load_config(MixtureConfig, packed["target_yaml"])
    result = audit(packed["skewed"], mixture=mixture, mixture_from="target.yaml")
    assert result.exit_code == EXIT_DRIFT
    drifting = {f.subject for f in result.errors("drift")}
    assert drifting == {"prose", "talk", "videos"}  # images kept its 20% share
    assert "target 40.0%" in next(f.message for f in result.errors("drift") if f.subject == "prose")
    assert any(f.kind == "mixture_differs" for f in result.findings)  # packed from another mixture
    # Integrity is fine: the skewed set is exactly what its own manifest says.
    assert not result.errors("corrupt_shard") and not result.errors("manifest_mismatch")
    # A tolerance wide enough to swallow the skew passes.
    assert audit(packed["skewed"], mixture=mixture, config=AuditConfig(tolerance=0.25)).exit_code == EXIT_OK


def test_flipped_bytes_and_deleted_shards_are_all_named(packed, tmp_path):
    root = _copy(packed["faithful"], tmp_path)
    names = [s.name for s in load_manifest(str(root / "manifest.json")).shards]
    assert len(names) >= 3
    for name in names[:2]:
        data = bytearray((root / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (root / name).write_bytes(bytes(data))
    (root / names[-1]).unlink()
    result = audit(str(root))
    assert result.exit_code == EXIT_INTEGRITY
    assert {f.subject for f in result.errors("corrupt_shard")} == set(names[:2])
    assert [f.subject for f in result.errors("missing_shard")] == [names[-1]]
    assert all("sha256" in f.message for f in result.errors("corrupt_shard"))
    assert "not found at" in result.errors("missing_shard")[0].message
    # the totals cannot match with shards gone: said once, not once per total
    [totals] = result.errors("manifest_mismatch")
    assert "totals cannot match while 3 shard(s) are missing or corrupt" in totals.message
    # the untouched shards were still read and counted
    assert sum(s.status == "ok" for s in result.recount.shards) == len(names) - 3
    assert result.recount.n_sequences > 0


def test_a_manifest_edited_to_lie_is_caught_by_the_recount(packed, tmp_path):
    root = _copy(packed["faithful"], tmp_path)
    m = load_manifest(str(root / "manifest.json"))
    # A consistent lie: 500 tokens moved from prose to talk. Every total still adds up, so the
    # manifest passes its own contract; only a recount can tell.
    per_source = dict(m.per_source)
    p, t = per_source["prose"], per_source["talk"]
    per_source["prose"] = TokenCounts(p.examples, p.tokens - 500, p.loss_tokens - 500, p.vision_tokens)
    per_source["talk"] = TokenCounts(t.examples, t.tokens + 500, t.loss_tokens + 500, t.vision_tokens)
    lie = Manifest(**{**m.__dict__, "per_source": per_source})
    (root / "manifest.json").write_text(lie.to_json())
    result = audit(str(root))
    assert result.exit_code == EXIT_INTEGRITY
    messages = [f.message for f in result.errors("manifest_mismatch")]
    assert any(msg.startswith("per_source['prose'].tokens: manifest says") for msg in messages)
    assert any(msg.startswith("per_source['talk'].loss_tokens") for msg in messages)
    assert all("every shard verified" in msg for msg in messages)
    assert not result.errors("corrupt_shard")


def test_a_manifest_that_breaks_its_contract_still_gets_its_shards_checked(packed, tmp_path):
    root = _copy(packed["faithful"], tmp_path)
    data = json.loads((root / "manifest.json").read_text())
    data["padding_tokens"] += 7  # no longer adds up
    (root / "manifest.json").write_text(json.dumps(data))
    first = data["shards"][0]["name"]
    (root / first).write_bytes(b"not a tar at all")
    result = audit(str(root))
    assert result.exit_code == EXIT_INTEGRITY
    assert "padding_tokens" in result.errors("manifest_invalid")[0].message
    bad = result.errors("corrupt_shard")
    assert [f.subject for f in bad] == [first] and "unreadable tar" in bad[0].message
    assert result.recount.n_sequences > 0  # the other shards were recounted


def test_a_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="manifest not found"):
        open_shard_set(str(tmp_path))


def test_unlisted_files_are_warnings(packed, tmp_path):
    root = _copy(packed["faithful"], tmp_path)
    (root / "dense-b9999-00000.tar").write_bytes(b"stray")
    (root / "x.tar.tmp-0123").write_bytes(b"torn")
    result = audit(str(root))
    assert result.exit_code == EXIT_OK
    assert sorted(f.subject for f in result.findings if f.kind == "unlisted_file") == [
        "dense-b9999-00000.tar", "x.tar.tmp-0123",
    ]  # fmt: skip
