from __future__ import annotations

import pytest
import yaml

from lwmkit.runtime.config import apply_overrides, load_config
from lwmkit.schemas import ContractError, MixtureConfig, TrainConfig, from_dict, to_dict

MIXTURE = {
    "seed": 3,
    "sources": [
        {"name": "books", "kind": "book_qa_chat", "path": "out/books/*.parquet", "weight": 0.3},
        {"name": "clips", "kind": "video_text", "path": "out/vision/*.parquet", "weight": 0.5, "max_frames": 32},
        {"name": "web", "kind": "text", "path": "data/*.jsonl", "weight": 0.2},
    ],
}

TRAIN = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_dim": 128, "text_vocab_size": 8000},
    "mesh": {"sequence": 2, "fsdp": 1},
    "checkpoint": {"dir": "runs/x"},
    "stages": [
        {"name": "s1", "seq_len": 512, "rope_theta": 1e4, "steps": 10, "batch_size": 2, "data": "a/manifest.json"},
        {"name": "s2", "seq_len": 2048, "rope_theta": 1e6, "steps": 10, "batch_size": 1, "data": "b/manifest.json"},
    ],
}


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("cls,data", [(MixtureConfig, MIXTURE), (TrainConfig, TRAIN)])
def test_round_trip(tmp_path, cls, data):
    cfg = load_config(cls, write(tmp_path, data))
    again = load_config(cls, write(tmp_path, to_dict(cfg), "again.yaml"))
    assert again == cfg
    assert cfg.format_version == 1


def test_mixture_shares_normalise():
    cfg = from_dict(MixtureConfig, MIXTURE)
    assert cfg.shares == pytest.approx({"books": 0.3, "clips": 0.5, "web": 0.2})
    assert [s.group for s in cfg.sources] == ["book_qa", "dense", "dense"]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["sources"][0].pop("path"), r"c.yaml: field 'sources\[0\].path': is required but missing"),
        (lambda d: d["sources"][1].update(weight="lots"), r"field 'sources\[1\].weight': must be a number"),
        (lambda d: d["sources"][2].update(wieght=1), r"field 'sources\[2\].wieght': unknown key \(did you mean 'weight'\?\)"),
        (lambda d: d.update(format_version=2), r"field 'format_version': mixture config format version 2"),
        (lambda d: d["sources"][2].update(kind="txt"), r"field 'sources\[2\].kind': must be one of"),
        (lambda d: d["sources"][2].update(max_frames=4), r"field 'sources\[2\].max_frames': applies to video_text"),
        (lambda d: d["sources"][2].update(name="books"), r"field 'sources': source names repeat"),
        (lambda d: d["sources"][0].update(weight=0), r"field 'sources\[0\].weight': must be > 0"),
    ],
)
def test_mixture_errors_name_file_and_field(tmp_path, mutate, message):
    import copy

    data = copy.deepcopy(MIXTURE)
    mutate(data)
    with pytest.raises(ContractError, match=message):
        load_config(MixtureConfig, write(tmp_path, data))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["stages"][1].pop("rope_theta"), r"field 'stages\[1\].rope_theta': is required"),
        (lambda d: d["stages"][0].update(seq_len="512"), r"field 'stages\[0\].seq_len': must be an integer"),
        (lambda d: d["model"].update(n_head=4), r"field 'model.n_head': unknown key \(did you mean 'n_heads'\?\)"),
        (lambda d: d.update(format_version=0), r"training config format version 0"),
        (lambda d: d["model"].update(n_heads=3), r"field 'model.n_heads': must divide d_model"),
        (lambda d: d["stages"][0].update(seq_len=511), r"field 'stages\[0\].seq_len': 511 is not divisible"),
        (lambda d: d["optimizer"].update(schedule="cosin") if "optimizer" in d else d.update(optimizer={"schedule": "cosin"}),
         r"field 'optimizer.schedule': must be one of"),
        # a decaying schedule without its target would silently stay constant
        (lambda d: d.update(optimizer={"schedule": "linear"}), r"field 'optimizer.end_lr': is required with schedule 'linear'"),
        (lambda d: d.update(optimizer={"end_lr": 1e-5}), r"field 'optimizer.end_lr': is only used by a cosine or linear"),
        # orbax/TensorStore writes local or gs:// only: refuse s3:// before a stage trains, not at its first save
        (lambda d: d["checkpoint"].update(dir="s3://bucket/ck"), r"field 'checkpoint.dir': must be a local path"),
        (lambda d: d["stages"][0].update(init_from="s3://bucket/ck/s1"), r"field 'stages\[0\].init_from': must be a local"),
    ],
)
def test_train_errors_name_file_and_field(tmp_path, mutate, message):
    import copy

    data = copy.deepcopy(TRAIN)
    mutate(data)
    with pytest.raises(ContractError, match=message):
        load_config(TrainConfig, write(tmp_path, data))


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, TRAIN)
    cfg = load_config(TrainConfig, path, ["stages.1.seq_len=4096", "stages[0].rope_theta=5e5", "optimizer.lr=1e-3"])
    assert cfg.stages[1].seq_len == 4096 and cfg.stages[0].rope_theta == 5e5 and cfg.optimizer.lr == 1e-3
    with pytest.raises(ContractError, match=r"field 'stages\[0\].seq_lenn': unknown key"):
        load_config(TrainConfig, path, ["stages.0.seq_lenn=1"])
    with pytest.raises(ContractError, match="index 5 is out of range"):
        apply_overrides({"stages": []}, ["stages.5.seq_len=1"])
    with pytest.raises(ContractError, match="is not key=value"):
        apply_overrides({}, ["stages"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed")
    with pytest.raises(ContractError, match="bad.yaml: is not valid YAML"):
        load_config(MixtureConfig, str(bad))
    with pytest.raises(ContractError, match="missing.yaml: config file not found"):
        load_config(MixtureConfig, str(tmp_path / "missing.yaml"))
    bad.write_text("- a list\n")
    with pytest.raises(ContractError, match="must hold a mapping"):
        load_config(MixtureConfig, str(bad))
