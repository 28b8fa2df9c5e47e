"""Multi-host: two local CPU processes join through jax.distributed (flags from the
environment), each loads only its own piece of the global batch, and a jitted reduction over
the global array sees the whole batch."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lwmkit.schemas import ContractError, ShardSet
from lwmkit.trainer.data import BatchPlan, ShardReader
from lwmkit.trainer.distributed import DistributedConfig, from_env

CHILD = """
import json, sys
from lwmkit.trainer.distributed import from_env, initialize
assert initialize(from_env())
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from lwmkit.schemas import MeshConfig, ShardSet
from lwmkit.trainer.data import BatchPlan, ShardReader, global_batch, local_pieces
from lwmkit.trainer.mesh import batch_sharding, make_mesh

shards = ShardSet.open(sys.argv[1])
mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=1, sequence=2))
sh = batch_sharding(mesh, 4)
plan = BatchPlan(0, "t", shards.manifest.sha256, shards.manifest.n_sequences, 4)
with ShardReader(shards, plan) as reader:
    batch = global_batch(reader, 3, sh)
total = jax.jit(lambda x: jnp.sum(x * (1 + jnp.arange(x.shape[0])[:, None])), out_shardings=NamedSharding(mesh, P()))(batch["input_ids"])
print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
                  "sum": int(total), "pieces": sorted(set(local_pieces(sh, (4, shards.manifest.seq_len)).values()))}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_shards(root: Path, writer) -> None:
    spec = importlib.util.spec_from_file_location("_lwm_test_data", Path(__file__).with_name("test_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_rows(writer, str(root), n_rows=10, seq_len=16, per_shard=3)


def test_config_from_flags_and_env():
    env = {"LWMKIT_COORDINATOR": "10.0.0.1:1234", "LWMKIT_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert from_env(env) == DistributedConfig("10.0.0.1:1234", 4, 2)
    assert from_env(env, process_id=3).process_id == 3  # flags win
    assert not from_env({}).enabled
    with pytest.raises(ContractError, match="together"):
        from_env({"LWMKIT_COORDINATOR": "h:1"})
    with pytest.raises(ContractError, match="process_id"):
        from_env(env, process_id=4)


@pytest.mark.slow
def test_two_processes_share_one_global_batch(tmp_path, shard_set_writer):
    _write_shards(tmp_path, shard_set_writer)
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   LWMKIT_COORDINATOR=f"127.0.0.1:{port}", LWMKIT_NUM_PROCESSES="2", LWMKIT_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:]))
    shards = ShardSet.open(str(tmp_path))
    plan = BatchPlan(0, "t", shards.manifest.sha256, 10, 4)
    with ShardReader(shards, plan, prefetch=0) as reader:
        full = reader.load(3, [((0, 4), (0, 16))])[((0, 4), (0, 16))]["input_ids"].astype(np.int64)
    expected = int((full * (1 + np.arange(4))[:, None]).sum())
    assert [o["process"] for o in outs] == [0, 1] and all(o["processes"] == 2 and o["devices"] == 4 for o in outs)
    assert all(o["sum"] == expected for o in outs)
    # each host loaded only its own rows (batch over fsdp=2 spans the two hosts)
    rows = [{tuple(piece[0]) for piece in o["pieces"]} for o in outs]
    assert rows[0].isdisjoint(rows[1])
