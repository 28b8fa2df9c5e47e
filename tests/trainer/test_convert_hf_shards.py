"""`lwmkit convert export --format hf --max-shard-size / --dtype`: a checkpoint written tensor by
tensor into Hugging Face shards (``model-0000i-of-0000N.safetensors`` + index) that transformers
loads with the single file's logits and that imports back bit-exact; the shard writer itself."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from lwmkit.schemas import ContractError, ModelConfig
from lwmkit.tokenizers.text import default_model_path
from lwmkit.trainer import convert, convert_hf, hf_shards
from lwmkit.trainer.model import init_params

TOKENIZER = str(default_model_path())
MODEL = ModelConfig(
    text_vocab_size=8000,
    vision_vocab_size=8448,  # LWM's real split: embed/head are [16448, 32], ~2.1 MB each
    d_model=32,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    mlp_dim=48,
    init_std=0.2,
    attention_block=64,
    loss_chunk=512,
)
SHARD = 300_000  # bytes: embed and head each go alone; layers share shards


@pytest.fixture(scope="module")
def params():
    return init_params(MODEL, jax.random.PRNGKey(3))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, params, convert_kit) -> str:
    return convert_kit.checkpoint(tmp_path_factory.mktemp("ck"), MODEL, params, seq_len=512, rope_theta=5e4)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, ckpt, convert_kit) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf")
    assert convert_kit.run("export", ckpt, "--format", "hf", "--out", str(root / "one")) == 0
    assert (
        convert_kit.run("export", ckpt, "--format", "hf", "--out", str(root / "many"), "--max-shard-size", "300KB") == 0
    )
    return root / "one", root / "many"


def test_sharded_folder_lists_every_tensor_once_in_bounded_shards(exports):
    one, many = exports
    single = load_file(str(one / "model.safetensors"))
    assert not (one / hf_shards.INDEX).exists()
    names = sorted(os.listdir(many))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert "model.safetensors" not in names and not [n for n in names if ".tmp-" in n]
    n = len(shards)
    assert n > 3 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((many / hf_shards.INDEX).read_text())
    assert set(index["weight_map"]) == set(single) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in single.values())
    seen: list[str] = []
    for shard in shards:
        with safe_open(str(many / shard), "np") as f:
            keys = list(f.keys())
            assert f.metadata() == {"format": "pt", "converted_by": "lwmkit"}
            for k in keys:
                assert index["weight_map"][k] == shard
                assert np.array_equal(f.get_tensor(k), single[k]), k  # same bits as the single file
        seen += keys
        size = sum(single[k].nbytes for k in keys)
        assert size <= SHARD or len(keys) == 1, (
            shard,
            size,
        )  # only a tensor bigger than a shard stands alone
    assert sorted(seen) == sorted(single)  # every tensor exactly once
    assert len(load_file(str(many / shards[0]))) >= 1


def test_transformers_loads_the_shards_with_the_single_files_logits(exports):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    one, many = exports
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 8000 + 8448, (1, 96)))
    logits = []
    for folder in (one, many):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        with torch.no_grad():
            logits.append(model(ids).logits[0].numpy())
    assert logits[0].shape == (96, 8000 + 8448) and np.array_equal(logits[0], logits[1])


def test_sharded_export_imports_back_exactly(exports, params, tmp_path, convert_kit):
    from lwmkit.trainer.generate import load_model

    _, many = exports
    assert convert_kit.run("import", str(many), "--format", "hf", "--out", str(tmp_path / "ck")) == 0
    back = load_model(str(tmp_path / "ck" / "import"))
    fa, fb = convert.flatten(back.params), convert.flatten(params)
    assert fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)
    assert (back.config.text_vocab_size, back.config.vision_vocab_size) == (8000, 8448)


def test_bfloat16_export_rounds_each_weight_once(exports, ckpt, tmp_path, convert_kit):
    from lwmkit.trainer.generate import load_model

    one, _ = exports
    out = tmp_path / "bf16"
    assert convert_kit.run("export", ckpt, "--format", "hf", "--out", str(out), "--dtype", "bfloat16") == 0
    single, half = load_file(str(one / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert half.keys() == single.keys()
    for k, a in single.items():
        assert half[k].dtype == jnp.bfloat16 and np.array_equal(half[k], a.astype(jnp.bfloat16)), k
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "model.safetensors").stat().st_size < 0.51 * (one / "model.safetensors").stat().st_size
    assert convert_kit.run("import", str(out), "--format", "hf", "--out", str(tmp_path / "ck")) == 0  # back as fp32
    back = convert.flatten(load_model(str(tmp_path / "ck" / "import")).params)
    emb = np.asarray(back["transformer/wte/embedding"])
    assert emb.dtype == np.float32
    assert np.array_equal(
        emb, single["model.embed_tokens.weight"][:8000].astype(jnp.bfloat16).astype(np.float32)
    )


def test_overwrite_swaps_single_and_sharded_forms_cleanly(ckpt, tmp_path, capsys, convert_kit):
    out = tmp_path / "hf"
    assert convert_kit.run("export", ckpt, "--format", "hf", "--out", str(out), "--max-shard-size", "0.3MB") == 0
    assert "already holds an exported model" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", str(out)
    )
    (out / "model-00001-of-00002.safetensors.tmp-0123abcd").write_bytes(b"torn")  # a killed export's
    (out / "notes.txt.tmp-0123abcd").write_bytes(b"not ours")
    assert convert_kit.run("export", ckpt, "--format", "hf", "--out", str(out), "--overwrite") == 0
    assert (out / "notes.txt.tmp-0123abcd").exists() and not list(out.glob("model-*"))
    assert not [n for n in os.listdir(out) if re.fullmatch(r"model-.*|.*index\.json", n)]  # no stale shards
    assert (
        convert_kit.run("export", ckpt, "--format", "hf", "--out", str(out), "--overwrite", "--max-shard-size", "1MB")
        == 0
    )
    assert not (out / "model.safetensors").exists() and (out / hf_shards.INDEX).exists()


def test_bad_options_are_one_line_each(ckpt, tmp_path, capsys, convert_kit):
    out = str(tmp_path / "o")
    for size in ("abc", "0", "-5GB", "5XB", "GB", "0.1B"):
        line = convert_kit.refused(capsys, "export", ckpt, "--format", "hf", "--out", out, "--max-shard-size", size)
        assert "--max-shard-size" in line and "is not a size" in line, line
    assert "unknown dtype 'int8'" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", out, "--dtype", "int8"
    )
    assert "--max-shard-size goes with --format hf" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "lwm", "--out", out, "--max-shard-size", "1GB"
    )
    assert not os.path.exists(out)  # refused before anything was written


def test_broken_index_is_refused_on_import(exports, tmp_path, capsys, convert_kit):
    import shutil

    _, many = exports
    bad = tmp_path / "bad"
    shutil.copytree(many, bad)
    index = json.loads((bad / hf_shards.INDEX).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (bad / first).unlink()
    assert f"lists {first}, which is missing" in convert_kit.refused(
        capsys, "import", str(bad), "--format", "hf", "--out", str(tmp_path / "ck")
    )
    shutil.copy(many / first, bad / first)
    moved = next(k for k, v in index["weight_map"].items() if v == first)
    index["weight_map"][moved] = sorted(set(index["weight_map"].values()))[1]
    (bad / hf_shards.INDEX).write_text(json.dumps(index))
    assert "does not hold the tensors the index gives it" in convert_kit.refused(
        capsys, "import", str(bad), "--format", "hf", "--out", str(tmp_path / "ck")
    )


def test_sizes_parse_as_transformers_reads_them():
    assert hf_shards.parse_size("5GB") == 5 * 10**9
    assert hf_shards.parse_size("500mb") == 5 * 10**8
    assert hf_shards.parse_size("2GiB") == 2 * 2**30
    assert hf_shards.parse_size("1.5 GB") == 1_500_000_000
    assert hf_shards.parse_size("123456") == 123456
    with pytest.raises(ContractError, match="is not a size"):
        hf_shards.parse_size("5 G B")


def test_a_failed_write_leaves_no_shard_under_a_final_name(tmp_path):
    """The writer fails on its second tensor: neither the final name nor a temporary remains."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)

    def broken():
        yield w[:1]
        raise OSError(28, "No space left on device")

    tensors = [
        hf_shards.Tensor("a", (3, 4), "float32", lambda: iter([w])),
        hf_shards.Tensor("b", (3, 4), "float32", broken),
    ]
    with pytest.raises(OSError, match="No space left") as err:
        hf_shards.write_folder(str(tmp_path), tensors, 10**9, {"format": "pt"})
    assert any("model.safetensors" in note for note in err.value.__notes__)
    assert os.listdir(tmp_path) == []
    files = hf_shards.write_folder(str(tmp_path), tensors[:1], 10**9, {"format": "pt"})
    assert files == [str(tmp_path / "model.safetensors")] and np.array_equal(load_file(files[0])["a"], w)


