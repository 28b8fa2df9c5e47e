"""Command-line flags generated from a job's typed config: one style for every job.

A job is a frozen dataclass (:mod:`lwmkit.schemas.jobs`); each field declared with :func:`flag`
becomes ``--field-name``: dashed, its type taken from the annotation, its default or
"(required)" shown in ``--help``. The underscored spelling (``--field_name``) and any old names
are accepted as hidden aliases, so commands written for earlier releases keep working.

:func:`parse_job` splits an argv into the job and what is left for Beam (``parse_known_args``,
as Beam's own examples do): ``--runner``, ``--direct_num_workers``, Dataflow's flags ... pass
through untouched. A leftover flag that is one typo away from one of the job's own flags is
refused, so ``--chunk-token 500`` is an error instead of a silently ignored Beam argument.
"""

from __future__ import annotations

import argparse
import difflib
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from lwmkit.schemas.errors import ContractError

T = TypeVar("T")


@dataclass(frozen=True)
class FlagSpec:
    """How one field of a job appears on the command line."""

    help: str
    required: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # more spellings, hidden from --help (old names)
    short: str | None = None  # e.g. "-q"
    positional: bool = False
    hidden: bool = False  # accepted, not listed (one-value or internal knobs)


def flag(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - the argparse word
    *,
    required: bool = False,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    aliases: Sequence[str] = (),
    short: str | None = None,
    positional: bool = False,
    hidden: bool = False,
) -> Any:
    """A dataclass field that is also a flag. A required flag's field defaults to None (the
    job's ``__post_init__`` refuses None through :func:`require_flags`)."""
    spec = FlagSpec(help, required, tuple(choices) if choices else None, metavar, tuple(aliases), short,
                    positional, hidden)  # fmt: skip
    if required or default is MISSING:
        default = None
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"flag": spec})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def require_flags(job: Any, source: str) -> None:
    """Refuse a job whose required flags are missing (None or empty), naming them all."""
    missing = [
        flag_name(f.name)
        for f in fields(job)
        if _spec(f) is not None and _spec(f).required and getattr(job, f.name) in (None, "", ())
    ]
    if missing:
        raise ContractError(f"missing required flag{'s' * (len(missing) > 1)}: {', '.join(missing)}",
                            source=source)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # argparse would print usage and exit; a ContractError is one line and exit 2 (as every
        # other bad input), and a library caller can catch it.
        raise ContractError(message, source=self.prog)


def _spec(f: Any) -> FlagSpec | None:
    return f.metadata.get("flag")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, repeatable) of an annotation like ``int``, ``float | None``, ``tuple[str, ...]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner)
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}


def job_parser(job_type: type, prog: str, description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    """The argparse parser of ``job_type``'s flags (its help is the job's ``--help``)."""
    parser = _Parser(prog=prog, usage=f"{prog} [FLAGS] [BEAM FLAGS]", description=description, epilog=epilog,
                     add_help=False, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    hints = typing.get_type_hints(job_type)
    for f in fields(job_type):
        spec = _spec(f)
        if spec is None:
            continue
        kind, repeat = _base_type(hints[f.name])
        metavar = spec.metavar or _METAVARS.get(kind, "VALUE")
        text = spec.help
        if spec.required:
            text += " (required)"
        elif f.default not in (None, False, ()):
            text += f" (default: {f.default})"
        if repeat:
            text += " Repeatable."
        kwargs: dict[str, Any] = {"help": argparse.SUPPRESS if spec.hidden else text}
        if kind is bool:
            kwargs.update(action="store_true", default=False)
        elif repeat:
            kwargs.update(action="append", type=kind, default=None, metavar=metavar)
        else:
            kwargs.update(type=kind, default=f.default, metavar=metavar)
        if spec.choices and kind is not bool:
            kwargs.update(choices=spec.choices, metavar="{" + ",".join(spec.choices) + "}")
        if spec.positional:
            kwargs.pop("default", None)
            parser.add_argument(f.name, **kwargs)
            continue
        names = [flag_name(f.name)] + ([spec.short] if spec.short else [])
        parser.add_argument(*names, dest=f.name, **kwargs)
        hidden = [n for n in (f"--{f.name}", *spec.aliases) if n not in names]
        if hidden:
            kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
            parser.add_argument(*hidden, dest=f.name, **kwargs)
    return parser


def parse_job(job_type: type[T], argv: Sequence[str], prog: str) -> tuple[T, list[str]]:
    """``(job, beam_args)`` from a command line: the job's flags make the (validated) job, the
    rest is left for Beam. Raises ContractError for a bad value, a missing required flag or a
    near-miss of one of the job's flags."""
    parser = job_parser(job_type, prog)
    namespace, rest = parser.parse_known_args(list(argv))
    # every spelling of a flag (hidden aliases too) -> the one --help shows
    ours = {s: flag_name(action.dest) for action in parser._actions for s in action.option_strings}
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name.startswith("--"):
            near = difflib.get_close_matches(name, ours, n=1, cutoff=0.85)
            if near:
                raise ContractError(f"unknown flag {name}: did you mean {ours[near[0]]}?", source=prog)
    hints, values = typing.get_type_hints(job_type), {}
    for f in fields(job_type):
        if _spec(f) is None:
            continue
        value = getattr(namespace, f.name, f.default)
        values[f.name] = tuple(value or ()) if _base_type(hints[f.name])[1] else value
    try:
        job = job_type(**values)
    except ContractError as err:  # name the flag as the user typed it
        raise ContractError(
            err.reason, field=flag_name(err.field) if err.field else None, source=prog
        ) from None
    return job, rest


def help_text(job_type: type, prog: str, description: str, epilog: str = "") -> str:
    """``--help`` of a job: its own flags (generated), then what passes through."""
    epilog = "\n\n".join(textwrap.fill(part, 100) for part in epilog.split("\n\n")) if epilog else ""
    return job_parser(job_type, prog, description, epilog).format_help()
