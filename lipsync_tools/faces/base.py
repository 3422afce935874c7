"""The interface every face-landmark backend implements.

Coordinates are pixels in the (rotation-corrected) frame, ``x`` to the right and ``y`` down, origin at the
top-left corner of the top-left pixel. Boxes are ``(x0, y0, x1, y1)``; landmarks are ``(x, y)`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


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
