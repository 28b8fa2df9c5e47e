"""Scrubbing a secret (an API key) from text a server sent back, in every form JSON can spell it.

A server may echo the ``Authorization`` header anywhere: in an error body, in the chat
content, inside the JSON the model wrote in that content. JSON lets each character be written
as itself or as an escape (``\\u0073``, ``\\/``), and text nested in JSON strings gains one
backslash per level, so a plain ``str.replace`` misses ``sk-\\u0061bc``, which a parser turns
back into the key. :class:`Redactor` matches the key with every character in any of these
spellings, at any nesting depth, and replaces it with ``***``.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SHORT_ESCAPES = {'"': '"', "\\": "\\\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


def _hex4(code: int) -> str:
    # \u006B and \u006b are the same character: each hex letter in either case.
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{code:04x}")


def _char_pattern(c: str) -> str:
    code = ord(c)
    if code > 0xFFFF:  # JSON writes it as a surrogate pair
        hi, lo = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        escaped = rf"\\+u{_hex4(hi)}\\+u{_hex4(lo)}"
    else:
        escaped = rf"\\+u{_hex4(code)}"
    options = [re.escape(c), escaped]
    if c in _SHORT_ESCAPES:
        options.append(r"\\+" + re.escape(_SHORT_ESCAPES[c]))
    return "(?:" + "|".join(options) + ")"


class Redactor:
    """Replaces ``secret`` (literal or JSON-escaped, at any depth) with ``***``; a no-op without one."""

    def __init__(self, secret: str):
        self._secret = secret
        self._pattern = re.compile("".join(_char_pattern(c) for c in secret)) if secret else None

    def text(self, value: str | None) -> str | None:
        """``value`` with every spelling of the secret masked."""
        if not value or self._pattern is None:
            return value
        if self._secret in value:
            value = value.replace(self._secret, MASK)
        if "\\" in value:  # escaped spellings need a backslash
            value = self._pattern.sub(MASK, value)
        return value

    def deep(self, value: Any) -> Any:
        """Every string inside ``value`` (dicts, lists) masked; other values returned as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.deep(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.deep(v) for v in value)
        return value
