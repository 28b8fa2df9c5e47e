"""Dead letters from Beam: one PTransform that writes a job's failures beside its output.

Any job routes its bad inputs to a PCollection of :class:`~lwmkit.schemas.DeadLetter` JSON
lines (``DeadLetter.to_json()``) and applies :class:`WriteDeadLetters`. The file has a
deterministic name (``{output}/dead_letters/{job}.jsonl``), its lines are sorted, and it is
replaced atomically (written aside, then renamed), so a re-run over the same inputs writes the
same bytes. Letters from earlier runs are kept unless this run processed their uri again
(``replace_uris``): a retried input that now succeeds leaves the file, one that fails again
is recorded once, with the new reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from lwmkit.schemas.dead_letters import DeadLetter


def dead_letter_path(output: str, job: str) -> str:
    """Where ``job`` writes its dead letters under ``output``."""
    return FileSystems.join(output, "dead_letters", f"{job}.jsonl")


def read_existing(path: str) -> list[DeadLetter]:
    """The letters already at ``path`` (none when the file does not exist)."""
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8")
    return [
        DeadLetter.from_json(line, source=f"{path}:{i + 1}")
        for i, line in enumerate(text.splitlines())
        if line.strip()
    ]


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a hidden temporary name beside ``path``, then rename it into place."""
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    tmp = FileSystems.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
    if not FileSystems.exists(parent):
        FileSystems.mkdirs(parent)
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])  # replaces an existing file (os.rename locally; copy on buckets)


def merge_letters(
    existing: Iterable[DeadLetter], new_lines: Iterable[str], replace_uris: frozenset[str]
) -> bytes:
    """Sorted, de-duplicated JSONL of ``existing`` (minus ``replace_uris``) plus the new letters."""
    letters = {d.to_json(): d for d in existing if d.uri not in replace_uris}
    letters.update((d.to_json(), d) for d in map(DeadLetter.from_json, new_lines))
    # Sorted by uri for the people who read them; the full line breaks ties deterministically.
    order = sorted(letters, key=lambda line: (letters[line].uri, letters[line].stage, line))
    return "".join(line + "\n" for line in order).encode("utf-8")


class _WriteFn(beam.DoFn):
    def __init__(self, path: str, replace_uris: frozenset[str]) -> None:
        self.path, self.replace_uris = path, replace_uris

    def process(self, lines: list[str]) -> Iterable[tuple[str, int]]:
        data = merge_letters(read_existing(self.path), lines, self.replace_uris)
        write_atomic(self.path, data)
        yield self.path, len(lines)


class WriteDeadLetters(beam.PTransform):
    """PCollection[str] of ``DeadLetter.to_json()`` lines -> the job's dead-letter file.

    Outputs one ``(path, n_new_letters)`` element once the file is written.
    """

    def __init__(self, output: str, job: str, replace_uris: Iterable[str] = ()) -> None:
        super().__init__()
        self.path = dead_letter_path(output, job)
        self.replace_uris = frozenset(replace_uris)

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return (
            letters
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.ParDo(_WriteFn(self.path, self.replace_uris))
        )


def letter(uri: str, stage: str, job: str, err: BaseException, detail: str | None = None) -> str:
    """One dead letter as the JSON line :class:`WriteDeadLetters` expects."""
    return DeadLetter.from_exception(uri, stage, job, err, detail=detail).to_json()
