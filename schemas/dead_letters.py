"""Dead letters: where every bad input goes, with the reason. Nothing bad is dropped silently.

Written as JSON Lines beside a job's output (people grep them); each line carries the format
version. :func:`read_dead_letters` also reads the Parquet form (``records.DEAD_LETTER``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.strict import check_format_version, from_dict, require, to_dict

DEAD_LETTER_VERSION = 1


@dataclass(frozen=True)
class DeadLetter:
    """One input a job could not process: which, where in the job, and why."""

    uri: str
    stage: str
    error_class: str
    message: str
    job: str
    detail: str | None = None
    format_version: int = DEAD_LETTER_VERSION

    def __post_init__(self) -> None:
        check_format_version(self.format_version, DEAD_LETTER_VERSION, "dead letter")
        require(bool(self.uri), "uri", "must not be empty")
        require(bool(self.stage), "stage", "must not be empty")

    @classmethod
    def from_exception(cls, uri: str, stage: str, job: str, err: BaseException, detail: str | None = None) -> DeadLetter:
        return cls(uri=uri, stage=stage, error_class=type(err).__name__, message=str(err)[:2000], job=job, detail=detail)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str, *, source: str | None = None) -> DeadLetter:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ContractError(f"is not JSON ({err})", source=source) from None
        return from_dict(cls, data, source=source)


def read_dead_letters(path: str) -> list[DeadLetter]:
    """All dead letters in one ``.jsonl`` or ``.parquet`` file (fsspec paths work)."""
    import fsspec

    if path.endswith(".parquet"):
        from lwmkit.schemas.records import DEAD_LETTER, read_table

        with fsspec.open(path, "rb") as f:
            rows = read_table(f, DEAD_LETTER).to_pylist()
        return [DeadLetter(**row) for row in rows]
    out = []
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                out.append(DeadLetter.from_json(line, source=f"{path}:{i + 1}"))
    return out
