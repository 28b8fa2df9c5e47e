"""Config loading at the edge: YAML file + ``--set key=value`` overrides -> frozen dataclass.

Overrides use dotted paths with list indices (``stages.1.seq_len=4096`` or
``stages[1].seq_len=4096``); values are parsed as YAML scalars (``1e6``, ``true``, ``[1, 2]``).
Everything is then validated by :func:`lwmkit.schemas.from_dict`, so a typo in the file or
in an override is an error naming the field and the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml

from lwmkit.schemas import ContractError, from_dict

T = TypeVar("T")
_INDEX = re.compile(r"\[(\d+)\]")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e6`` as a float (YAML 1.1 would make it the string "1e6"), and
    refuses a key given twice in one mapping (YAML's "last one wins" hides typos) and
    non-finite numbers (``.inf``/``.nan``: no lwmkit setting means them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a finite number", node.start_mark
            )
        return value


_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line from a YAML error: ``line L, column C: what``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    what = " ".join(str(getattr(err, "problem", None) or err).split())
    context = getattr(err, "context", None)
    if context and getattr(err, "problem", None):
        what = f"{what} ({' '.join(str(context).split())})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what


def parse_yaml(text: str) -> Any:
    """YAML with the safe loader (plus scientific-notation floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _parse_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in _INDEX.sub(r".\1", key).split("."):
        if not piece:
            raise ContractError(f"malformed override key {key!r}", field=key, source="--set")
        parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``data`` with each ``key=value`` override applied (in place, and returned)."""
    for item in overrides:
        if "=" not in item:
            raise ContractError(f"override {item!r} is not key=value", source="--set")
        key, raw = item.split("=", 1)
        path = _parse_path(key.strip())
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as err:
            raise ContractError(f"value {raw!r} is not valid YAML ({yaml_problem(err)})", field=key,
                                source="--set") from None  # fmt: skip
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ContractError(f"index {part} is out of range", field=key, source="--set")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise ContractError(f"'{part}' is not inside a mapping", field=key, source="--set")
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ContractError(f"index {last} is out of range", field=key, source="--set")
        elif not isinstance(node, dict):
            raise ContractError(f"'{last}' is not inside a mapping", field=key, source="--set")
        node[last] = value
    return data


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML mapping from a local path or bucket URL; errors name the file."""
    import fsspec

    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            data = parse_yaml(f.read())
    except FileNotFoundError:
        raise ContractError("config file not found", source=path) from None
    except yaml.YAMLError as err:
        refused = isinstance(err, yaml.constructor.ConstructorError)  # valid YAML, but a duplicate key or inf/nan
        raise ContractError(f"{'' if refused else 'is not valid YAML: '}{yaml_problem(err)}", source=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ContractError(f"must hold a mapping at the top, got {type(data).__name__}", source=path)
    return data


def load_config(cls: type[T], path: str | None, overrides: Sequence[str] = ()) -> T:
    """Build config ``cls`` from a YAML file (or from overrides alone when ``path`` is None)."""
    data = read_yaml(path) if path else {}
    source = path or "--set"
    if overrides:
        apply_overrides(data, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    return from_dict(cls, data, source=source)
