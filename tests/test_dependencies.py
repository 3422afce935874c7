"""pyproject.toml declares what the code imports: every third-party module imported anywhere in
``lipsync_tools`` comes from a declared distribution (a dependency or an extra), and a missing extra gives
the clear error the architecture promises."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from lipsync_tools.errors import BackendUnavailableError

ROOT = Path(__file__).resolve().parents[1]

NOT_INSTALLED_HERE = {"tensorrt", "onnxconverter_common"}
"""Optional imports behind a clear error that this machine does not have (GPU-only, or a fallback)."""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, str]:
    """Declared distribution -> where (``dependencies`` or the extra's name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    where = {_name(r): "dependencies" for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        for r in requirements:
            where.setdefault(_name(r), extra)
    return where


def imported_modules() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "lipsync_tools").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    ours = ("lipsync_tools", "__future__")
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ours}


def test_every_imported_module_comes_from_a_declared_distribution():
    where = declared()
    providers = packages_distributions()
    undeclared = {}
    for module in sorted(imported_modules() - NOT_INSTALLED_HERE):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        assert dists, f"{module} is imported but not installed"
        if not dists & set(where):
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_heavy_optional_parts_are_extras():
    where = declared()
    assert where["face-alignment"] == "fan"
    assert where["matplotlib"] == "plot"
    assert where["onnxruntime-gpu"] == "gpu"
    assert "fastapi" not in where and where["starlette"] == "dependencies"


def test_a_missing_plot_extra_is_said_before_the_run(monkeypatch: pytest.MonkeyPatch):
    from lipsync_tools.bench.plot import check_plotting

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes ``import matplotlib`` raise ImportError
    with pytest.raises(BackendUnavailableError, match=re.escape("pip install 'lipsync-tools[plot]'")):
        check_plotting()


def test_the_server_and_the_client_import_no_model_runtime():
    """torch and ONNX Runtime load when a server starts its engine, not when the server or client package
    is imported (the engine and lipsync_tools export their names lazily)."""
    import subprocess

    probe = ("import sys, lipsync_tools.server, lipsync_tools.client; "
             "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
