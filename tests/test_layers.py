"""The import graph follows the layers of ARCHITECTURE.md, and no two modules import each other.

A static scan of every ``import`` in ``lipsync_tools`` (function-level and ``TYPE_CHECKING`` imports
included for the layer rule: a lazy import is still a dependency). The table below is ARCHITECTURE.md's
"who may import whom", with the amendments this code taught (named there, with the reasons).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lipsync_tools"

BASE = {"errors", "ids", "progress", "_atomic", "_quiet", "_registry", "_version"}
"""Top-level modules every layer may import: errors, the package-id rule, the progress protocol, helpers."""

LEAVES = {"remote", "package", "models", "faces", "media", "audio", "protocol"}
"""Layers that import only the base modules (and themselves)."""

ALLOWED: dict[str, set[str]] = {
    "bench": {"server", "client", "baseline", "engine", "pipeline", "package", "models", "media", "audio",
              "protocol", "cluster"},
    "render": {"engine", "client", "protocol", "package", "media", "audio"},
    "cluster": {"server", "client", "engine", "pipeline", "protocol", "remote", "package"},
    "server": {"engine", "protocol", "remote", "package", "audio"},
    "baseline": {"engine", "pipeline", "faces", "models", "media", "audio", "package"},
    "client": {"protocol"},
    "engine": {"package", "models", "media", "audio"},
    "importers": {"package", "models", "media", "audio", "pipeline", "faces"},
    "pipeline": {"faces", "media", "audio", "package", "models"},
    **{leaf: set() for leaf in LEAVES},
}
"""Layer -> the layers it may import (``cli`` and the public ``__init__``/``__main__`` may import any)."""

ANY = {"cli", "__init__", "__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules of lipsync_tools that ``path`` imports (``from pkg import submodule`` names the submodule)."""
    name = _module_name(path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                sub = ROOT.parent / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").is_file() or sub.is_dir() else target)
    return {m for m in found if m == "lipsync_tools" or m.startswith("lipsync_tools.")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def test_every_import_follows_the_layer_table():
    broken = []
    for module, path in sorted(_modules().items()):
        source = _layer(module)
        if source in ANY or source in BASE:
            continue
        assert source in ALLOWED, f"{module}: layer {source!r} is not in the table (nor in ARCHITECTURE.md)"
        for target in sorted(_imports(path, top_level_only=False)):
            layer = _layer(target)
            if target == "lipsync_tools":
                broken.append(f"{module} imports the public API package lipsync_tools (import the module)")
            elif layer != source and layer not in BASE and layer not in ALLOWED[source]:
                broken.append(f"{module} ({source}) imports {target} ({layer})")
    assert broken == []


def test_base_modules_import_no_layer():
    for name in sorted(BASE):
        path = ROOT / f"{name}.py"
        if path.is_file():
            assert {_layer(t) for t in _imports(path, top_level_only=False)} <= BASE, name


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other_at_module_level():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        graph[module] = {t for t in _imports(path, top_level_only=True) if t in modules and t != module}
    assert _cycles(graph) == []


def test_the_scan_sees_a_cycle_and_a_forbidden_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    engine = ROOT / "engine" / "engine.py"
    assert "lipsync_tools.engine.requests" in _imports(engine, top_level_only=True)
    assert not any(_layer(t) == "protocol" for t in _imports(engine, top_level_only=False))


@pytest.mark.parametrize("layer", sorted(LEAVES))
def test_leaves_are_leaves(layer):
    assert ALLOWED[layer] == set()
