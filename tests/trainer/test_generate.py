"""KV-cached greedy decoding: the cache path is the same model as the full-pass path.

Checked three ways: per-slot hidden states of prefill + cached steps equal a full forward
pass over the finished buffer (left padding, GQA, scanned and unrolled layers, fp32 and
bf16); greedy replies of the cached and uncached decoders are identical on a random model
and on a model trained until it continues arithmetic sequences (so argmaxes are not ties);
and every mesh (tensor- and sequence-sharded, where the cache is split by slots) decodes
with the cache and agrees with the uncached ring decoder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwmkit.schemas import ModelConfig
from lwmkit.trainer.generate import LoadedModel, greedy_generate, left_pad
from lwmkit.trainer.model import LWMModel, init_params, stack_layers

V = 64
SMALL = ModelConfig(text_vocab_size=96, vision_vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    mlp_dim=64, attention_block=16, loss_chunk=16, init_std=0.5)
# Trained below on sequences x[t+1] = x[t] + stride (mod 61, ids 3..63): the stride can only be
# read from two earlier tokens, so the replies depend on attention over the cache.
TRAINED = ModelConfig(text_vocab_size=V, vision_vocab_size=16, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      mlp_dim=128, attention_block=16, loss_chunk=16)


def _model(config: ModelConfig, params, scan: bool) -> LoadedModel:
    if scan:
        config, params = replace(config, scan_layers=True), stack_layers(params, config.n_layers)
    return LoadedModel(params, config, 10000.0, "s", 32, None, "mem", 0)


def _strided(rng: np.random.Generator, b: int, length: int) -> np.ndarray:
    start, stride = rng.integers(3, V, (b, 1)), rng.integers(1, 5, (b, 1))
    return (3 + (start - 3 + stride * np.arange(length)) % (V - 3)).astype(np.int32)


@pytest.fixture(scope="module")
def trained():
    net = LWMModel(TRAINED, 10000.0)

    def loss_fn(p, x):
        pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
        logits, _ = net.apply({"params": p}, x, jnp.zeros_like(x, bool), pos, jnp.ones_like(x),
                              method=LWMModel.logits)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()

    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s, x):
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    params = init_params(TRAINED, jax.random.PRNGKey(0))
    state, rng, losses = opt.init(params), np.random.default_rng(0), []
    for _ in range(40):
        params, state, loss = step(params, state, jnp.asarray(_strided(rng, 32, 32)))
        losses.append(float(loss))
    assert losses[-1] < 0.5 < 3.5 < losses[0]  # it learnt the task: argmaxes are decisive, not ties
    return params


def _prompts(rng: np.random.Generator, lengths: tuple[int, ...], vocab: int) -> list[list[int]]:
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("scan,vision,remat", [(False, 0, "none"), (False, 40, "full"), (True, 0, "dots"),
                                               (True, 40, "none")])
def test_cached_greedy_equals_uncached_on_random_model(scan: bool, vision: int, remat: str):
    config = replace(SMALL, vision_vocab_size=vision, remat=remat)  # remat configs decode too (cache: no remat)
    model = _model(config, init_params(config, jax.random.PRNGKey(1)), scan)
    prompts = _prompts(np.random.default_rng(0), (21, 9, 30, 1), 96)  # left padding: four prompt lengths
    cached = greedy_generate(model, prompts, max_new=12, eos_id=2, block=16)
    full = greedy_generate(model, prompts, max_new=12, eos_id=2, block=16, kv_cache=False)
    assert cached == full
    assert len({t for r in cached for t in r}) > 4  # not one repeated token: a real comparison
    assert sorted(k[-1] for k in model.decoders) == [False, True]  # one compiled decoder per path


@pytest.mark.parametrize("scan", [False, True])
def test_cached_greedy_equals_uncached_on_trained_model(trained, scan: bool):
    model = _model(TRAINED, trained, scan)
    seqs = _strided(np.random.default_rng(5), 4, 40)
    prompts = [seqs[i, :n].tolist() for i, n in enumerate((12, 5, 20, 3))]
    cached = greedy_generate(model, prompts, max_new=10, eos_id=2, block=16)
    assert cached == greedy_generate(model, prompts, max_new=10, eos_id=2, block=16, kv_cache=False)
    # The model continues the sequences it was trained on (also past its trained length, 32).
    right = [r == seqs[i, len(p):len(p) + 10].tolist() for i, (p, r) in enumerate(zip(prompts, cached, strict=True))]
    assert sum(right) >= 3, cached


def test_cached_path_stops_at_eos_like_the_uncached_one(trained):
    model = _model(TRAINED, trained, False)
    seqs = _strided(np.random.default_rng(7), 3, 30)
    prompts = [seqs[0, :10].tolist(), seqs[1, :6].tolist(), seqs[2, :8].tolist()]
    eos = int(seqs[0, 13])  # the 4th reply token of row 0 is "EOS": that row stops there
    cached = greedy_generate(model, prompts, max_new=8, eos_id=eos, block=16)
    assert cached == greedy_generate(model, prompts, max_new=8, eos_id=eos, block=16, kv_cache=False)
    assert cached[0] == seqs[0, 10:13].tolist()


@pytest.mark.parametrize("dtype,scan,atol", [("float32", False, 2e-5), ("float32", True, 2e-5),
                                             ("bfloat16", False, 0.1)])
def test_prefill_and_steps_reproduce_a_full_forward_pass(dtype: str, scan: bool, atol: float):
    """Every decoded slot's hidden state equals the full pass over the finished buffer, although
    prefill saw padding (not the real tokens) in the slots the steps later fill."""
    config = replace(SMALL, dtype=dtype, init_std=0.1, scan_layers=scan)
    params = init_params(replace(config, scan_layers=False), jax.random.PRNGKey(2))
    params = stack_layers(params, config.n_layers) if scan else params
    prompts = _prompts(np.random.default_rng(3), (13, 5, 8), 96)
    ids, seg, pos, end = left_pad(prompts, 24, 0)
    full_ids = np.where(np.arange(24) >= end, np.random.default_rng(4).integers(3, 96, ids.shape), ids)
    full_ids, ids, seg, pos = map(jnp.asarray, (full_ids, ids, seg, pos))
    no_vision = jnp.zeros(ids.shape, bool)
    net = LWMModel(config, 10000.0)
    want = net.apply({"params": params}, full_ids, no_vision, pos, seg)
    hidden, cache = net.clone(kv_cache="prefill").apply({"params": params}, ids, no_vision, pos, seg,
                                                        mutable=["cache"])
    np.testing.assert_allclose(np.asarray(hidden[:, :end], np.float32), np.asarray(want[:, :end], np.float32),
                               atol=atol)
    step = jax.jit(lambda c, t: net.clone(kv_cache="step").apply(
        {"params": params, **c}, jax.lax.dynamic_slice_in_dim(full_ids, t, 1, axis=1), no_vision[:, :1],
        jax.lax.dynamic_slice_in_dim(pos, t, 1, axis=1), seg, t[None], mutable=["cache"]))
    for t in range(end, 24):
        h, cache = step(cache, jnp.int32(t))
        np.testing.assert_allclose(np.asarray(h[:, 0], np.float32), np.asarray(want[:, t], np.float32), atol=atol)


def test_step_without_a_prefilled_cache_is_refused():
    params = init_params(SMALL, jax.random.PRNGKey(0))
    x = jnp.zeros((1, 1), jnp.int32)
    with pytest.raises(ValueError, match="prefill"):
        LWMModel(SMALL, kv_cache="step").apply({"params": params}, x, x.astype(bool), x, jnp.ones((1, 4), jnp.int32),
                                               jnp.zeros((1,), jnp.int32), mutable=["cache"])
    with pytest.raises(ValueError, match="kv_cache"):
        LWMModel(SMALL, kv_cache="bogus").apply({"params": params}, x, x.astype(bool), x, x + 1)


_MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from lwmkit.schemas import MeshConfig, ModelConfig
from lwmkit.trainer.generate import LoadedModel, greedy_generate, left_pad
from lwmkit.trainer.model import build_model
from lwmkit.trainer.mesh import make_mesh, param_shardings
from lwmkit.trainer.model import init_params
cfg = ModelConfig(text_vocab_size=96, vision_vocab_size=0, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  mlp_dim=64, attention_block=16, loss_chunk=16, init_std=0.5)
params = init_params(cfg, jax.random.PRNGKey(1))
prompts = [np.random.default_rng(0).integers(3, 96, size=n).tolist() for n in (40, 17)]
out = {}
for name, mc, cached in (("none", None, True), ("tp2", MeshConfig(data=1, fsdp=-1, tensor=2, sequence=1), True),
                         ("sp2", MeshConfig(data=1, fsdp=-1, tensor=1, sequence=2), True),
                         ("sp4", MeshConfig(data=1, fsdp=1, tensor=1, sequence=4), True),
                         ("sp2tp2", MeshConfig(data=1, fsdp=1, tensor=2, sequence=2), True),
                         ("sp4-uncached", MeshConfig(data=1, fsdp=1, tensor=1, sequence=4), False)):
    mesh = None if mc is None else make_mesh(mc)
    p = params if mesh is None else jax.device_put(params, param_shardings(params, mesh))
    model = LoadedModel(p, cfg, 10000.0, "s", 64, None, "mem", 0)
    out[name] = greedy_generate(model, prompts, max_new=6, eos_id=2, mesh=mesh, block=16, kv_cache=cached)
    print(name, [k[-1] for k in model.decoders], out[name])
assert len({str(v) for v in out.values()}) == 1, out
# The prefill's cache on an sp=4 mesh: each device holds a quarter of the slots.
mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1, sequence=4))
ids, seg, pos, _ = left_pad(prompts, 64, 0)
net = build_model(cfg, 10000.0, mesh).clone(kv_cache="prefill")
p = jax.device_put(params, param_shardings(params, mesh))
_, cache = jax.jit(lambda p, i, s, q: net.apply({"params": p}, i, jnp.zeros(i.shape, bool), q, s, mutable=["cache"]))(
    p, jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos))
shards = {a.addressable_shards[0].data.shape for a in jax.tree_util.tree_leaves(cache)}
print("cache-shards", sorted(shards))
assert shards == {(2, 16, 2, 8)}, shards
"""


