"""Flags shared between Beam jobs.

Beam builds ONE argparse parser from every imported ``PipelineOptions`` subclass, so two jobs
that both declare ``--tokenizer`` or ``--output`` would make argparse refuse the second (and
break every job in that process). Jobs declare such flags through :func:`add_flag`, which
adds a flag only once; a flag shared this way must mean the same thing, with the same default,
in every job that declares it.
"""

from __future__ import annotations

from typing import Any


def add_flag(parser: Any, *names: str, **kwargs: Any) -> None:
    """``parser.add_argument(*names, **kwargs)`` unless another job already declared the flag."""
    if not any(n in parser._option_string_actions for n in names):
        parser.add_argument(*names, **kwargs)
