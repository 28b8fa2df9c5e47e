"""Strict, typed construction of frozen dataclasses from plain mappings (YAML/JSON).

Every config and manifest lwmkit reads goes through :func:`from_dict`: unknown keys are
errors (with a did-you-mean), missing required fields are errors, and a value of the wrong
type is an error naming its full path (``stages[2].rope_theta``) and the file it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from lwmkit.schemas.errors import ContractError

T = TypeVar("T")

FORMAT_VERSION_FIELD = "format_version"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ContractError("must not be null", field=path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ContractError as err:
                errors.append(err.reason)
        raise ContractError("; ".join(errors), field=path)
    if value is None:
        raise ContractError(f"must be {_type_name(tp)}, got null", field=path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ContractError(f"must be one of {list(choices)}, got {value!r}", field=path)
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ContractError(f"must be a list, got {type(value).__name__}", field=path)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ContractError(f"must have {len(args)} items, got {len(value)}", field=path)
            return tuple(_convert(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ContractError(f"must be a mapping, got {type(value).__name__}", field=path)
        args = get_args(tp) or (str, Any)
        return {
            _convert(k, args[0], path): _convert(v, args[1], _join(path, str(k))) for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ContractError(f"must be true or false, got {value!r}", field=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"must be an integer, got {value!r}", field=path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(f"must be a number, got {value!r}", field=path)
        if not math.isfinite(value):  # inf/nan would train, divide or compare silently wrong
            raise ContractError(f"must be a finite number, got {value!r}", field=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ContractError(f"must be a string, got {value!r}", field=path)
        return value
    raise TypeError(f"lwmkit.schemas.strict cannot convert to {tp!r} (at {path})")


# Resolving a dataclass's string annotations compiles them each time; a packed sample's
# meta.json builds one SegmentInfo per segment, so readers would spend most of their time here.
_type_hints = functools.cache(get_type_hints)


def _build(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ContractError(f"must be a mapping, got {type(data).__name__}", field=path or None)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(fields))})"
        raise ContractError(f"unknown key{hint}", field=_join(path, str(key)))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError("is required but missing", field=_join(path, name))
            continue
        kwargs[name] = _convert(data[name], hints[name], _join(path, name))
    try:
        return cls(**kwargs)
    except ContractError as err:
        raise err.located(prefix=path or None) from None


def from_dict(cls: type[T], data: Any, *, source: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, validating every key, type and value.

    Raises:
        ContractError: naming ``source`` (a file name) and the offending field path.
    """
    try:
        return _build(cls, data, "")
    except ContractError as err:
        raise err.located(source=source) from None


def to_dict(obj: Any) -> Any:
    """Plain JSON/YAML-ready data from a dataclass tree (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check_format_version(value: int, expected: int, what: str) -> None:
    """Refuse a file written under another format version of contract ``what``."""
    if value != expected:
        raise ContractError(
            f"{what} format version {value} is not supported (this lwmkit reads version {expected})",
            field=FORMAT_VERSION_FIELD,
        )


def require(condition: bool, field: str, message: str) -> None:
    """Raise ContractError on ``field`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ContractError(message, field=field)


__all__ = ["from_dict", "to_dict", "check_format_version", "require", "FORMAT_VERSION_FIELD"]