@pytest.mark.slow
def test_every_mesh_decodes_with_a_cache_sharded_like_its_activations_and_agrees():
    """No mesh, tp, sp (the cache sharded over the sequence), sp x tp, and the uncached ring
    decoder all give the same replies; the sequence-sharded cache is split by slots."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for name in ("none", "tp2", "sp2", "sp4", "sp2tp2"):
        assert lines[name].startswith("[True]"), lines  # cached
    assert lines["sp4-uncached"].startswith("[False]")


def test_vision_prompts_decode_with_their_mask():
    """Prompts holding vision ids (a video needle prompt): the mask, left-padded with the prompt,
    reaches both decoders and the first reply token equals a plain forward pass with that mask."""
    model = _model(SMALL, init_params(SMALL, jax.random.PRNGKey(2)), False)
    rng = np.random.default_rng(3)
    prompts, masks = [], []
    for n in (17, 6):
        mask = np.zeros(n, bool)
        mask[2 : n - 2] = True  # text, a vision run, text: the needle prompt's shape
        ids = np.where(mask, rng.integers(0, 40, n), rng.integers(3, 96, n))
        prompts.append(ids.tolist())
        masks.append(mask.tolist())
    cached = greedy_generate(model, prompts, max_new=6, eos_id=2, block=16, vision=masks)
    full = greedy_generate(model, prompts, max_new=6, eos_id=2, block=16, vision=masks, kv_cache=False)
    assert cached == full
    as_text = greedy_generate(model, prompts, max_new=6, eos_id=2, block=16)
    assert as_text != cached  # the mask matters: vision ids are another embedding
    net = LWMModel(SMALL, 10000.0)
    for ids, mask, reply in zip(prompts, masks, cached, strict=True):
        x = jnp.asarray([ids])
        text, _ = net.apply({"params": model.params}, x, jnp.asarray([mask]), jnp.arange(len(ids))[None],
                            jnp.ones_like(x), method=LWMModel.logits)  # fmt: skip
        assert reply[0] == int(jnp.argmax(text[0, -1]))
    with pytest.raises(ValueError, match="vision mask"):
        greedy_generate(model, prompts, max_new=2, eos_id=2, vision=masks[:1])
