"""``"module:Attr"`` registries: one loader (lipsync_tools._registry) and its messages, used by all four."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from lipsync_tools import _registry
from lipsync_tools._registry import load_attr
from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.faces import FaceOptions
from lipsync_tools.faces import registry as face_registry
from lipsync_tools.importers import base as importers_base
from lipsync_tools.models import backends, families

WHAT = "the 'demo' thing"


def test_returns_the_attribute() -> None:
    assert load_attr("json:dumps", what=WHAT) is json.dumps
    assert load_attr("os.path:join", what=WHAT) is __import__("os").path.join


@pytest.mark.parametrize(
    "target", ["json", "json:", ":dumps", "json:dumps:x", "json.:dumps", "json:du mps", "json:dumps()", ""]
)
def test_a_target_that_is_not_module_colon_attr_is_refused(target: str) -> None:
    with pytest.raises(UsageError) as raised:
        load_attr(target, what=WHAT)
    assert str(raised.value) == (
        f"the 'demo' thing is registered as {target!r}; expected 'package.module:Attr' such as "
        "'lipsync_tools.faces.fan_backend:FanFaceAligner'. Correct the registry entry"
    )


@pytest.mark.parametrize(
    ("target", "module"),
    [
        ("lipsync_tools.no_such_module:Thing", "lipsync_tools.no_such_module"),
        ("no_such_package_xyz.sub:Thing", "no_such_package_xyz.sub"),  # a missing parent package
    ],
)
def test_a_module_that_does_not_exist_is_named(target: str, module: str) -> None:
    with pytest.raises(BackendUnavailableError) as raised:
        load_attr(target, what=WHAT)
    assert str(raised.value) == (
        f"the 'demo' thing cannot be loaded: its module {module} does not exist (registered as {target!r}); "
        "correct the registry entry, or reinstall lipsync-tools if it is incomplete"
    )
    assert isinstance(raised.value, ImportError)  # what ``from module import Attr`` would raise


def _write_module(folder: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize(
    ("statement", "missing", "install"),
    [
        ("import lipsync_absent_dependency", "lipsync_absent_dependency", "lipsync_absent_dependency"),
        ("import lipsync_absent_dependency.sub", "lipsync_absent_dependency", "lipsync_absent_dependency"),
        ("from json import lipsync_absent_dependency", None, None),
    ],
)
def test_a_dependency_the_module_lacks_is_named_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement: str, missing: str | None, install: str | None
) -> None:
    _write_module(tmp_path, "lipsync_demo_plugin", f"{statement}\nThing = 1\n", monkeypatch)
    with pytest.raises(BackendUnavailableError) as raised:
        load_attr("lipsync_demo_plugin:Thing", what=WHAT)
    if missing is not None:
        assert str(raised.value) == (
            f"the 'demo' thing cannot be loaded because {missing} is not installed (lipsync_demo_plugin "
            f"imports it); install it with: pip install {install}"
        )
    else:  # not a missing module: Python's own message is kept
        assert str(raised.value) == (
            "the 'demo' thing cannot be loaded: importing lipsync_demo_plugin failed (cannot import name "
            f"'lipsync_absent_dependency' from 'json' ({json.__file__})); reinstall the package it names, "
            "or lipsync-tools"
        )
    assert isinstance(raised.value.__cause__, ImportError)


def test_a_blocked_dependency_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # how the tests of the face and model backends simulate an uninstalled package
    _write_module(tmp_path, "lipsync_demo_plugin", "import lipsync_blocked\nThing = 1\n", monkeypatch)
    monkeypatch.setitem(sys.modules, "lipsync_blocked", None)
    with pytest.raises(BackendUnavailableError, match=r"because lipsync_blocked is not installed \("):
        load_attr("lipsync_demo_plugin:Thing", what=WHAT)


def test_a_missing_attribute_is_named() -> None:
    with pytest.raises(BackendUnavailableError) as raised:
        load_attr("json:no_such_function", what=WHAT)
    assert str(raised.value) == (
        "the 'demo' thing cannot be loaded: module json has no attribute 'no_such_function' (registered "
        "as 'json:no_such_function'); correct the registry entry, or reinstall lipsync-tools if it is out "
        "of date"
    )
    assert raised.value.__cause__ is None


def test_the_helper_imports_only_the_standard_library_and_errors() -> None:
    # a base module (tests/test_layers.py): faces, models and importers may all import it
    tree = ast.parse(Path(_registry.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {m for m in imported if m.partition(".")[0] not in sys.stdlib_module_names}
    assert outside == {"lipsync_tools.errors"}


# -- the four registries load through it ------------------------------------------------------------------
def test_every_registered_target_loads() -> None:
    for name, target in face_registry.FACE_BACKENDS.items():
        assert callable(load_attr(target, what=f"the {name!r} face backend"))
    for name, target in backends.BACKENDS.items():
        assert callable(load_attr(target, what=f"the {name} inference backend"))
    for family in families.MODEL_FAMILIES.values():
        assert isinstance(families.import_network_class(family), type)
    for spec in importers_base.KINDS:
        assert callable(importers_base.kind_reader(spec.name))


BROKEN = "lipsync_tools.no_such_module:Thing"


def _does_not_exist(what: str) -> str:
    return (
        f"{what} cannot be loaded: its module lipsync_tools.no_such_module does not exist (registered as "
        f"{BROKEN!r}); correct the registry entry, or reinstall lipsync-tools if it is incomplete"
    )


def test_face_backends_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(face_registry.FACE_BACKENDS, "mediapipe", BROKEN)
    with pytest.raises(BackendUnavailableError) as raised:
        face_registry.create_backend("mediapipe", FaceOptions())
    assert str(raised.value) == _does_not_exist("the 'mediapipe' face backend")


def test_inference_backends_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.BACKENDS, "onnx", BROKEN)
    with pytest.raises(BackendUnavailableError) as raised:
        backends.create_backend("onnx", torch.nn.Identity())
    assert str(raised.value) == _does_not_exist("the onnx inference backend")


def test_model_families_use_it() -> None:
    family = dataclasses.replace(families.get_family("wav2lip"), network=BROKEN)
    with pytest.raises(BackendUnavailableError) as raised:
        families.import_network_class(family)
    assert str(raised.value) == _does_not_exist("the network of model family 'wav2lip'")


def test_importers_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = tuple(
        dataclasses.replace(spec, reader=BROKEN) if spec.name == "synctalk" else spec
        for spec in importers_base.KINDS
    )
    monkeypatch.setattr(importers_base, "KINDS", kinds)
    with pytest.raises(BackendUnavailableError) as raised:
        importers_base.kind_reader("synctalk")
    assert str(raised.value) == _does_not_exist("the reader of synctalk avatar folders")
