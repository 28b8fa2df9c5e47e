"""`lwmkit convert export --format hf`: a vision checkpoint as a plain Llama folder that
transformers loads (logits equal lwmkit's on a mixed text + vision sequence), that imports back
exactly, that follows vLLM's Llama layout, and whose tokenizer encodes as lwmkit's does."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwmkit.schemas import ModelConfig
from lwmkit.tokenizers.text import TextTokenizer, default_model_path
from lwmkit.trainer import convert, convert_hf
from lwmkit.trainer.model import LWMModel, init_params

TOKENIZER = str(default_model_path())
# LWM's real vision vocabulary (8448) on a toy trunk; init_std 0.2 makes attention peaky, so a
# wrong RoPE (theta, or q/k row order) moves the logits far past the tolerance.
VISION = ModelConfig(
    text_vocab_size=8000,
    vision_vocab_size=8448,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    mlp_dim=48,
    init_std=0.2,
    attention_block=64,
    loss_chunk=512,
)
THETA, SEQ = 5e4, 2048


@pytest.fixture(scope="module")
def params():
    return init_params(VISION, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def export(tmp_path_factory, params, convert_kit) -> Path:
    root = tmp_path_factory.mktemp("hf")
    ckpt = convert_kit.checkpoint(root / "ck", VISION, params, seq_len=SEQ, rope_theta=THETA)
    assert (
        convert_kit.run("export", ckpt, "--format", "hf", "--out", str(root / "hf")) == 0
    )  # tokenizer: the recorded one
    return root / "hf"


def _mixed_sequence(layout) -> tuple[np.ndarray, np.ndarray]:
    """A 2-frame video question (text, <vision>, codes, end-of-frame, ..., </vision>, text)
    made by lwmkit's own formatting: ids and vision mask."""
    from lwmkit.pipelines.pack.formatting import format_vision

    tok = TextTokenizer.load(TOKENIZER)
    codes = np.random.default_rng(1).integers(0, layout.n_codes, (2, layout.codes_per_frame))
    ids, _, mask = format_vision(
        codes, "A cat sits on a mat.", kind="video", direction="understanding", tok=tok, layout=layout
    )
    return ids, mask


def test_transformers_logits_equal_lwmkits_on_text_and_vision(export, params):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    layout = convert_hf.load_layout(str(export))
    ids, mask = _mixed_sequence(layout)
    assert mask.any() and (~mask).any() and 8192 in ids[mask] and 8193 in ids[mask]
    hf_ids = convert_hf.to_hf_ids(ids, mask, VISION.text_vocab_size)
    back_ids, back_mask = convert_hf.from_hf_ids(hf_ids, VISION.text_vocab_size)
    assert np.array_equal(back_ids, ids) and np.array_equal(back_mask, mask)

    model = transformers.AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        theirs = model(torch.from_numpy(hf_ids)[None]).logits[0].numpy()

    n = len(ids)
    text, vision = LWMModel(VISION, rope_theta=THETA).apply(
        {"params": params},
        jnp.asarray(ids)[None],
        jnp.asarray(mask)[None],
        jnp.arange(n, dtype=jnp.int32)[None],
        jnp.ones((1, n), jnp.int32),
        method=LWMModel.logits,
    )
    ours = np.concatenate([np.asarray(text[0]), np.asarray(vision[0])], -1)
    assert theirs.shape == ours.shape == (n, 8000 + 8448)
    rel = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))
    print(f"max |transformers - lwmkit| / max |lwmkit| = {rel:.2e} over {n} tokens x {ours.shape[1]} ids")
    assert rel < 1e-4
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ours))))


