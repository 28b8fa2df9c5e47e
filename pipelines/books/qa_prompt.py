"""The versioned QA prompt template and the tolerant parser of the model's reply.

A prompt file (YAML) holds ``version``, ``system``, ``user`` (with ``{passage}`` and
``{n_pairs}``) and ``schema`` (the JSON schema of the reply). The shipped default is
``pipelines/prompts/qa-v1.yaml``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

DEFAULT_PROMPT = "qa-v1.yaml"


class ParseError(ValueError):
    """The model's reply holds no usable question-answer pair."""


@dataclass(frozen=True)
class QAPrompt:
    """A prompt template: ``messages(passage, n)`` gives the chat, ``schema(n)`` the reply's JSON schema."""

    version: str
    system: str
    user: str
    reply_schema: dict[str, Any]
    sha256: str

    def __post_init__(self) -> None:
        if not self.version or not re.fullmatch(r"[A-Za-z0-9._-]+", self.version):
            raise ValueError(f"prompt version must be a plain name like 'qa-v1', got {self.version!r}")
        if "{passage}" not in self.user:
            raise ValueError("prompt 'user' template must contain {passage}")

    def messages(self, passage: str, n_pairs: int) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(passage=passage, n_pairs=n_pairs)},
        ]

    def schema(self, n_pairs: int) -> dict[str, Any]:
        schema = copy.deepcopy(self.reply_schema)
        qa = schema.get("properties", {}).get("qa")
        if isinstance(qa, dict) and qa.get("type") == "array":
            qa["maxItems"] = n_pairs  # bounds the reply's length under grammar-constrained decoding
        return schema


