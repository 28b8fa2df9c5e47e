"""`lwmkit convert import|export`: LLaMA (HF, Meta) and LWM weights <-> trainer checkpoints,
the trainer starting a stage from an import, and one clear line (exit 2) per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from lwmkit.schemas import ModelConfig
from lwmkit.tokenizers.text import TextTokenizer, default_model_path
from lwmkit.trainer import convert
from lwmkit.trainer.convert_checkpoint import model_from_meta
from lwmkit.trainer.model import init_params

# vocab 8000: the shipped tokenizer's, so the imported model can train on the sample shards
TEXT = ModelConfig(text_vocab_size=8000, vision_vocab_size=0, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   mlp_dim=48, attention_block=128, loss_chunk=512)
VISION = ModelConfig(**{**TEXT.__dict__, "vision_vocab_size": 40})
TOKENIZER = str(default_model_path())
HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 32,
             "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "vocab_size": 8000, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512,
             "tie_word_embeddings": False, "torch_dtype": "float32"}


def _shape(m: ModelConfig) -> tuple:
    return m.text_vocab_size, m.vision_vocab_size, m.d_model, m.n_layers, m.n_heads, m.kv_heads, m.mlp_dim, m.norm_eps


def _write_config(path: Path, model: ModelConfig, **extra) -> Path:
    from lwmkit.schemas import to_dict

    cfg = {"model": to_dict(model), "checkpoint": {"dir": str(path.parent / "ck")}, **extra,
           "stages": extra.get("stages") or [{"name": "s", "seq_len": 512, "rope_theta": 1e4, "steps": 1,
                                              "batch_size": 1, "data": "unused"}]}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def vision_params():
    return init_params(VISION, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, vision_params) -> Path:
    """A Hugging Face LLaMA folder: model.safetensors + config.json, as transformers writes them."""
    folder = tmp_path_factory.mktemp("hf")
    convert.save_llama(convert.without_vision(vision_params), TEXT, str(folder / "model.safetensors"), "hf")
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    return folder


@pytest.mark.parametrize("fmt", ["llama-hf", "llama-meta"])
def test_llama_import_then_export_gives_the_same_tensors(tmp_path, hf_dir, vision_params, fmt, capsys, convert_kit):
    from safetensors.numpy import load_file

    from lwmkit.trainer.generate import load_model

    src = hf_dir
    if fmt == "llama-meta":  # Meta names + params.json, no config.json
        src = tmp_path / "meta"
        src.mkdir()
        convert.save_llama(convert.without_vision(vision_params), TEXT, str(src / "consolidated.safetensors"), "meta")
        (src / "params.json").write_text(json.dumps(
            {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1, "norm_eps": 1e-6,
             "multiple_of": 48, "ffn_dim_multiplier": 48 / int(8 * 32 / 3)}))
    extra = [] if fmt == "llama-hf" else ["--seq-len", "512", "--rope-theta", "10000"]
    assert convert_kit.run("import", str(src), "--format", fmt, "--out", str(tmp_path / "ck"), "--tokenizer", TOKENIZER,
                *extra) == 0
    assert "init_from: " in capsys.readouterr().out
    loaded = load_model(str(tmp_path / "ck" / "import"))
    assert convert_kit.same(loaded.params, convert.without_vision(vision_params))
    assert _shape(loaded.config) == _shape(TEXT) and loaded.seq_len == 512 and loaded.rope_theta == 1e4
    assert loaded.tokenizer_id == TextTokenizer.load(TOKENIZER).id

    out = tmp_path / "export"
    assert convert_kit.run("export", str(tmp_path / "ck" / "import"), "--format", fmt, "--out", str(out)) == 0
    name, record = ("model.safetensors", "config.json") if fmt == "llama-hf" else ("consolidated.safetensors", "params.json")
    before, after = load_file(str(src / name)), load_file(str(out / name))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    written = json.loads((out / record).read_text())
    if fmt == "llama-hf":
        assert {k: written[k] for k in HF_CONFIG} == HF_CONFIG
    else:  # Meta's FeedForward sizing rule gives back the width
        assert _shape(model_from_meta(written, 8000, str(out))) == _shape(TEXT)


def test_lwm_round_trip_and_text_only_export(tmp_path, vision_params, convert_kit):
    from lwmkit.trainer.generate import load_model

    src = tmp_path / "streaming_params"
    convert.save_lwm(vision_params, str(src))
    config = _write_config(tmp_path / "train.yaml", VISION)
    args = ["import", str(src), "--format", "lwm", "--out", str(tmp_path / "ck"), "--config", str(config),
            "--tokenizer", TOKENIZER, "--stage-name", "lwm1m"]
    assert convert_kit.run(*args, "--seq-len", "1024") == 2  # no theta recorded in the file: say which flag
    assert convert_kit.run(*args, "--seq-len", "1024", "--rope-theta", "5e7") == 0
    loaded = load_model(str(tmp_path / "ck" / "lwm1m" / "final"))
    assert convert_kit.same(loaded.params, vision_params) and loaded.rope_theta == 5e7 and loaded.seq_len == 1024

    assert convert_kit.run("export", str(tmp_path / "ck" / "lwm1m"), "--format", "lwm", "--out", str(tmp_path / "back")) == 0
    assert convert_kit.same(convert.load_lwm(str(tmp_path / "back"), VISION), vision_params)
    # LLaMA formats hold no vision parameters: refused unless --text-only says to drop them
    hf = tmp_path / "hf"
    assert convert_kit.run("export", str(tmp_path / "ck" / "lwm1m"), "--format", "llama-hf", "--out", str(hf)) == 2
    assert convert_kit.run("export", str(tmp_path / "ck" / "lwm1m"), "--format", "llama-hf", "--out", str(hf), "--text-only") == 0
    assert convert_kit.same(convert.load_llama(str(hf), TEXT), convert.without_vision(vision_params))
    assert convert_kit.run("export", str(tmp_path / "ck" / "lwm1m"), "--format", "llama-hf", "--out", str(hf), "--text-only") == 2


def _lwmkit(*args: str) -> tuple[int, str]:
    """The CLI in a fresh process on one CPU device (training must not share this process's JAX)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "from lwmkit.cli import main; main()", *args], capture_output=True,
                          text=True, env=env, timeout=600)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def shards(tmp_path_factory, botchan) -> str:
    """512-token shards (text and vision) made by `lwmkit pack` from the sample data."""
    from lwmkit.pack_demo import write_demo_mixture

    root = tmp_path_factory.mktemp("packed")
    mixture = write_demo_mixture(root / "demo", botchan)
    code, err = _lwmkit("pack", "--mixture", str(mixture), "--seq-len", "512", "--stage", "s512", "--out",
                        str(root / "shards"))
    assert code == 0, err[-3000:]
    return str(root / "shards")


