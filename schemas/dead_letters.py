"""Dead letters: where every bad input goes, with the reason. Nothing bad is dropped silently.

Written as JSON Lines beside a job's output (people grep them); each line carries the format
version. :func:`read_dead_letters` also reads the Parquet form (``records.DEAD_LETTER``).

Every letter's ``error_class`` is one of :data:`ERROR_CLASSES` (the one documented list), and its
message is normalised (:func:`normalise_message`): no wall-clock times, build paths or memory
addresses, so the same bad input gives the same bytes on every run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.strict import check_format_version, from_dict, require, to_dict

DEAD_LETTER_VERSION = 1

ERROR_CLASSES: dict[str, str] = {
    # any job, any input
    "ReadError": "the input could not be read (missing, permission denied, filesystem or network failure)",
    "MalformedInput": "the input is not the format it claims (bad JSON line, bad UTF-8, not Parquet)",
    "ContractError": "a record or file breaks its schemas/ contract (missing column, wrong type, bad value)",
    "Rejected": "a job's rule refused the input (unsupported type, duplicate id, no match, no caption, ...)",
    # media (vision job)
    "UnreadableMedia": "neither an image nor a video stream any decoder can open",
    "NoFrames": "the file opens but holds no frames in the requested range (audio-only, empty)",
    "MediaTooLarge": "frame size or frame count beyond the configured limits",
    "TruncatedMedia": "fewer frames than the file's index or declared duration promise (the file ends early)",
    "CorruptMedia": "the decoder failed part-way through the stream, or frames are missing inside it",
    "DecodeTimeout": "the decoder made no progress within the time limit (it was killed)",
    "DecoderCrashed": "the decoder process died (e.g. a segfault in native code)",
    # books
    "BookError": "not a usable book: binary, empty, or more undecodable bytes than allowed",
    # QA generation
    "ParseError": "the model's reply holds no usable question-answer pair",
    "Ungrounded": "every QA pair failed the quality gate, on every attempt (reasons in the message)",
    "HTTPError": "the QA server refused the request (a status that is not retried)",
    "ServerError": "the QA server kept answering 429/5xx until the attempts ran out",
    "Timeout": "no reply within the timeout, on every attempt",
    "ConnectionError": "the QA server could not be reached",
    "MalformedReply": "the QA server's reply is not a chat completion",
    # anything else is a bug somewhere: the original exception type leads the message
    "InternalError": "an unexpected exception (its type is the first word of the message)",
}
"""The documented error classes, name -> meaning. Writers map exceptions onto them with :func:`error_class_of`."""

# Exception types (by name, anywhere in the type's MRO) that stand for a documented class.
_ALIASES = {"JSONDecodeError": "MalformedInput", "UnicodeError": "MalformedInput", "ArrowInvalid": "MalformedInput",
            "TimeoutError": "Timeout", "OSError": "ReadError"}  # fmt: skip
_VOLATILE = (
    (re.compile(r"\[\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\]\s*"), ""),  # decord/dmlc log times "[14:40:15] "
    (re.compile(r"(?:/[\w.+-]+)+\.(?:cc|cpp|cxx|c|h|hpp|pyx):\d+:?\s*"), ""),  # build paths "src/x.cc:292: "
    (re.compile(r" @ 0x[0-9a-f]+"), ""),  # ffmpeg's context addresses "[h264 @ 0x55d1...]"
    (re.compile(r"\b0x(?:5[5-6]|7f)[0-9a-f]{10}\b"), "0x?"),  # heap/mmap addresses in any message
)


class Rejected(ValueError):
    """An input a job's rule refuses (not a bug, not a contract break): raise it with the reason."""


def error_class_of(err: BaseException) -> str:
    """The documented class (:data:`ERROR_CLASSES`) for an exception: its own type's name when
    documented, else the first documented name (or alias) in its MRO, else ``InternalError``."""
    for cls in type(err).__mro__:
        if cls.__name__ in ERROR_CLASSES:
            return cls.__name__
        if cls.__name__ in _ALIASES:
            return _ALIASES[cls.__name__]
    return "InternalError"


def normalise_message(text: str, limit: int = 2000) -> str:
    """``text`` without what changes between runs (log times, build paths, addresses), trimmed."""
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return " ".join(text.split())[:limit]


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
    def from_exception(
        cls, uri: str, stage: str, job: str, err: BaseException, detail: str | None = None
    ) -> DeadLetter:
        """A letter for ``err``: a documented class, a normalised message (the exception's own type
        leads the message when it is not a documented class, so nothing is lost)."""
        error_class, message = error_class_of(err), str(err) or "(no message)"
        if type(err).__name__ != error_class:
            message = f"{type(err).__name__}: {message}"
        return cls(uri=uri, stage=stage, error_class=error_class, message=normalise_message(message), job=job,
                   detail=detail)  # fmt: skip

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
