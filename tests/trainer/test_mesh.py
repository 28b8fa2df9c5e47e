"""Mesh creation, the sharding rules table, and the loss-compare across mesh shapes.

The mesh-shape equality (sp=8; sp=4 x fsdp=2; sp=2 x tp=2 x dp=2 give the loss and gradients
of sp=1) needs 8 emulated devices before JAX starts, so this file runs itself in a
subprocess that prints one JSON line; the tests assert on it.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.training import MeshConfig, ModelConfig
from lwmkit.trainer.mesh import AXES, make_mesh, param_shardings, spec_for

CFG = ModelConfig(text_vocab_size=64, vision_vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                  mlp_dim=64, attention_block=8, loss_chunk=8)
B, L = 4, 128
MESHES = {"sp8": (1, 1, 1, 8, "zigzag"), "sp4-fsdp2": (1, 2, 1, 4, "striped"), "sp2-tp2-dp2": (2, 1, 2, 2, "zigzag"),
          "sp8-contiguous-allgather": (1, 1, 1, 8, "contiguous")}


def random_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Packed rows with examples straddling device boundaries, vision blocks and padding."""
    r = np.random.default_rng(seed)
    seg, pos = np.zeros((B, L), np.int32), np.zeros((B, L), np.int32)
    for b in range(B):
        bounds = [0, *sorted(r.choice(np.arange(3, L - 8), 3, replace=False)), L - 5]
        for i, (a, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            seg[b, a:e], pos[b, a:e] = i + 1, np.arange(e - a)
    vm = (r.random((B, L)) < 0.3) & (seg > 0)
    ids = np.where(vm, r.integers(0, 32, (B, L)), r.integers(0, 64, (B, L))).astype(np.int32)
    return {"input_ids": ids, "target_ids": np.roll(ids, -1, 1), "loss_weights": r.random((B, L)).astype(np.float32) * (seg > 0),
            "segment_ids": seg, "positions": pos, "vision_mask": vm, "target_vision_mask": np.roll(vm, -1, 1)}


# ----------------------------------------------------------------------------- 8 devices
def _run_mesh(mesh, layout, batch, params, config):
    from lwmkit.trainer.loss import loss_and_metrics
    from lwmkit.trainer.mesh import batch_sharding
    from lwmkit.trainer.ring_attention import layout_permutation

    n = mesh.shape["sp"] if mesh is not None else 1
    perm = layout_permutation(L, n, layout)  # the data boundary's job
    batch = {k: jnp.asarray(v[:, perm]) for k, v in batch.items()}
    if mesh is not None:
        batch = jax.device_put(batch, batch_sharding(mesh, B))
        params = jax.device_put(params, param_shardings(params, mesh))
    fn = jax.jit(jax.value_and_grad(lambda p, b: loss_and_metrics(p, b, config=config, rope_theta=1e4, mesh=mesh,
                                                                  permutation=perm), has_aux=True))
    (loss, metrics), grads = fn(params, batch)
    return float(loss), grads, {k: float(v) for k, v in metrics.items()}


def _multidevice_cases() -> dict[str, dict[str, float]]:
    from lwmkit.trainer.model import init_params

    assert jax.device_count() == 8
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = random_batch()
    loss0, grads0, metrics0 = _run_mesh(None, "contiguous", batch, params, CFG)
    out = {"sp1": {"loss": loss0}}
    for name, (dp, fsdp, tp, sp, layout) in MESHES.items():
        mesh = make_mesh(MeshConfig(data=dp, fsdp=fsdp, tensor=tp, sequence=sp))
        cfg = ModelConfig(**{**CFG.__dict__, "attention_impl": "allgather" if "allgather" in name else "ring"})
        loss, grads, metrics = _run_mesh(mesh, layout, batch, params, cfg)
        diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, grads0)
        out[name] = {"loss": abs(loss - loss0), "grads": max(jax.tree_util.tree_leaves(diffs)),
                     "metrics": max(abs(metrics[k] - metrics0[k]) for k in metrics0)}
    wq = param_shardings(params, make_mesh(MeshConfig(data=1, fsdp=2, tensor=2, sequence=2)))
    out["wq_spec"] = {"spec": str(wq["transformer"]["h"]["0"]["attention"]["wq"]["kernel"].spec)}
    return out


@pytest.fixture(scope="module")
def multidevice(run_on_devices) -> dict[str, dict[str, float]]:
    return run_on_devices(__file__, 8)  # this file's __main__ on 8 emulated devices


@pytest.mark.slow
@pytest.mark.parametrize("mesh", list(MESHES))
def test_mesh_shapes_give_the_loss_and_grads_of_one_device(multidevice, mesh):
    got = multidevice[mesh]
    assert got["loss"] <= 1e-5 and got["metrics"] <= 1e-4, got
    assert got["grads"] <= 1e-5, got


@pytest.mark.slow
def test_params_are_placed_by_the_rules_table(multidevice):
    assert multidevice["wq_spec"]["spec"] == str(P(("fsdp", "sp"), "tp"))


# ----------------------------------------------------------------------------- 1 process
def test_make_mesh_resolves_the_free_axis():
    devices = jax.devices()[:1]
    mesh = make_mesh(MeshConfig(), devices)
    assert mesh.axis_names == AXES and dict(mesh.shape) == {"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}


def test_make_mesh_rejects_a_mesh_the_devices_cannot_fill():
    with pytest.raises(ContractError, match="devices"):
        make_mesh(MeshConfig(fsdp=1, sequence=2), jax.devices()[:1])


def test_rules_table_shards_lwm_params_over_fsdp_sp_and_tp():
    mesh = AbstractMesh((1, 2, 2, 2), AXES)
    model = ("fsdp", "sp")
    assert spec_for("transformer/h/3/attention/wq/kernel", (4096, 4096), mesh) == P(model, "tp")
    assert spec_for("transformer/h/3/attention/wo/kernel", (4096, 4096), mesh) == P("tp", model)
    assert spec_for("transformer/h/3/feed_forward/w2/kernel", (11008, 4096), mesh) == P("tp", model)
    assert spec_for("transformer/wte/embedding", (32000, 4096), mesh) == P("tp", model)
    assert spec_for("transformer/h/attention/wq/kernel", (32, 4096, 4096), mesh) == P(None, model, "tp")  # scanned
    assert spec_for("transformer/h/3/ffn_norm/kernel", (4096,), mesh) == P(None)
    assert spec_for("opt_state/0/mu/lm_head/kernel", (4096, 32000), mesh) == P(model, "tp")  # optimizer state
    assert spec_for("opt_state/0/count", (), mesh) == P()


def test_indivisible_dims_are_replicated_not_an_error():
    mesh = AbstractMesh((1, 2, 2, 2), AXES)
    assert spec_for("lm_head/kernel", (4096, 32001), mesh) == P(("fsdp", "sp"), None)


if __name__ == "__main__":  # the 8-device subprocess of `multidevice`
    print(json.dumps(_multidevice_cases()))
