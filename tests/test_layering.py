"""Imports run one way: schemas < runtime < tokenizers < pipelines | trainer < CLI, and no two
modules import each other, directly or in a loop (imports inside functions and under
TYPE_CHECKING count: an import hidden in a function to dodge a cycle is still a cycle)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> (package, layer). lwmkit/ is the CLI, except its runtime package and its __init__.
FOLDERS = {
    "schemas": "lwmkit.schemas",
    "tokenizers": "lwmkit.tokenizers",
    "pipelines": "lwmkit.pipelines",
    "trainer": "lwmkit.trainer",
    "lwmkit": "lwmkit",
}
MAY_IMPORT = {
    "schemas": {"schemas"},
    "runtime": {"schemas", "runtime"},
    "tokenizers": {"schemas", "runtime", "tokenizers"},
    "pipelines": {"schemas", "runtime", "tokenizers", "pipelines"},
    "trainer": {"schemas", "runtime", "tokenizers", "trainer"},
    "cli": {"schemas", "runtime", "tokenizers", "pipelines", "trainer", "cli"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([pkg, *parts])] = path
    return mods


def _layer(module: str) -> str:
    if module == "lwmkit" or module.startswith("lwmkit.runtime"):
        return "runtime"
    for folder in ("schemas", "tokenizers", "pipelines", "trainer"):
        if module.startswith(f"lwmkit.{folder}"):
            return folder
    return "cli"


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import in ``path``, wherever it sits."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in mods:  # `from pkg import name` names a module or an attribute
                name = name.rpartition(".")[0]
            if name and name != module and (name, node.lineno) not in found:
                found.append((name, node.lineno))
    return found


def _graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    mods = _modules()
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in mods.items():
        for target, line in _imports(module, path, mods):
            edges[module].setdefault(target, line)
    return mods, edges


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                # a package's __init__ re-exporting its own submodules is not a cycle
                top = min(component)
                if len(component) > 1 and not all(m == top or m.startswith(top + ".") for m in component):
                    found.append(sorted(component))
    return found


def test_no_upward_imports():
    mods, edges = _graph()
    bad = [
        f"{mods[src].relative_to(ROOT)}:{line}: {src} ({_layer(src)}) imports {dst} ({_layer(dst)})"
        for src, targets in sorted(edges.items())
        for dst, line in sorted(targets.items())
        if _layer(dst) not in MAY_IMPORT[_layer(src)]
    ]
    assert not bad, (
        "imports must run schemas < runtime < tokenizers < pipelines | trainer < CLI:\n" + "\n".join(bad)
    )


def test_no_import_cycles():
    mods, edges = _graph()
    cycles = _cycles(edges)
    detail = [
        " <-> ".join(c)
        + ": "
        + "; ".join(
            f"{mods[a].relative_to(ROOT)}:{edges[a][b]} imports {b}" for a in c for b in c if b in edges[a]
        )
        for c in cycles
    ]
    assert not cycles, "import cycles (move the shared piece down):\n" + "\n".join(detail)


def test_the_check_sees_imports_inside_functions(tmp_path):
    # guard the guard: a function-level import is found, with its line
    mods = {"lwmkit.pipelines.a": tmp_path / "a.py", "lwmkit.trainer.b": tmp_path / "b.py"}
    mods["lwmkit.pipelines.a"].write_text("def f():\n    from lwmkit.trainer.b import g\n")
    assert _imports("lwmkit.pipelines.a", mods["lwmkit.pipelines.a"], mods) == [("lwmkit.trainer.b", 2)]
    assert _cycles({"x": {"y": 1}, "y": {"x": 2}}) == [["x", "y"]]
