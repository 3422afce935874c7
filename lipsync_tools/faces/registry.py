"""Face backends by name: ``name -> "module:Class"`` strings, imported only when a backend is created.

Keeping the table as strings (as uvicorn does for its protocol implementations) means importing this module,
or ``lipsync --help``, never imports mediapipe, torch or face-alignment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from lipsync_tools._registry import load_attr
from lipsync_tools.errors import UsageError
from lipsync_tools.faces.base import FaceBackend, FaceOptions

DEFAULT_BACKEND = "mediapipe"

FACE_BACKENDS: dict[str, str] = {
    "mediapipe": "lipsync_tools.faces.mediapipe_backend:MediaPipeFaceMesh",
    "fan": "lipsync_tools.faces.fan_backend:FanFaceAligner",
}


def backend_names() -> list[str]:
    """Return the registered face backend names, the default first."""
    return sorted(FACE_BACKENDS, key=lambda name: (name != DEFAULT_BACKEND, name))


def create_backend(name: str, options: FaceOptions) -> FaceBackend:
    """Import and construct the face backend registered as ``name``.

    Raises:
        UsageError: ``name`` is not registered (the message lists the known names), or an option is unusable.
        BackendUnavailableError: an optional dependency of the backend is not installed (the message says
            what to pip install).
        MissingWeightsError: the backend needs weight files that are not on disk.
    """
    target = FACE_BACKENDS.get(name)
    if target is None:
        known = ", ".join(backend_names())
        raise UsageError(f"unknown face backend {name!r}; choose one of: {known}")
    backend_class = cast(
        "Callable[[FaceOptions], FaceBackend]", load_attr(target, what=f"the {name!r} face backend")
    )
    return backend_class(options)