def test_streamed_tensors_are_llamas_text_rows_then_the_vision_rows(params, exports):
    """The export (row blocks, one param at a time) against the whole-array mapping: text
    tensors as ``convert.to_llama`` makes them, then ``vte`` / ``vision_head`` transposed."""
    one, _ = exports
    single = load_file(str(one / "model.safetensors"))
    text = convert.to_llama(
        convert.without_vision(params), ModelConfig(**{**MODEL.__dict__, "vision_vocab_size": 0})
    )
    flat = convert.flatten(params)
    text[convert_hf.EMBED] = np.concatenate(
        [text[convert_hf.EMBED], np.asarray(flat[convert.VISION_KEYS[0]])]
    )
    text[convert_hf.HEAD] = np.concatenate(
        [text[convert_hf.HEAD], np.asarray(flat[convert.VISION_KEYS[1]]).T]
    )
    assert text.keys() == single.keys() and all(np.array_equal(text[k], single[k]) for k in text)
    got = convert_hf.to_hf(params, MODEL)
    assert got.keys() == single.keys() and all(np.array_equal(got[k], single[k]) for k in got)


def test_float16_refuses_weights_it_cannot_hold(tmp_path):
    big = np.array([[1.0, 7e4]], np.float32)
    tensors = [hf_shards.Tensor("w", (1, 2), "float16", lambda: iter([big]))]
    with pytest.raises(ContractError, match="beyond float16's range"):
        hf_shards.write_folder(str(tmp_path), tensors, 10**9, {"format": "pt"})
    assert os.listdir(tmp_path) == []
    ok = [hf_shards.Tensor("w", (1, 2), "float16", lambda: iter([big / 2]))]
    assert load_file(hf_shards.write_folder(str(tmp_path), ok, 10**9, {})[0])["w"].tolist() == [
        [0.5, 35008.0]
    ]


