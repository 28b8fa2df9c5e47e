"""Device mesh and the ONE table of sharding rules (params, optimizer state, activations).

Axes are LWM's: ``dp`` (data), ``fsdp`` (data, with params sharded), ``tp`` (tensor: heads
and MLP columns), ``sp`` (sequence: ring attention). Parameters are sharded over
``(fsdp, sp)`` on their model dimension and over ``tp`` on their head/MLP/vocab dimension,
as LWM does; a dimension that a mesh axis product does not divide is replicated instead
(so tiny test models run on any mesh). Optimizer states (optax ``mu``/``nu``) end in the same
parameter paths, so :func:`param_shardings` shards them too; scalars are replicated.
Activations ``[B, L, ...]`` put B over ``(dp, fsdp)`` and L over ``sp``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.training import MeshConfig

AXES: tuple[str, str, str, str] = ("dp", "fsdp", "tp", "sp")
BATCH = ("dp", "fsdp")
MODEL = ("fsdp", "sp")  # the model (d_model) dimension of every weight matrix
# Path regex -> partition of the array's trailing dimensions (a leading scanned-layer axis, if
# any, is replicated). Checked in order; the first match wins; no match = replicated.
PARAM_RULES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (r"(wte|vte)/embedding$", ("tp", MODEL)),  # [vocab, d]
    (r"attention/(wq|wk|wv)/kernel$", (MODEL, "tp")),  # [d, heads*head_dim]
    (r"attention/wo/kernel$", ("tp", MODEL)),  # [heads*head_dim, d]
    (r"feed_forward/(w1|w3)/kernel$", (MODEL, "tp")),  # [d, mlp]
    (r"feed_forward/w2/kernel$", ("tp", MODEL)),  # [mlp, d]
    (r"(lm_head|vision_head)/kernel$", (MODEL, "tp")),  # [d, vocab]
    (r"(attention_norm|ffn_norm|ln_f)/kernel$", (None,)),  # [d]
)
# Activation kind -> partition. ``heads``: [B, L, H, head_dim]; ``hidden``: [B, L, d].
ACTIVATION_RULES: dict[str, tuple[Any, ...]] = {
    "batch": (BATCH, "sp"),
    "hidden": (BATCH, "sp", None),
    "heads": (BATCH, "sp", "tp", None),
    "mlp": (BATCH, "sp", "tp"),
    "table": (None, None),  # an embedding table, gathered before the lookup (as FSDP gathers weights)
}


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``(dp, fsdp, tp, sp)``; the one ``-1`` axis takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor, "sequence": cfg.sequence}
    known = math.prod(n for n in sizes.values() if n != -1)
    if len(devices) % known:
        raise ContractError(f"{len(devices)} devices are not divisible by the fixed axes ({known})", field="mesh")
    for name, n in sizes.items():
        if n == -1:
            sizes[name] = len(devices) // known
    total = math.prod(sizes.values())
    if total != len(devices):
        raise ContractError(
            f"mesh {sizes} needs {total} devices but {len(devices)} are available", field="mesh"
        )
    shape = (sizes["data"], sizes["fsdp"], sizes["tensor"], sizes["sequence"])
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in names if a in mesh.shape)


def _fit(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> P:
    """Drop axes absent from the mesh, and replicate dims the axis product does not divide."""
    out = []
    for axes, dim in zip(spec, shape, strict=True):
        if axes is not None:
            names = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a in mesh.shape)
            axes = names if names and dim % _axis_size(mesh, names) == 0 else None
        out.append(axes)
    return P(*out)


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh) -> P:
    """The partition of one array at ``path`` ('transformer/h/0/attention/wq/kernel')."""
    for pattern, rule in PARAM_RULES:
        if re.search(pattern, path) and len(shape) >= len(rule):
            lead = (None,) * (len(shape) - len(rule))  # scanned layers: [n_layers, ...]
            return _fit(lead + tuple(rule), shape, mesh)
    return P()


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """Pytree of ``NamedSharding`` matching ``params`` (or an optimizer state over them)."""

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, spec_for(_path_str(path), shape, mesh))

    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, batch_size: int | None = None) -> NamedSharding:
    """Sharding of ``[B, L]`` batch arrays: B over (dp, fsdp), L over sp."""
    spec = ACTIVATION_RULES["batch"]
    if batch_size is None:
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, _fit(spec, (batch_size, mesh.shape["sp"]), mesh))


def activation_constraint(mesh: Mesh | None) -> Callable[[jax.Array, str], jax.Array]:
    """``constrain(x, kind)``: pin an activation to its rule (identity without a mesh)."""
    if mesh is None:
        return lambda x, kind: x

    def constrain(x: jax.Array, kind: str) -> jax.Array:
        spec = _fit(ACTIVATION_RULES[kind], x.shape, mesh)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return constrain


def describe(mesh: Mesh) -> str:
    """One line for logs: ``dp=1 fsdp=2 tp=1 sp=4 (8 devices)``."""
    return " ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names) + f" ({mesh.devices.size} devices)"
