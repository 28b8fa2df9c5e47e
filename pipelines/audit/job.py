"""Recount what a packed shard set really holds, without trusting its manifest.

Each shard is streamed once (tar members as they arrive, hashed on the way), so memory is
bounded by one sample, never by a shard or by the set; tallies are fixed-size and merge
associatively (``audit_stats.py``). Two ways to run the same per-shard function:

* a **local pass** (the default for sets under ``beam_min_bytes``): no job start-up cost,
  which dominates for the small sets a CI gate usually audits;
* a **Beam job** (``recount_job.py``: ``ListShards | Spread | RecountShards | Merge | Write``)
  for big sets, one shard per element, on DirectRunner (multi-process) or any runner.

Every shard is read even after a bad one: a missing shard, a checksum or size mismatch,
an unreadable tar and every invalid sample are recorded against the shard that holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lwmkit.pipelines.audit.compare import AuditResult, compare
from lwmkit.pipelines.audit.shards import ShardSetRef, open_shard_set, recount_shard, unlisted_files
from lwmkit.pipelines.audit.stats import Recount
from lwmkit.runtime.progress import bar, step
from lwmkit.schemas import ContractError, MixtureConfig


@dataclass(frozen=True)
class AuditConfig:
    """How to audit a shard set."""

    tolerance: float = 0.02  # largest allowed |realised share - target share| per source (share points)
    runner: str = "auto"  # auto | local | a Beam runner name (DirectRunner, DataflowRunner, ...)
    beam_min_bytes: int = 4 << 30  # auto: sets at least this big run as a Beam job
    max_problems_per_shard: int = 20  # problems listed per shard (all are counted)

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ContractError("must lie in [0, 1) (a share difference)", field="tolerance")
        if not self.runner:
            raise ContractError("must be 'auto', 'local' or a Beam runner name", field="runner")
        if self.beam_min_bytes < 0:
            raise ContractError("must be >= 0", field="beam_min_bytes")
        if self.max_problems_per_shard < 1:
            raise ContractError("must be >= 1", field="max_problems_per_shard")


def recount_local(ref: ShardSetRef, *, cap: int = 20) -> Recount:
    """The recount as one streamed pass in this process (shard after shard)."""
    total = Recount()
    with bar(f"recounting {len(ref.shards)} shards", total=len(ref.shards)) as advance:
        for entry in ref.shards:
            total = total.merge(recount_shard(ref, entry, cap=cap))
            advance()
    return total


def recount(ref: ShardSetRef, config: AuditConfig, beam_args: Sequence[str] = ()) -> Recount:
    """Recount locally or as a Beam job, as ``config.runner`` says (``auto``: by set size)."""
    runner = config.runner
    if runner == "auto":
        runner = (
            "DirectRunner" if ref.total_bytes >= config.beam_min_bytes and len(ref.shards) > 1 else "local"
        )
    if runner == "local":
        return recount_local(ref, cap=config.max_problems_per_shard)
    from lwmkit.pipelines.audit.recount_job import recount_beam  # loads Beam only when the recount is a job

    step(f"recounting {len(ref.shards)} shards ({ref.total_bytes / 1e9:.2f} GB) as a Beam job on {runner}")
    return recount_beam(ref, runner=runner, beam_args=beam_args, cap=config.max_problems_per_shard)


def audit(
    path: str,
    *,
    mixture: MixtureConfig | None = None,
    mixture_from: str | None = None,
    config: AuditConfig | None = None,
    beam_args: Sequence[str] = (),
) -> AuditResult:
    """Recount the shard set at ``path`` (folder or manifest.json, local or bucket) and judge it
    against its manifest and against ``mixture`` (default: the mixture the manifest records)."""
    config = config or AuditConfig()
    ref = open_shard_set(path)
    step(f"auditing {ref.root}: {len(ref.shards)} shards, {ref.total_bytes / 1e6:.1f} MB")
    rc = recount(ref, config, beam_args)
    return compare(ref, rc, mixture=mixture, mixture_from=mixture_from, tolerance=config.tolerance,
                   unlisted=unlisted_files(ref))  # fmt: skip