def test_safetensors_are_read_a_tensor_at_a_time(tmp_path):
    """``read_safetensors`` reads headers only: names and shapes up front, each tensor's bytes when
    asked (an import then holds the converted model and one source tensor, not both models); a
    ChainMap in front (as the hf import puts one) takes renames and slices and leaves the files'
    view untouched; truncated files and a tensor held by two files are refused by name."""
    from collections import ChainMap

    from safetensors.numpy import save_file

    folder = tmp_path / "two"
    folder.mkdir()
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(folder / "x.safetensors"))
    save_file({"b": np.ones(4, np.float32)}, str(folder / "y.safetensors"))
    tensors = convert.read_safetensors(str(folder))
    assert sorted(tensors) == ["a", "b"] and tensors.shape("a") == (2, 3) and "c" not in tensors
    # the bytes are read on access: change them on disk after opening and the new values come back
    save_file({"b": np.full(4, 7.0, np.float32)}, str(folder / "y.safetensors"))
    assert tensors["b"].tolist() == [7.0] * 4
    other = ChainMap({}, tensors)
    other["b"] = tensors["a"][0]
    assert sorted(other) == ["a", "b"] and other["b"].tolist() == [0.0, 1.0, 2.0]
    assert tensors["b"].tolist() == [7.0] * 4  # the files' view is untouched
    with pytest.raises(KeyError):
        tensors["c"]
    save_file({"a": np.zeros(1, np.float32)}, str(folder / "z.safetensors"))
    with pytest.raises(ContractError, match="which another .safetensors file holds too"):
        convert.read_safetensors(str(folder))
    data = (folder / "x.safetensors").read_bytes()
    (folder / "z.safetensors").write_bytes(data[:-8])
    with pytest.raises(ContractError, match="z.safetensors: is not a readable safetensors file"):
        convert.read_safetensors(str(folder))
