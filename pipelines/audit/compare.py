"""Set the declared mixture, the manifest and the recount side by side, and judge.

Two kinds of failure, each with its own exit status so a CI gate can tell them apart:

* **integrity** (exit 3): a shard missing, a shard whose bytes, size or sample count differ
  from the manifest's entry, an invalid sample, a manifest that breaks its contract, or
  manifest totals the shards do not bear out (a manifest edited to lie);
* **drift** (exit 1): a source whose realised token share is further than the tolerance
  from its target share (absolute share points), or a source the mixture never declared.

Warnings (unlisted files beside the manifest, a mixture file that differs from the one the
set was packed with, no declared mixture at all) are reported and never fail the audit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lwmkit.pipelines.audit.shards import ShardSetRef
from lwmkit.pipelines.audit.stats import Recount, Tally, share
from lwmkit.schemas import ContractError, Manifest, MixtureConfig, TokenCounts, from_dict

INTEGRITY = ("manifest_invalid", "missing_shard", "corrupt_shard", "manifest_mismatch")
DRIFT = ("drift", "undeclared_source")
EXIT_OK, EXIT_DRIFT, EXIT_INTEGRITY = 0, 1, 3
EXIT_UNUSABLE, EXIT_INTERNAL = 2, 4  # set by the CLI: a bad input or flag; a crash of the audit itself
_COUNT_FIELDS = ("examples", "tokens", "loss_tokens", "vision_tokens")


@dataclass(frozen=True)
class Finding:
    """One thing the audit found; ``subject`` is the shard, source or file it is about."""

    kind: str
    subject: str
    message: str

    @property
    def severity(self) -> str:
        return "error" if self.kind in INTEGRITY + DRIFT else "warning"


@dataclass(frozen=True)
class SourceRow:
    """One source: target share, the manifest's share, the recounted share and its tallies."""

    name: str
    target: float | None
    manifest_share: float | None
    share: float
    tally: Tally
    loss_token_share: float  # of all loss-bearing tokens in the set
    loss_weight_share: float  # of all loss weight: the share of the gradient this source gets
    status: str  # ok | drift | undeclared | unchecked

    @property
    def drift(self) -> float | None:
        return None if self.target is None else self.share - self.target


@dataclass
class AuditResult:
    """Everything one audit found; ``exit_code`` is what ``lwmkit audit`` exits with."""

    path: str
    manifest: Manifest | None
    recount: Recount
    tolerance: float
    targets_from: str | None
    sources: list[SourceRow]
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        kinds = {f.kind for f in self.findings}
        if kinds & set(INTEGRITY):
            return EXIT_INTEGRITY
        return EXIT_DRIFT if kinds & set(DRIFT) else EXIT_OK

    @property
    def verdict(self) -> str:
        return {EXIT_OK: "pass", EXIT_DRIFT: "drift", EXIT_INTEGRITY: "corrupt"}[self.exit_code]

    def errors(self, kind: str | None = None) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error" and (kind is None or f.kind == kind)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: verdict, findings, per-source rows, modalities, the full recount."""
        rc, m = self.recount, self.manifest
        return {
            "path": self.path, "verdict": self.verdict, "exit_code": self.exit_code,
            "tolerance": self.tolerance, "targets_from": self.targets_from,
            "stage": m.stage if m else None, "seq_len": m.seq_len if m else None,
            "findings": [{"severity": f.severity, **asdict(f)} for f in self.findings],
            "sources": [{**{k: v for k, v in asdict(r).items() if k != "tally"}, "drift": r.drift, **asdict(r.tally)}
                        for r in self.sources],
            "modalities": {k: {**asdict(t), "share": share(t.tokens, rc.tokens)} for k, t in rc.by_modality().items()},
            "totals": {"sequences": rc.n_sequences, "tokens": rc.tokens, "padding_tokens": rc.padding_tokens,
                       "packing_efficiency": rc.packing_efficiency, "shards": len(rc.shards),
                       "bad_shards": sum(s.status != "ok" for s in rc.shards)},
            "distributions": {
                "sequence_tokens": rc.sequence_tokens.summary(),
                "segments_per_sequence": rc.segments_per_sequence.summary(),
                "example_tokens": {s: h.summary() for s, h in sorted(rc.example_tokens.items())},
                "frames_per_example": {s: h.summary() for s, h in sorted(rc.frames_per_example.items())},
            },
            "manifest": {"sha256": m.sha256, "n_sequences": m.n_sequences, "padding_tokens": m.padding_tokens,
                         "packing_efficiency": m.packing_efficiency} if m else None,
            "recount": rc.to_dict(),
        }  # fmt: skip


def declared_targets(manifest: Manifest | None, mixture: MixtureConfig | None, mixture_from: str | None):
    """(target shares or None, where they came from, warnings) — the given mixture wins over the
    one recorded in the manifest; a difference between the two is a warning."""
    findings: list[Finding] = []
    recorded = None
    if manifest is not None and manifest.mixture:
        try:
            recorded = from_dict(MixtureConfig, manifest.mixture, source="manifest.json: mixture").shares
        except ContractError as err:
            findings.append(
                Finding("mixture_unreadable", "manifest", f"the manifest's mixture is unreadable: {err}")
            )
    if mixture is not None:
        if recorded is not None and (
            set(recorded) != set(mixture.shares)
            or any(abs(recorded[k] - v) > 1e-9 for k, v in mixture.shares.items())
        ):
            findings.append(Finding("mixture_differs", mixture_from or "mixture",
                                    "differs from the mixture recorded in the manifest (the set was packed from another mix)"))  # fmt: skip
        return mixture.shares, mixture_from or "mixture", findings
    if recorded is not None:
        return recorded, "manifest", findings
    findings.append(
        Finding("no_mixture", "mixture", "no declared mixture (pass --mixture): drift was not checked")
    )
    return None, None, findings


