"""Converters: LWM streaming msgpack and LLaMA safetensors round trips, RoPE layouts, text -> vision."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lwmkit.schemas import ContractError, ModelConfig
from lwmkit.trainer import convert
from lwmkit.trainer.model import apply_rope, init_params

TEXT = ModelConfig(text_vocab_size=96, vision_vocab_size=0, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48)
VISION = ModelConfig(text_vocab_size=96, vision_vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48)


@pytest.fixture(scope="module")
def params():
    return init_params(VISION, jax.random.PRNGKey(0))


def test_lwm_streaming_round_trip(params, tmp_path, convert_kit):
    path = str(tmp_path / "streaming_params")
    convert.save_lwm(params, path)
    import msgpack  # the file follows EasyLM's layout: (["params", ...path], to_bytes(array)) pairs

    with open(path, "rb") as f:
        keys = [tuple(k) for k, _ in msgpack.Unpacker(f, max_buffer_size=0)]
    assert ("params", "transformer", "vte", "embedding") in keys and ("params", "lm_head", "kernel") in keys
    assert ("params", "transformer", "h", "1", "feed_forward", "w2", "kernel") in keys
    assert convert_kit.same(convert.load_lwm(path, VISION), params)
    with pytest.raises(ContractError, match="shape"):
        convert.load_lwm(path, ModelConfig(**{**VISION.__dict__, "mlp_dim": 64}))


@pytest.mark.parametrize("layout", ["hf", "meta"])
def test_llama_round_trip(params, tmp_path, layout, convert_kit):
    text = convert.without_vision(params)
    path = str(tmp_path / "model.safetensors")
    convert.save_llama(text, TEXT, path, layout)
    from safetensors.numpy import load_file

    tensors = load_file(path)
    q = "model.layers.0.self_attn.q_proj.weight" if layout == "hf" else "layers.0.attention.wq.weight"
    k = "model.layers.0.self_attn.k_proj.weight" if layout == "hf" else "layers.0.attention.wk.weight"
    assert tensors[q].shape == (32, 32) and tensors[k].shape == (16, 32)  # [out, in], GQA kv 2 x 8
    assert convert_kit.same(convert.load_llama(path, TEXT, layout), text)
    del tensors[q]
    with pytest.raises(ContractError, match="tensor is missing"):
        convert.from_llama(tensors, TEXT, layout)


def _rotate_half(x, positions, theta):
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)
    ang = positions[:, None] * freqs[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def test_hf_permutation_matches_rotate_half_rope(params):
    """Scores q.k under our interleaved RoPE on our weights equal HF's rotate-half RoPE on the
    exported HF weights: the permutation is the right one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    pos = np.arange(5, dtype=np.float32) * 3
    wq = np.asarray(params["transformer"]["h"]["0"]["attention"]["wq"]["kernel"])
    hf = convert.to_llama(convert.without_vision(params), TEXT, "hf")["model.layers.0.self_attn.q_proj.weight"]
    ours = np.asarray(apply_rope((x @ wq).reshape(1, 5, 4, 8), pos.astype(np.int32)[None], 1e4))[0]
    theirs = _rotate_half((x @ hf.T).reshape(5, 4, 8).transpose(1, 0, 2), pos, 1e4).transpose(1, 0, 2)
    scores = lambda a: np.einsum("qhd,khd->hqk", a, a)  # noqa: E731 - relative-position invariant
    np.testing.assert_allclose(scores(ours), scores(theirs), rtol=2e-4, atol=2e-4)


def test_text_to_vision_adds_fresh_parameters(params, convert_kit):
    text = convert.without_vision(params)
    assert convert.missing_vision(text, params) == list(convert.VISION_KEYS)
    grown = convert.add_vision_params(text, VISION, jax.random.PRNGKey(3))
    vte, head = grown["transformer"]["vte"]["embedding"], grown["vision_head"]["kernel"]
    assert vte.shape == (40, 32) and head.shape == (32, 40)
    assert abs(float(np.std(np.asarray(vte))) - 0.02) < 0.003 and abs(float(np.std(np.asarray(head))) - 0.02) < 0.003
    assert convert_kit.same(convert.without_vision(grown), text)  # the text weights are untouched
    with pytest.raises(ContractError, match="already has"):
        convert.add_vision_params(grown, VISION, jax.random.PRNGKey(3))
    with pytest.raises(ContractError, match="no vision vocabulary"):
        convert.add_vision_params(text, TEXT, jax.random.PRNGKey(3))


def test_llama_shape_errors_name_the_source_tensor(params):
    tensors = convert.to_llama(convert.without_vision(params), TEXT, "hf")
    tensors["model.layers.1.mlp.down_proj.weight"] = np.zeros((32, 64), np.float32)
    with pytest.raises(ContractError, match=r"'model.layers.1.mlp.down_proj.weight': shape \(32, 64\) != \(32, 48\)"):
        convert.from_llama(tensors, TEXT, "hf")