@pytest.mark.slow
def test_train_starts_a_stage_from_an_imported_llama(tmp_path, hf_dir, shards, botchan, convert_kit):
    """LWM's first step: LLaMA weights -> `lwmkit convert import` -> `init_from` of a stage that
    adds the vision vocabulary; the trainer refuses the import without add_vision, and an import
    recorded with another tokenizer than the shards'."""
    from lwmkit.tokenizers.text import train as train_tokenizer
    from lwmkit.trainer.generate import load_model

    ck = tmp_path / "ck"
    assert convert_kit.run("import", str(hf_dir), "--format", "llama-hf", "--out", str(ck), "--tokenizer", TOKENIZER) == 0
    stage = {"name": "s512", "seq_len": 512, "rope_theta": 1e4, "steps": 2, "batch_size": 2, "data": shards,
             "init_from": str(ck / "import"), "add_vision": True}
    model = ModelConfig(**{**TEXT.__dict__, "vision_vocab_size": 8448})
    config = _write_config(tmp_path / "train.yaml", model, stages=[stage], peak_flops=1e10)
    code, err = _lwmkit("train", str(config))
    assert code == 0, err[-3000:]
    assert f"from {ck / 'import'} (step 0, + fresh vision params)" in err
    trained = load_model(str(tmp_path / "ck" / "s512"))
    imported = load_model(str(ck / "import"))
    assert trained.step == 2 and trained.tokenizer_id == imported.tokenizer_id
    assert not convert_kit.same(convert.without_vision(trained.params), imported.params)  # it trained from the import

    code, err = _lwmkit("train", str(config), "--set", "stages.0.add_vision=false", "--set",
                        f"checkpoint.dir={tmp_path / 'ck2'}")
    assert code == 2 and "set add_vision: true on the stage" in err
    (tmp_path / "text.txt").write_text(botchan[:200_000])
    other = train_tokenizer([tmp_path / "text.txt"], tmp_path / "other", vocab_size=400)
    assert convert_kit.run("import", str(hf_dir), "--format", "llama-hf", "--out", str(ck), "--tokenizer", str(other),
                "--overwrite") == 0
    code, err = _lwmkit("train", str(config), "--set", f"checkpoint.dir={tmp_path / 'ck3'}")
    assert code == 2 and "checkpoint was trained on tokenizer" in err