def test_import_gives_back_the_checkpoint_exactly(export, params, tmp_path, convert_kit):
    from lwmkit.trainer.generate import load_model

    assert (
        convert_kit.run("import", str(export), "--format", "hf", "--out", str(tmp_path / "ck")) == 0
    )  # tokenizer beside it
    loaded = load_model(str(tmp_path / "ck" / "import"))
    assert convert_kit.same(loaded.params, params)
    c = loaded.config
    assert (
        c.text_vocab_size,
        c.vision_vocab_size,
        c.d_model,
        c.n_layers,
        c.n_heads,
        c.kv_heads,
        c.mlp_dim,
    ) == (8000, 8448, 32, 2, 4, 2, 48)
    assert loaded.seq_len == SEQ and loaded.rope_theta == THETA
    assert loaded.tokenizer_id == TextTokenizer.load(TOKENIZER).id
    # and out again: the same bytes of weights
    from safetensors.numpy import load_file

    assert (
        convert_kit.run("export", str(tmp_path / "ck" / "import"), "--format", "hf", "--out", str(tmp_path / "again"))
        == 0
    )
    a, b = (
        load_file(str(export / "model.safetensors")),
        load_file(str(tmp_path / "again" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_folder_follows_vllms_llama_layout(export):
    """What vLLM's Llama loader reads: LlamaForCausalLM config fields and HF tensor names, the
    vocabulary rows of the embedding and head, one dtype; nothing extra it would not map."""
    from safetensors import safe_open

    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    for key, value in {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rope_theta": THETA,
        "max_position_embeddings": SEQ,
        "vocab_size": 8000 + 8448,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }.items():
        assert config[key] == value, key
    assert config["hidden_size"] % config["num_attention_heads"] == 0 and config.get("rope_scaling") is None
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config["num_hidden_layers"]):
        names |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        names |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        names |= {
            f"model.layers.{i}.input_layernorm.weight",
            f"model.layers.{i}.post_attention_layernorm.weight",
        }
    with safe_open(str(export / "model.safetensors"), "np") as f:
        assert set(f.keys()) == names
        assert f.metadata()["format"] == "pt"  # transformers/vLLM refuse safetensors without it
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    v, d, hd = (
        config["vocab_size"],
        config["hidden_size"],
        config["hidden_size"] // config["num_attention_heads"],
    )
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == [v, d]
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == [config["num_key_value_heads"] * hd, d]
    assert shapes["model.layers.1.mlp.down_proj.weight"] == [d, config["intermediate_size"]]
    assert dtypes == {"F32"}
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == 2
    record = config[convert_hf.RECORD]
    assert (
        record["text_vocab_size"] == record["vision_id_offset"] == 8000
        and record["vision_vocab_size"] == 8448
    )


def test_vision_ids_map_a_record_as_lwmkit_packs_it(export):
    from lwmkit.pipelines.pack.formatting import vision_block

    layout = convert_hf.load_layout(str(export))
    tok = TextTokenizer.load(TOKENIZER)
    assert layout.vision_start_ids == tok.vision_start_ids and layout.vision_end_ids == tok.vision_end_ids
    codes = np.random.default_rng(2).integers(0, 8192, (3, 256))
    row = {"tokens": codes.reshape(-1).astype(np.int16).tolist(), "n_frames": 3}
    got = convert_hf.vision_ids(row, layout)
    ids, mask = vision_block(codes, layout)
    assert np.array_equal(got, np.where(mask, ids + 8000, ids)) and len(got) == len(ids)
    assert got[: len(tok.vision_start_ids)].tolist() == list(tok.vision_start_ids)
    n0 = len(tok.vision_start_ids)
    assert got[n0 + 256] == 8000 + 8192 and got[n0 + 3 * 257 - 1] == 8000 + 8193  # end of frame / of vision
    assert np.array_equal(convert_hf.vision_ids(codes, layout), got)


def test_hf_tokenizer_encodes_and_decodes_as_lwmkits(export, botchan):
    """Every text below (and every piece of the vocabulary, spelled out) encodes to lwmkit's ids
    and decodes back to lwmkit's text -- including the tokenizer's user-defined ``<vision>`` /
    ``</vision>`` symbols anywhere in a text."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")

    hf = transformers.AutoTokenizer.from_pretrained(str(export))
    tok = TextTokenizer.load(TOKENIZER)
    lines = [ln for ln in botchan.splitlines() if ln.strip()][:2000]
    edges = [
        "Hello world",
        " leading space",
        "   ",
        "a  b\n\nc",
        "naïve café 日本 🎉 \t",
        "x1y22z333",
        "",
        "<vision>",
        "</vision>",
        "<vision>x</vision>",
        "a<vision>b",
        " <vision>",
        "</vision> ASSISTANT:",
        "<vision><vision>",
        "You are a helpful assistant. USER: Describe this video.\n <vision>",
    ]
    pieces = [tok.processor.id_to_piece(i).replace("\u2581", " ") for i in range(tok.vocab_size)]
    for text in lines + edges + pieces + [p[1:] for p in pieces if p.startswith(" ")]:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf.decode(ids) == tok.decode(ids), text
    assert hf("hi").input_ids == [tok.bos_id, *tok.encode("hi")]  # BOS once, no EOS
    assert hf(botchan[:100_000], add_special_tokens=False).input_ids == tok.encode(botchan[:100_000])
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    assert (export / "tokenizer.model").read_bytes() == Path(TOKENIZER).read_bytes()


def test_text_only_checkpoint_and_bad_inputs(tmp_path, params, capsys, botchan, convert_kit):
    """A text model exports with no vision split and imports back text-only; a plain Llama
    folder imports with --format hf as with llama-hf; every bad input is one clear line."""
    from lwmkit.tokenizers.text import train as train_tokenizer
    from lwmkit.trainer.generate import load_model

    text_model = ModelConfig(**{**VISION.__dict__, "vision_vocab_size": 0})
    text_params = convert.without_vision(params)
    ckpt = convert_kit.checkpoint(  # no tokenizer file named: it must be given
        tmp_path / "ck", text_model, text_params, seq_len=SEQ, rope_theta=THETA, tokenizer=None
    )
    out = tmp_path / "text"
    assert "no lwmkit checkpoint" in convert_kit.refused(
        capsys, "export", str(tmp_path / "nope"), "--format", "hf", "--out", "o"
    )
    assert "pass --tokenizer tokenizer.model" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", str(out)
    )
    (tmp_path / "b.txt").write_text(botchan[:100_000])
    other = train_tokenizer([tmp_path / "b.txt"], tmp_path / "other", vocab_size=400)
    assert "is not the tokenizer the checkpoint was trained with" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", str(out), "--tokenizer", str(other)
    )
    assert "not both" in convert_kit.refused(
        capsys,
        "export",
        ckpt,
        "--format",
        "hf",
        "--out",
        str(out),
        "--tokenizer",
        TOKENIZER,
        "--no-tokenizer",
    )
    assert "go with --format hf" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "llama-hf", "--out", str(out), "--tokenizer", TOKENIZER
    )
    assert "--text-only goes with llama-hf" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", str(out), "--text-only"
    )
    assert convert_kit.run("export", ckpt, "--format", "hf", "--out", str(out), "--tokenizer", TOKENIZER) == 0
    assert "already holds an exported model" in convert_kit.refused(
        capsys, "export", ckpt, "--format", "hf", "--out", str(out), "--tokenizer", TOKENIZER
    )
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 8000 and convert_hf.RECORD not in config
    with pytest.raises(Exception, match="records no vision layout"):
        convert_hf.load_layout(str(out))
    assert convert_kit.run("import", str(out), "--format", "hf", "--out", str(tmp_path / "back")) == 0
    back = load_model(str(tmp_path / "back" / "import"))
    assert back.config.vision_vocab_size == 0 and convert_kit.same(back.params, text_params)

    # an lwmkit record that does not add up, and one --config contradicts
    (out / "config.json").write_text(
        json.dumps({**config, convert_hf.RECORD: {"text_vocab_size": 7000, "vision_vocab_size": 8448}})
    )
    assert "7000 text + 8448 vision ids; vocab_size is 8000" in convert_kit.refused(
        capsys, "import", str(out), "--format", "hf", "--out", str(tmp_path / "bad")
    )
    record = {
        "text_vocab_size": 8000,
        "vision_vocab_size": 8448,
    }  # adds up, but the tensors hold text rows only
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": 16448, convert_hf.RECORD: record}))
    assert "has 8000 rows; config.json's lwm_vocab says 8000 text + 8448 vision ids" in convert_kit.refused(
        capsys, "import", str(out), "--format", "hf", "--out", str(tmp_path / "bad")
    )


def test_unsupported_sentencepiece_model_writes_no_tokenizer_json(tmp_path, botchan, capsys):
    """A unigram model cannot become our BPE tokenizer.json: tokenizer.model only, with a warning."""
    import sentencepiece as spm

    from lwmkit.trainer.hf_tokenizer import SentencePieceModel, write_tokenizer_files

    (tmp_path / "b.txt").write_text(botchan[:100_000])
    spm.SentencePieceTrainer.Train(
        input=str(tmp_path / "b.txt"),
        model_prefix=str(tmp_path / "uni"),
        vocab_size=300,
        model_type="unigram",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    blob = (tmp_path / "uni.model").read_bytes()
    sp = SentencePieceModel.parse(blob)
    assert sp.unsupported() == "is not a BPE model" and len(sp.pieces) == 300
    files = write_tokenizer_files(blob, str(tmp_path), bos_id=1, eos_id=2, max_length=64, source="uni.model")
    assert [Path(f).name for f in files] == ["tokenizer.model", "tokenizer_config.json"]
    assert "is not a BPE model" in capsys.readouterr().err
    with pytest.raises(Exception, match="is not a SentencePiece model"):
        SentencePieceModel.parse(b"\xff\xff\xff")


def test_generation_restricted_to_text_after_a_video(export):
    """The README's recipe: a video question built with vision_ids, greedy answer with the vision
    ids suppressed -- every new id is a text id."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    folder = str(export)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    layout = convert_hf.load_layout(folder)
    codes = np.random.default_rng(3).integers(0, 8192, (2, 256))
    question = tok.encode(
        "You are a helpful assistant. USER: What happens in this video?\n", add_special_tokens=False
    )
    prompt = [
        tok.bos_token_id,
        *question,
        *convert_hf.vision_ids(codes, layout),
        *tok.encode("ASSISTANT:", add_special_tokens=False),
    ]
    vision = list(range(layout.text_vocab_size, model.config.vocab_size))
    out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, suppress_tokens=vision)
    new = out[0, len(prompt) :].tolist()
    assert len(new) > 0 and all(i < layout.text_vocab_size for i in new)
    free = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[
        0, len(prompt) :
    ].tolist()
    assert any(i >= layout.text_vocab_size for i in free)  # this random model prefers vision ids unrestricted