def load_prompt(path: str | None = None) -> QAPrompt:
    """Load a prompt file (local path or any Beam filesystem URL); None = the shipped qa-v1."""
    if path is None:
        blob = (resources.files("lwmkit.pipelines.books") / "prompts" / DEFAULT_PROMPT).read_bytes()
        source = DEFAULT_PROMPT
    else:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            blob = f.read()
        source = path
    data = yaml.safe_load(blob.decode("utf-8"))
    missing = [
        k for k in ("version", "system", "user", "schema") if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise ValueError(f"{source}: prompt file lacks {missing}")
    return QAPrompt(
        str(data["version"]), data["system"], data["user"], data["schema"], hashlib.sha256(blob).hexdigest()
    )


# Every pattern below is matched at a known position or against one line with its whitespace
# collapsed, so parsing is linear in the reply's length (a hostile or runaway reply of 1 MB
# parses in well under a second; searching the whole reply with lazy DOTALL patterns was quadratic).
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_SEP = re.compile(r"\s*,\s*")
_COLON = re.compile(r"\s*:\s*")
_Q_HEAD = re.compile(r"(?:\d+[.)] ?)?Q(?:uestion)? ?\d* ?[:.)-] ?(.*)", re.IGNORECASE)
_A_HEAD = re.compile(r"(?:A(?:nswer)? ?\d* ?[:.)-]) ?(.*)", re.IGNORECASE)
_FENCE = "```"

_WORDY = re.compile(r"[^\W_]")


def parse_qa(reply: str, max_pairs: int | None = None) -> list[dict[str, str]]:
    """Question-answer pairs from a model reply, as ``[{"question", "answer"}]``.

    Tries, in order: the whole reply as JSON (``{"qa": [...]}``, a bare list, or one pair);
    the first JSON object or array embedded in prose or a code fence; complete
    ``"question": ..., "answer": ...`` pairs in truncated JSON; ``Q: / A:`` lines.
    Raises :class:`ParseError` when nothing usable is found. Time is linear in ``len(reply)``.
    """
    for candidate in _json_candidates(reply):
        pairs = _clean(_pairs_from_json(candidate), max_pairs)
        if pairs:  # pairs that clean to nothing are no answer: try the next candidate, else ParseError
            return pairs
    pairs = _clean(_quoted_pairs(reply), max_pairs)
    if not pairs:
        pairs = _clean(_line_pairs(reply), max_pairs)
    if not pairs:
        raise ParseError(f"no question-answer pair in the reply ({len(reply)} characters)")
    return pairs


def _json_candidates(reply: str):
    text = reply.strip()
    yield text
    fence = text.find(_FENCE)
    if fence >= 0:
        close = text.find(_FENCE, fence + len(_FENCE))
        if close >= 0:
            body = text[fence + len(_FENCE) : close]
            yield body[4:] if body.startswith("json") else body
    for opener in ("{", "["):
        start = text.find(opener)
        if start >= 0:
            yield text[start:]
            end = text.rfind("}" if opener == "{" else "]")
            if end > start:
                yield text[start : end + 1]


def _string_at(text: str, pos: int) -> tuple[str, int] | None:
    """The JSON string literal starting at ``text[pos]`` (raw, still escaped) and the index after it."""
    m = _STRING.match(text, pos)
    return (m.group(1), m.end()) if m else None


def _quoted_pairs(reply: str) -> list[dict[str, str]]:
    """Complete ``"question": "...", "answer": "..."`` pairs, e.g. from JSON cut off mid-reply."""
    pairs, pos = [], 0
    while (pos := reply.find('"question"', pos)) >= 0:
        pair = _pair_at(reply, pos + len('"question"'))
        if pair is None:
            pos += 1
            continue
        q, a, pos = pair
        pairs.append({"question": _unescape(q), "answer": _unescape(a)})
    return pairs


def _pair_at(text: str, pos: int) -> tuple[str, str, int] | None:
    m = _COLON.match(text, pos)
    question = m and _string_at(text, m.end())
    if not question:
        return None
    m = _SEP.match(text, question[1])
    if not m or not text.startswith('"answer"', m.end()):
        return None
    m = _COLON.match(text, m.end() + len('"answer"'))
    answer = m and _string_at(text, m.end())
    return (question[0], answer[0], answer[1]) if answer else None


def _line_pairs(reply: str) -> list[dict[str, str]]:
    """``Q: ... / A: ...`` pairs: a question runs from its ``Q:`` line (the last one before the
    answer) to the next ``A:`` line, an answer to the next ``Q:`` line or blank line."""
    lines = [" ".join(line.split()) for line in reply.split("\n")]
    pairs: list[dict[str, str]] = []
    question: list[str] | None = None
    i = 0
    while i < len(lines):
        head = _Q_HEAD.match(lines[i])
        answer = _A_HEAD.match(lines[i]) if question is not None and not head else None
        if head:
            question = [head.group(1)]
        elif answer:
            parts, i = [answer.group(1)], i + 1
            while i < len(lines) and lines[i] and not _Q_HEAD.match(lines[i]):
                parts.append(lines[i])
                i += 1
            pairs.append({"question": " ".join(question), "answer": " ".join(parts)})
            question = None
            continue
        elif question is not None and lines[i]:
            question.append(lines[i])
        i += 1
    return pairs


def _pairs_from_json(candidate: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError):
        try:  # trailing commas are the most common slip
            data = json.loads(re.sub(r",\s*([}\]])", r"\1", candidate))
        except (json.JSONDecodeError, RecursionError):
            return []
    if isinstance(data, dict):
        for key in ("qa", "pairs", "qa_pairs", "questions", "items"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        return []
    pairs = []
    for item in data:
        if isinstance(item, dict):
            q = item.get("question", item.get("q"))
            a = item.get("answer", item.get("a"))
            if isinstance(q, str) and isinstance(a, (str, int, float)) and not isinstance(a, bool):
                pairs.append({"question": q, "answer": str(a)})
    return pairs


def _unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s


def _clean(pairs: list[dict[str, str]], max_pairs: int | None) -> list[dict[str, str]]:
    out, seen = [], set()
    for p in pairs:
        q, a = " ".join(p["question"].split()), " ".join(p["answer"].split())
        # The schema cannot stop a small model from writing "..." or "); {": keep only pairs
        # with words in both halves.
        if _WORDY.search(q) and _WORDY.search(a) and q.lower() not in seen and q != a:
            seen.add(q.lower())
            out.append({"question": q, "answer": a})
    return out[:max_pairs] if max_pairs else out
