from __future__ import annotations

import json

import pytest

from lwmkit.schemas import (
    ContractError,
    Manifest,
    ShardEntry,
    TokenCounts,
    VocabLayout,
    load_manifest,
    to_dict,
)

LAYOUT = VocabLayout(text_vocab_size=8000, bos_id=1, eos_id=2, vision_start_ids=(7915, 3), vision_end_ids=(7915, 4))


def make_manifest(**change) -> Manifest:
    fields = dict(
        stage="32k",
        seq_len=100,
        seed=0,
        tokenizer_id="t" * 64,
        vqgan_id="v" * 64,
        vocab=LAYOUT,
        mixture={"sources": [{"name": "web", "kind": "text", "path": "x", "weight": 1.0}]},
        loss_weighting="per_example",
        vision_loss_weight=0.5,
        text_loss_weight=0.5,
        n_sequences=3,
        padding_tokens=30,
        packing_efficiency=0.9,
        per_source={"web": TokenCounts(examples=5, tokens=270, loss_tokens=260)},
        per_modality={"text": TokenCounts(examples=5, tokens=270, loss_tokens=260)},
        shards=(ShardEntry("shard-00000.tar", 2, 4096, "a" * 64), ShardEntry("shard-00001.tar", 1, 2048, "b" * 64)),
    )
    fields.update(change)
    return Manifest(**fields)


def test_round_trip(tmp_path):
    m = make_manifest()
    path = tmp_path / "manifest.json"
    path.write_text(m.to_json())
    again = load_manifest(str(path))
    assert again == m
    assert again.sha256 == m.sha256
    assert json.loads(m.to_json())["format_version"] == 1


def _edit(tmp_path, mutate):
    data = to_dict(make_manifest())
    mutate(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.pop("seq_len"), "field 'seq_len': is required but missing"),
        (lambda d: d.update(seq_len="100"), "field 'seq_len': must be an integer"),
        (lambda d: d.update(extra=1), "field 'extra': unknown key"),
        (lambda d: d.update(format_version=2), "manifest format version 2 is not supported"),
        (lambda d: d["shards"][0].update(sha256="xyz"), r"field 'shards\[0\].sha256': must be 64"),
        (lambda d: d.update(n_sequences=4), "field 'n_sequences': differs from the sum"),
        (lambda d: d.update(padding_tokens=10), "field 'padding_tokens'"),
        (lambda d: d.update(packing_efficiency=0.5), "field 'packing_efficiency': should be 0.900000"),
        (lambda d: d["vocab"].update(bos_id=9000), "field 'vocab.bos_id': 9000 is outside the text vocab"),
        (lambda d: d["per_source"]["web"].update(loss_tokens=999), r"field 'per_source.web.loss_tokens': exceeds tokens"),
    ],
)
def test_bad_manifest_names_file_and_field(tmp_path, mutate, message):
    with pytest.raises(ContractError, match=message) as info:
        load_manifest(_edit(tmp_path, mutate))
    assert "manifest.json" in str(info.value)


def test_not_json_and_missing(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ContractError, match="is not JSON"):
        load_manifest(str(path))
    with pytest.raises(ContractError, match="manifest not found"):
        load_manifest(str(tmp_path / "nope.json"))