def source_rows(
    rc: Recount, manifest: Manifest | None, targets: dict[str, float] | None, tol: float
) -> list[SourceRow]:
    counted = rc.by_source()
    total_loss = sum(t.loss_tokens for t in counted.values())
    total_weight = sum(t.loss_weight for t in counted.values())
    declared = manifest.per_source if manifest else {}
    declared_total = sum(c.tokens for c in declared.values())
    names = list(targets or {}) + sorted((set(counted) | set(declared)) - set(targets or {}))
    rows = []
    for name in names:
        t = counted.get(name, Tally())
        actual = share(t.tokens, rc.tokens)
        target = targets.get(name) if targets is not None else None
        if targets is None:
            status = "unchecked"
        elif target is None:
            status = "undeclared" if t.tokens else "ok"
        else:
            status = "drift" if abs(actual - target) > tol else "ok"
        m_share = (
            share(declared[name].tokens, declared_total) if name in declared else (0.0 if manifest else None)
        )
        rows.append(SourceRow(name, target, m_share, actual, t, share(t.loss_tokens, total_loss),
                              share(t.loss_weight, total_weight), status))  # fmt: skip
    return rows


def drift_findings(rows: list[SourceRow], tol: float, bad_shards: int = 0) -> list[Finding]:
    out = []
    partial = f" — counted on the readable shards only, {bad_shards} missing or corrupt" if bad_shards else ""
    for r in rows:
        if r.status == "drift":
            where = "over" if r.drift > 0 else "under"
            out.append(Finding("drift", r.name, f"holds {r.share:.1%} of the tokens, target {r.target:.1%} "
                                                f"({where} by {abs(r.drift):.1%}; tolerance {tol:.1%}){partial}"))  # fmt: skip
        elif r.status == "undeclared":
            out.append(
                Finding(
                    "undeclared_source",
                    r.name,
                    f"holds {r.share:.1%} of the tokens but the mixture does not declare it",
                )
            )
    return out


def integrity_findings(ref: ShardSetRef, rc: Recount) -> list[Finding]:
    """Bad shards (each named), an invalid manifest, and manifest totals the shards contradict."""
    out = []
    if ref.manifest_error:
        out.append(Finding("manifest_invalid", ref.manifest_path, ref.manifest_error))
    for s in rc.shards:
        if s.status != "ok":
            more = f" (+{s.n_problems - len(s.problems)} more)" if s.n_problems > len(s.problems) else ""
            kind = "missing_shard" if s.status == "missing" else "corrupt_shard"
            out.append(Finding(kind, s.name, "; ".join(s.problems) + more))
    m = ref.manifest
    if m is None:
        return out
    bad = sum(s.status != "ok" for s in rc.shards)
    diffs = [
        ("n_sequences", m.n_sequences, rc.n_sequences),
        ("padding_tokens", m.padding_tokens, rc.padding_tokens),
    ]
    for group, declared, counted in (
        ("per_source", m.per_source, rc.by_source()),
        ("per_modality", m.per_modality, rc.by_modality()),
    ):
        for key in sorted(set(declared) | set(counted)):
            d, c = declared.get(key, TokenCounts()), counted.get(key, Tally())
            diffs += [(f"{group}[{key!r}].{f}", getattr(d, f), getattr(c, f)) for f in _COUNT_FIELDS]
    wrong = [
        f"{name}: manifest says {says}, the shards hold {holds}"
        for name, says, holds in diffs
        if says != holds
    ]
    if wrong and bad:
        # Expected when shards could not be counted: one line, not one per total.
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        out.append(Finding("manifest_mismatch", ref.manifest_path,
                           f"totals cannot match while {bad} shard(s) are missing or corrupt: {'; '.join(wrong[:3])}{more}"))  # fmt: skip
    elif wrong:
        out += [
            Finding(
                "manifest_mismatch", ref.manifest_path, f"{w} (every shard verified: the manifest is wrong)"
            )
            for w in wrong
        ]
    return out


def compare(ref: ShardSetRef, rc: Recount, *, mixture: MixtureConfig | None = None, mixture_from: str | None = None,
            tolerance: float = 0.02, unlisted: list[str] | None = None) -> AuditResult:  # fmt: skip
    """Judge a recount against the manifest and the declared (or recorded) mixture."""
    targets, targets_from, findings = declared_targets(ref.manifest, mixture, mixture_from)
    rows = source_rows(rc, ref.manifest, targets, tolerance)
    bad = sum(s.status != "ok" for s in rc.shards)
    findings = integrity_findings(ref, rc) + drift_findings(rows, tolerance, bad) + findings
    findings += [
        Finding("unlisted_file", name, "beside the manifest but not listed in it (ignored)")
        for name in unlisted or []
    ]
    return AuditResult(ref.root, ref.manifest, rc, tolerance, targets_from, rows, findings)
