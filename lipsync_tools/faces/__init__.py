"""Face landmark backends behind one interface, chosen by name from a lazily imported registry.

Importing this package imports neither mediapipe nor torch nor face-alignment; a backend imports what it
needs when it is created.
"""

from lipsync_tools.faces.base import FaceBackend, FaceObservation, FaceOptions, LandmarkScheme
from lipsync_tools.faces.registry import DEFAULT_BACKEND, FACE_BACKENDS, backend_names, create_backend
from lipsync_tools.faces.schemes import IBUG_68, MEDIAPIPE_468

__all__ = [
    "DEFAULT_BACKEND",
    "FACE_BACKENDS",
    "IBUG_68",
    "MEDIAPIPE_468",
    "FaceBackend",
    "FaceObservation",
    "FaceOptions",
    "LandmarkScheme",
    "backend_names",
    "create_backend",
]
