"""Why a pack source gave no examples: its dead letters and policy counts, counted per reason.

The pack job plans its mixture from the examples that survived reading, formatting and the
over-long policy. When a source has none left, the plan cannot be made; before the job stops,
:func:`plan_or_explain` writes every dead letter the run has (so the rejects are on disk) and
raises one error that says what happened to the source's inputs, e.g.
``4 rejected at format (Rejected: record has no caption: ...)``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from lwmkit.pipelines.pack.mixture import EmptySource, MixturePlan, plan_mixture
from lwmkit.runtime.dead_letters import dead_letter_path, write_dead_letters
from lwmkit.schemas.dead_letters import DeadLetter
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.mixture import MixtureConfig

_ROW_SUFFIX = re.compile(r"(\[row \d+\]|:\d+)$")


def source_of(letter: DeadLetter, files: Mapping[str, Sequence[str]]) -> str | None:
    """The source a pack dead letter belongs to: ``name:...`` (format stage) or one of its files."""
    base = _ROW_SUFFIX.sub("", letter.uri)
    for name, urls in files.items():
        if letter.uri.startswith(f"{name}:") or base in urls:
            return name
    return None


def reasons(source: str, letters: Iterable[DeadLetter], counts: Mapping[str, int],
            files: Mapping[str, Sequence[str]]) -> list[str]:  # fmt: skip
    """``["4 rejected at format (Rejected: record has no caption: ...)", "2 skipped_empty"]``, largest first."""
    groups: Counter = Counter()
    example: dict[tuple[str, str], str] = {}
    for d in sorted(letters, key=DeadLetter.to_json):  # the same example message on every runner
        if source_of(d, files) == source:
            key = (d.stage, d.error_class)
            groups[key] += 1
            example.setdefault(key, d.message[:160])
    out = [
        f"{n} rejected at {stage} ({cls}: {example[(stage, cls)]})"
        for (stage, cls), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    out += [
        f"{n} {key.rsplit('.', 1)[0]}"
        for key, n in sorted(counts.items())
        if key.endswith(f".{source}") and n
    ]
    return out


def plan_or_explain(stats: Mapping, mixture: MixtureConfig, dead_lines: list[str], counts: Mapping[str, int],
                    files: Mapping[str, Sequence[str]], out: str) -> MixturePlan:  # fmt: skip
    """:func:`plan_mixture`, or -- when a source has no usable examples -- the run's dead letters
    written to ``out`` and a ContractError naming the source's rejects per reason."""
    try:
        return plan_mixture(stats, mixture)
    except EmptySource as err:
        path = dead_letter_path(out, "pack", flat=True)
        letters = [DeadLetter.from_json(line) for line in dead_lines]
        if dead_lines:
            write_dead_letters(path, dead_lines)  # the same sink and order as a finished pack's
        why = reasons(err.source_name, letters, counts, files) or [f"its {len(files.get(err.source_name, ()))} "
                                                                   "file(s) hold no rows"]  # fmt: skip
        where = f"; its rejects are in {path}" if dead_lines else ""
        raise ContractError(f"has no usable examples: {'; '.join(why)}{where}", field=err.field) from None
