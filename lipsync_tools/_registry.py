"""Registries of ``"module:Attr"`` strings, imported only when an entry is used.

Face backends, inference backends, model families' networks and importers' readers are named in tables of
strings (as uvicorn names its protocol implementations), so that importing a table, or ``lipsync --help``,
never imports mediapipe, torch or onnxruntime. :func:`load_attr` is the one place that turns such a string
into the object, with one set of messages for the ways it fails.

A leaf module, like ``_atomic``: it imports only the standard library and :mod:`lipsync_tools.errors`, so
every layer (faces, models, importers) may use it.
"""

from __future__ import annotations

import importlib
import re

from lipsync_tools.errors import BackendUnavailableError, UsageError

# "package.module:Attr": dotted identifiers, one colon, then one identifier.
_TARGET = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)")


def load_attr(target: str, *, what: str) -> object:
    """Import the module of ``target`` (``"package.module:Attr"``) and return its attribute ``Attr``.

    ``what`` names the entry in messages, e.g. ``"the 'fan' face backend"``.

    Raises:
        UsageError: ``target`` is not ``"package.module:Attr"`` (a wrong registry entry).
        BackendUnavailableError: the module does not import (the message names it and, when what is missing
            is a module it imports, that module and what to pip install), or it has no attribute ``Attr``.
            It derives from :class:`ImportError`, as Python's own ``from module import Attr`` failures do.
    """
    parsed = _TARGET.fullmatch(target)
    if parsed is None:
        raise UsageError(
            f"{what} is registered as {target!r}; expected 'package.module:Attr' such as "
            "'lipsync_tools.faces.fan_backend:FanFaceAligner'. Correct the registry entry"
        )
    module_name, attr = parsed["module"], parsed["attr"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(_import_failure(exc, module_name, target, what)) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendUnavailableError(
            f"{what} cannot be loaded: module {module_name} has no attribute {attr!r} (registered as "
            f"{target!r}); correct the registry entry, or reinstall lipsync-tools if it is out of date"
        ) from None


def _import_failure(exc: ImportError, module_name: str, target: str, what: str) -> str:
    """The message for ``exc``: the registered module missing, a module it imports missing, or else."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (missing == module_name or module_name.startswith(f"{missing}.")):
        return (
            f"{what} cannot be loaded: its module {module_name} does not exist (registered as {target!r}); "
            "correct the registry entry, or reinstall lipsync-tools if it is incomplete"
        )
    if missing:
        return (
            f"{what} cannot be loaded because {missing} is not installed ({module_name} imports it); "
            f"install it with: pip install {missing.partition('.')[0]}"
        )
    return (
        f"{what} cannot be loaded: importing {module_name} failed ({exc}); reinstall the package it names, "
        "or lipsync-tools"
    )
