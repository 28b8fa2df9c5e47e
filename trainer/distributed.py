"""Multi-host start-up: ``jax.distributed`` from flags or the environment.

Every host runs the same command. The coordinator address, the number of processes and this
process's id come from flags, else from ``LWMKIT_COORDINATOR`` / ``LWMKIT_NUM_PROCESSES`` /
``LWMKIT_PROCESS_ID`` (or JAX's own ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``). With none of them set a run is single-process, unless ``auto`` asks JAX
to detect a cluster (TPU pods, SLURM, Open MPI). On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lwmkit.schemas import ContractError

_ENV = {
    "coordinator": ("LWMKIT_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("LWMKIT_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("LWMKIT_PROCESS_ID", "JAX_PROCESS_ID"),
}


@dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator listens and who this process is."""

    coordinator: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # let JAX detect the cluster (TPU pod, SLURM, MPI)

    def __post_init__(self) -> None:
        given = [self.coordinator is not None, self.num_processes is not None, self.process_id is not None]
        if any(given) and not all(given):
            raise ContractError("give coordinator, num_processes and process_id together", field="distributed")
        if self.num_processes is not None:
            if self.num_processes < 1:
                raise ContractError("must be >= 1", field="num_processes")
            if not 0 <= self.process_id < self.num_processes:
                raise ContractError(f"must lie in [0, {self.num_processes})", field="process_id")
        if self.coordinator is not None and ":" not in self.coordinator:
            raise ContractError(f"{self.coordinator!r} is not host:port", field="coordinator")

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None


def from_env(
    env: Mapping[str, str] | None = None,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> DistributedConfig:
    """Flags win over the environment, field by field."""
    env = os.environ if env is None else env

    def pick(name: str, flag):
        if flag is not None:
            return flag
        for var in _ENV[name]:
            if env.get(var):
                return env[var]
        return None

    n, pid = pick("num_processes", num_processes), pick("process_id", process_id)
    try:
        return DistributedConfig(
            coordinator=pick("coordinator", coordinator),
            num_processes=None if n is None else int(n),
            process_id=None if pid is None else int(pid),
            auto=auto,
        )
    except ValueError as err:
        if isinstance(err, ContractError):
            raise
        raise ContractError(f"not an integer ({err})", field="distributed") from None


def initialize(cfg: DistributedConfig) -> bool:
    """Start ``jax.distributed`` if configured (call before any other JAX use); True if it did."""
    if not cfg.enabled:
        return False
    import jax

    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        # CPU processes need a collectives backend to exchange data across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.auto and cfg.coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator, num_processes=cfg.num_processes, process_id=cfg.process_id
        )
    return True
