"""Dead letters: the one sink that writes a job's failures beside its output.

Any job routes its bad inputs to a PCollection of :class:`~lwmkit.schemas.DeadLetter` JSON
lines (``DeadLetter.to_json()``) and applies :class:`WriteDeadLetters`. The file has a
deterministic name (``{output}/dead_letters/{job}.jsonl``), its lines are sorted, and it is
replaced atomically (written aside, then renamed), so a re-run over the same inputs writes the
same bytes. Letters from earlier runs are kept unless this run processed their uri again
(``replace_uris``): a retried input that now succeeds leaves the file, one that fails again
is recorded once, with the new reason.

Jobs whose output is one folder (books, pack) use the flat layout ``{output}/dead_letters.jsonl``
and replace it on every run (``flat=True, keep_earlier=False``); a driver that holds its letters
as a list (the pack job, after Beam) calls :func:`write_dead_letters`.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from lwmkit.runtime.files import BEAM, FSSPEC, Files, write_atomic
from lwmkit.schemas.dead_letters import DeadLetter

FLAT_NAME = "dead_letters.jsonl"


def dead_letter_path(output: str, job: str, *, flat: bool = False) -> str:
    """Where ``job`` writes its dead letters under ``output``."""
    if flat:  # also the pack job's, written through fsspec: no Beam filesystem needed for the name
        return f"{output.rstrip('/')}/{FLAT_NAME}"
    return FileSystems.join(output, "dead_letters", f"{job}.jsonl")


def read_existing(path: str, files: Files = BEAM) -> list[DeadLetter]:
    """The letters already at ``path`` (none when the file does not exist)."""
    data = files.read(path)
    if data is None:
        return []
    text = data.decode("utf-8")
    return [
        DeadLetter.from_json(line, source=f"{path}:{i + 1}")
        for i, line in enumerate(text.splitlines())
        if line.strip()
    ]


def merge_letters(
    existing: Iterable[DeadLetter], new_lines: Iterable[str], replace_uris: frozenset[str]
) -> bytes:
    """Sorted, de-duplicated JSONL of ``existing`` (minus ``replace_uris``) plus the new letters."""
    letters = {d.to_json(): d for d in existing if d.uri not in replace_uris}
    letters.update((d.to_json(), d) for d in map(DeadLetter.from_json, new_lines))
    # Sorted by uri for the people who read them; the full line breaks ties deterministically.
    order = sorted(letters, key=lambda line: (letters[line].uri, letters[line].stage, line))
    return "".join(line + "\n" for line in order).encode("utf-8")


def write_dead_letters(
    path: str,
    lines: Iterable[str],
    replace_uris: frozenset[str] = frozenset(),
    *,
    keep_earlier: bool = False,
    files: Files = FSSPEC,
) -> None:
    """Write the letters ``lines`` to ``path``, sorted, atomically; ``keep_earlier`` merges the
    letters already there (minus ``replace_uris``)."""
    existing = read_existing(path, files) if keep_earlier else []
    write_atomic(path, merge_letters(existing, lines, replace_uris), files)


class _WriteFn(beam.DoFn):
    def __init__(self, path: str, replace_uris: frozenset[str], keep_earlier: bool) -> None:
        self.path, self.replace_uris, self.keep_earlier = path, replace_uris, keep_earlier

    def process(self, lines: list[str]) -> Iterable[tuple[str, int]]:
        write_dead_letters(self.path, lines, self.replace_uris, keep_earlier=self.keep_earlier, files=BEAM)
        yield self.path, len(lines)


class WriteDeadLetters(beam.PTransform):
    """PCollection[str] of ``DeadLetter.to_json()`` lines -> the job's dead-letter file.

    Outputs one ``(path, n_new_letters)`` element once the file is written.
    """

    def __init__(
        self,
        output: str,
        job: str,
        replace_uris: Iterable[str] = (),
        *,
        flat: bool = False,
        keep_earlier: bool = True,
    ) -> None:
        super().__init__()
        self.path = dead_letter_path(output, job, flat=flat)
        self.replace_uris = frozenset(replace_uris)
        self.keep_earlier = keep_earlier

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return (
            letters
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.ParDo(_WriteFn(self.path, self.replace_uris, self.keep_earlier))
        )


def letter(uri: str, stage: str, job: str, err: BaseException, detail: str | None = None) -> str:
    """One dead letter as the JSON line :class:`WriteDeadLetters` expects."""
    return DeadLetter.from_exception(uri, stage, job, err, detail=detail).to_json()
