"""The interface every face-landmark backend implements.

Coordinates are pixels in the (rotation-corrected) frame, ``x`` to the right and ``y`` down, origin at the
top-left corner of the top-left pixel. Boxes are ``(x0, y0, x1, y1)``; landmarks are ``(x, y)`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lipsync_tools._quiet import native_stderr_silenced
from lipsync_tools.errors import BackendUnavailableError, UsageError


@dataclass(frozen=True)
class LandmarkScheme:
    """Which landmark indices mean what, for one backend's point layout.

    Index tuples are ordered along the contour they describe, so they can be drawn or filled as polygons.
    """

    name: str  # stored in the package manifest, e.g. "mediapipe-468" or "ibug-68"
    num_points: int
    jaw: tuple[int, ...]  # lower face contour, from one ear along the chin to the other
    outer_lips: tuple[int, ...]  # outer lip contour, closed polygon
    nose_tip: int
    left_eye: tuple[int, ...]  # the subject's left eye (image right)
    right_eye: tuple[int, ...]
    # SyncTalk_2D's square box (model families with box rule "synctalk2d"): the points whose mean x is the
    # face's image-left edge at eye level, its image-right edge at eye level, and whose mean y is the middle
    # of the nose bridge. On PFLD's 110 points these are exactly (1,), (31,), (52,).
    box_points: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((), (), ())


@dataclass(frozen=True)
class FaceObservation:
    """One face found on one frame."""

    box: np.ndarray  # float32 (4,): x0, y0, x1, y1 in pixels
    landmarks: np.ndarray  # float32 (num_points, 2): x, y in pixels
    score: float  # detector confidence in [0, 1]


@dataclass(frozen=True)
class FaceOptions:
    """Options shared by all backends.

    ``video_mode`` lets a backend track between consecutive frames (faster, steadier); set it to ``False``
    when frames are unrelated stills.
    """

    max_faces: int = 4
    min_confidence: float = 0.5
    video_mode: bool = True
    weights_dir: Path | None = None  # where backends that need weight files look first
    debug: bool = False  # when false, native log noise is kept off the terminal
    extra: dict[str, str] = field(default_factory=dict)


class FaceBackend(Protocol):
    """Finds faces and their landmarks on BGR frames.

    Implementations are constructed with a :class:`FaceOptions`; heavy imports happen in ``__init__``.
    A backend that needs weight files raises :class:`~lipsync_tools.errors.MissingWeightsError` naming the
    file and where to put it, and never downloads anything.
    """

    name: str
    scheme: LandmarkScheme

    def detect(self, frame_bgr: np.ndarray) -> list[FaceObservation]:
        """Return the faces on one ``(H, W, 3)`` uint8 BGR frame, most confident first (may be empty)."""
        ...

    def close(self) -> None:
        """Release native resources; the backend is unusable afterwards."""
        ...


# --- helpers the backends share (backends never import each other: ARCHITECTURE.md) ----------------------

MEDIAPIPE_PIP_HINT = "pip install mediapipe==0.10.21"


def import_mediapipe(backend: str, debug: bool) -> Any:
    """Import and return the ``mediapipe`` module with its native log lines silenced.

    Raises:
        BackendUnavailableError: mediapipe is not installed (the message says what to pip install).
    """
    try:
        with native_stderr_silenced(not debug):
            import mediapipe
    except ImportError as error:
        raise BackendUnavailableError(
            f"the {backend!r} face backend needs mediapipe, which cannot be imported ({error}); "
            f"install it with: {MEDIAPIPE_PIP_HINT}"
        ) from error
    return mediapipe


def frame_to_rgb(frame_bgr: np.ndarray) -> np.ndarray:
    """Check that ``frame_bgr`` is an ``(H, W, 3)`` uint8 BGR frame and return it as contiguous RGB.

    Raises:
        UsageError: the array has another shape or dtype.
    """
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise UsageError(
            f"face backends take (H, W, 3) uint8 BGR frames, got shape {frame_bgr.shape} "
            f"dtype {frame_bgr.dtype}; convert the frame with cv2.cvtColor/astype first"
        )
    return np.ascontiguousarray(frame_bgr[:, :, ::-1])


def check_options(options: FaceOptions) -> None:
    """Reject option values no backend can use.

    Raises:
        UsageError: ``max_faces`` < 1 or ``min_confidence`` outside [0, 1].
    """
    if options.max_faces < 1:
        raise UsageError(f"max_faces must be at least 1, got {options.max_faces}")
    if not 0.0 <= options.min_confidence <= 1.0:
        raise UsageError(f"min_confidence must be between 0 and 1, got {options.min_confidence}")