def test_bad_inputs_get_one_clear_line(tmp_path, hf_dir, capsys, convert_kit):
    out = ["--out", str(tmp_path / "ck")]
    hf = ["--format", "llama-hf", *out, "--tokenizer", TOKENIZER]
    assert "does not exist" in convert_kit.refused(capsys, "import", str(tmp_path / "nope"), *hf)
    assert "unknown format 'gguf'; use one of hf, llama-hf, llama-meta, lwm" in convert_kit.refused(
        capsys, "import", str(hf_dir), "--format", "gguf", *out)
    pickled = tmp_path / "torch"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    assert "never unpickles" in convert_kit.refused(capsys, "import", str(pickled), *hf)
    assert "never unpickles" in convert_kit.refused(capsys, "import", str(pickled / "pytorch_model.bin"), *hf)
    (pickled / "model.safetensors").write_bytes(b"garbage")
    assert "is not a readable safetensors file" in convert_kit.refused(capsys, "import", str(pickled / "model.safetensors"),
                                                            "--config", str(_write_config(tmp_path / "t.yaml", TEXT)),
                                                            *hf)

    wide = tmp_path / "wide"  # config.json says a wider MLP than the tensors hold
    wide.mkdir()
    (wide / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    (wide / "config.json").write_text(json.dumps({**HF_CONFIG, "intermediate_size": 64}))
    assert ("field 'model.layers.0.mlp.gate_proj.weight': shape (48, 32) != (64, 32) the model config expects"
            in convert_kit.refused(capsys, "import", str(wide), *hf))
    small = tmp_path / "small"  # a 96-id embedding cannot take the 8000-id tokenizer
    small.mkdir()
    model = ModelConfig(**{**TEXT.__dict__, "text_vocab_size": 96})
    convert.save_llama(init_params(model, jax.random.PRNGKey(1)), model, str(small / "model.safetensors"))
    (small / "config.json").write_text(json.dumps({**HF_CONFIG, "vocab_size": 96}))
    assert "tokenizer has 8000 ids, the model's embedding only 96" in convert_kit.refused(capsys, "import", str(small), *hf)

    assert "pass --tokenizer tokenizer.model" in convert_kit.refused(capsys, "import", str(hf_dir), "--format", "llama-hf", *out)
    assert convert_kit.run("import", str(hf_dir), *hf) == 0
    assert "already holds a checkpoint; pass --overwrite" in convert_kit.refused(capsys, "import", str(hf_dir), *hf)
    (tmp_path / "ck" / "import" / "notes.txt").write_text("not ours to delete")
    assert "is a folder that is not a checkpoint" in convert_kit.refused(capsys, "import", str(hf_dir), *hf, "--overwrite")
    (tmp_path / "ck" / "import" / "notes.txt").unlink()
    assert "not both" in convert_kit.refused(capsys, "import", str(hf_dir), *hf, "--no-tokenizer", "--overwrite")
    assert convert_kit.run("import", str(hf_dir), *out, "--format", "llama-hf", "--no-tokenizer", "--overwrite") == 0
    assert "no tokenizer recorded" in capsys.readouterr().err

    lwm = tmp_path / "streaming_params"
    lwm.write_bytes(b"\x00\x01 not msgpack pairs")
    assert "records no model shape" in convert_kit.refused(capsys, "import", str(lwm), "--format", "lwm", *out, "--stage-name", "x")
    assert "is not an LWM/EasyLM streaming_params file" in convert_kit.refused(
        capsys, "import", str(lwm), "--format", "lwm", *out, "--config", str(tmp_path / "t.yaml"), "--no-tokenizer",
        "--stage-name", "x", "--seq-len", "8", "--rope-theta", "1e4")
    assert "no lwmkit checkpoint" in convert_kit.refused(capsys, "export", str(tmp_path / "nope"), "--format", "lwm", "--out",
                                              str(tmp_path / "o"))
    assert "unknown format 'gguf'" in convert_kit.refused(capsys, "export", str(tmp_path / "ck" / "import"), "--format", "gguf",
                                               "--out", str(tmp_path / "o"))


def test_model_shapes_from_hf_and_meta_records():
    """LLaMA-2-7B's config.json / params.json give lwmkit's default model (text-only); Meta's
    width rule survives our params.json for a width it cannot express with multiple_of 256."""
    from lwmkit.trainer.convert_checkpoint import hf_config_json, meta_params_json, model_from_hf

    seven_b = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-5, "hidden_act": "silu"}
    want = ModelConfig(vision_vocab_size=0, norm_eps=1e-5)
    assert model_from_hf(seven_b, "config.json") == want
    assert model_from_meta({"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-5,
                            "vocab_size": -1}, 32000, "params.json") == want
    assert model_from_hf(hf_config_json(want, 4096, 1e4), "x") == want
    assert meta_params_json(want, 1e4)["multiple_of"] == 256
    odd = ModelConfig(**{**TEXT.__dict__, "mlp_dim": 100})
    assert _shape(model_from_meta(meta_params_json(odd, 1e4), 8000, "x")) == _shape(odd)


def test_tied_hf_embeddings_become_our_own_head(tmp_path, hf_dir, convert_kit):
    from safetensors.numpy import load_file, save_file

    from lwmkit.trainer.generate import load_model

    tensors = load_file(str(hf_dir / "model.safetensors"))
    del tensors["lm_head.weight"]  # a tied model stores the embedding only
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "tie_word_embeddings": True}))
    assert convert_kit.run("import", str(tmp_path), "--format", "llama-hf", "--out", str(tmp_path / "ck"), "--no-tokenizer") == 0
    params = load_model(str(tmp_path / "ck" / "import")).params
    np.testing.assert_array_equal(params["lm_head"]["kernel"], tensors["model.embed_tokens.weight"].T)
