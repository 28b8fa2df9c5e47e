"""Sampling by mixture: which examples (and how many copies) make each source's token share.

Given every source's formatted examples (id and token count) and the mixture's weights,
:func:`plan_mixture` fixes the output size and, per source, how many whole epochs to take
and a cut-off on a seeded per-example key for the last, partial epoch. Examples are taken
in key order until the source's quota of tokens is met, so the realised share misses the
target by less than one example. Selection is a pure function of (seed, source, epoch,
example id): the same on every worker, runner and re-run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.mixture import MixtureConfig

KEY_SPACE = 1 << 64


def example_key(seed: int, purpose: str, source: str, epoch: int, example_id: str) -> int:
    """A 64-bit key, uniform and deterministic in (seed, purpose, source, epoch, id)."""
    text = "\x00".join((str(seed), purpose, source, str(epoch), example_id))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class SourcePlan:
    """How much of one source the output takes."""

    name: str
    available_examples: int
    available_tokens: int
    quota_tokens: float  # target: share * output tokens
    full_epochs: int  # every example is taken this many times ...
    cutoff: int  # ... plus once more when its key in epoch `full_epochs` is below this
    planned_tokens: int  # what the selection really takes
    planned_examples: int

    @property
    def epochs(self) -> int:
        """Epochs touched (a partial one counts)."""
        return self.full_epochs + (1 if self.cutoff > 0 else 0)

    def copies(self, seed: int, example_id: str) -> list[int]:
        """The epochs in which example ``example_id`` is taken (empty: not taken)."""
        epochs = list(range(self.full_epochs))
        if self.cutoff and example_key(seed, "sample", self.name, self.full_epochs, example_id) < self.cutoff:
            epochs.append(self.full_epochs)
        return epochs


@dataclass(frozen=True)
class MixturePlan:
    """The output's size and each source's selection; ``exhausted_by`` names the source that
    ended a ``stop`` mixture (None when the requested total was reached)."""

    output_tokens: float
    sources: Mapping[str, SourcePlan]
    exhausted_by: str | None = None

    def counts(self) -> dict[str, int]:
        """Policy counts for the manifest: epochs, repeated and unused examples per source."""
        out: dict[str, int] = {}
        for name, sp in sorted(self.sources.items()):
            out[f"epochs.{name}"] = sp.epochs
            out[f"repeated_examples.{name}"] = max(0, sp.planned_examples - sp.available_examples)
            unused = sp.available_examples - sp.planned_examples if sp.full_epochs == 0 else 0
            out[f"unused_examples.{name}"] = max(0, unused)
        if self.exhausted_by:
            out[f"exhausted_stop.{self.exhausted_by}"] = 1
        return out


class EmptySource(ContractError):
    """A source with no usable examples left (pack explains why: ``pipelines/pack/rejects.py``)."""

    def __init__(self, source_name: str) -> None:
        super().__init__(
            "has no usable examples (see the dead letters and policy counts)", field=f"sources.{source_name}"
        )
        self.source_name = source_name


def plan_mixture(stats: Mapping[str, Iterable[tuple[str, int]]], mixture: MixtureConfig) -> MixturePlan:
    """The plan for ``stats`` = {source: [(example_id, n_tokens), ...]} under ``mixture``.

    Raises:
        ContractError: a source has no usable examples, or would need more than
            ``max_epochs`` epochs to meet its share.
    """
    items = {s.name: sorted(stats.get(s.name, ())) for s in mixture.sources}
    totals = {name: sum(n for _, n in rows) for name, rows in items.items()}
    for name, total in totals.items():
        if total == 0:
            raise EmptySource(name)
    shares = mixture.shares
    need = {name: totals[name] / shares[name] for name in totals}  # output size this source supports alone
    exhausted_by = None
    if mixture.on_exhausted == "repeat":
        output = float(mixture.total_tokens or max(need.values()))
    else:
        smallest = min(need, key=lambda n: (need[n], n))
        output = float(min(mixture.total_tokens or math.inf, need[smallest]))
        if mixture.total_tokens is None or mixture.total_tokens > need[smallest]:
            exhausted_by = smallest
    plans = {
        name: _plan_source(name, items[name], totals[name], shares[name] * output, mixture) for name in items
    }
    return MixturePlan(output, plans, exhausted_by)


def _plan_source(
    name: str, rows: list[tuple[str, int]], total: int, quota: float, mixture: MixtureConfig
) -> SourcePlan:
    # A relative tolerance keeps float noise (quota 0.9999999 * total) from costing an epoch.
    full = int(math.floor(quota / total + 1e-9))
    rest = quota - full * total
    keyed = sorted((example_key(mixture.seed, "sample", name, full, eid), eid, n) for eid, n in rows)
    taken, taken_tokens, cutoff = 0, 0, 0
    if rest > 0.5:
        cutoff = KEY_SPACE
        for key, _, n in keyed:
            if taken_tokens + n / 2 > rest:  # take while that brings us nearer the quota
                cutoff = key
                break
            taken, taken_tokens = taken + 1, taken_tokens + n
        if taken == 0:
            cutoff = 0
    plan = SourcePlan(
        name=name,
        available_examples=len(rows),
        available_tokens=total,
        quota_tokens=quota,
        full_epochs=full,
        cutoff=cutoff,
        planned_tokens=full * total + taken_tokens,
        planned_examples=full * len(rows) + taken,
    )
    if plan.epochs > mixture.max_epochs:
        raise ContractError(
            f"source '{name}' would be repeated over {plan.epochs} epochs to reach its share "
            f"({total} tokens available, {quota:.0f} wanted); raise max_epochs, lower its weight or set total_tokens",
            field="max_epochs",
        )
    return plan
