"""Crop stage: square crop rectangles from landmarks, and the model-size crops cut with them.

Rectangles are ``(x0, y0, x1, y1)`` in frame pixels, half-open (``x1``/``y1`` excluded), int32, always
square. Two box rules, chosen by the model family:

* ``padded`` (Wav2Lip): centred on the landmarks' extent, side = the larger extent times ``1 + 2 * padding``;
* ``synctalk2d`` (SyncTalk_2D, Ultralight): ``x0`` = the face's left edge at eye level, ``x1`` its right edge,
  ``y0`` the middle of the nose bridge, side ``x1 - x0``; with PFLD's 110 points exactly
  ``[lms[1].x, lms[52].y, lms[31].x, lms[52].y + lms[31].x - lms[1].x]``, the points the scheme's
  ``box_points`` name (averaged) on other layouts.

When a rectangle would leave the frame it is shifted back inside (never squashed; SyncTalk_2D's own
scripts slice past the edge and get a stretched crop), and only a face larger than the frame itself gets a
side equal to the frame's shorter dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UsageError
from ..faces.base import LandmarkScheme


@dataclass(frozen=True)
class CropOptions:
    size: int = 96  # model input side in pixels (Wav2Lip: 96, SyncTalk_2D-328: 328, 160 families: 168)
    padding: float = 0.1  # "padded" rule: added on each side, as a fraction of the face's larger extent
    box_rule: str = "padded"  # "padded" or "synctalk2d" (see the module docstring)
    interpolation: str = "area"  # "area" (INTER_AREA shrinking, else linear) or "cubic" (SyncTalk_2D)

    def __post_init__(self) -> None:
        if self.box_rule not in ("padded", "synctalk2d"):
            raise UsageError(f"box rule is {self.box_rule!r}; expected padded or synctalk2d")
        if self.interpolation not in ("area", "cubic"):
            raise UsageError(f"crop interpolation is {self.interpolation!r}; expected area or cubic")
        if not 16 <= self.size <= 1024:
            raise UsageError(f"crop size is {self.size}; expected 16..1024 pixels (Wav2Lip uses 96)")
        if not 0.0 <= self.padding <= 1.0:
            raise UsageError(f"box padding is {self.padding}; expected a fraction in 0..1 (e.g. 0.1)")


def crop_rectangles(
    landmarks: np.ndarray,
    frame_size: tuple[int, int],
    options: CropOptions,
    scheme: LandmarkScheme | None = None,
) -> np.ndarray:
    """Square crop rectangles for landmarks ``(N, K, 2)`` in a frame of ``(width, height)``.

    The ``synctalk2d`` rule needs the landmark ``scheme`` (its ``box_points``). Returns int32 ``(N, 4)``.
    Raises :class:`UsageError` when the scheme has no box points for that rule.
    """
    if options.box_rule == "synctalk2d":
        return synctalk2d_rectangles(landmarks, frame_size, scheme)
    width, height = frame_size
    low = landmarks.min(axis=1)
    high = landmarks.max(axis=1)
    centre = (low + high) / 2.0
    extent = (high - low).max(axis=1)
    side = np.rint(extent * (1.0 + 2.0 * options.padding))
    x0 = np.rint(centre[:, 0] - np.clip(side, 2, min(width, height)) / 2.0)
    y0 = np.rint(centre[:, 1] - np.clip(side, 2, min(width, height)) / 2.0)
    return _inside(x0, y0, side, frame_size)


def synctalk2d_rectangles(
    landmarks: np.ndarray, frame_size: tuple[int, int], scheme: LandmarkScheme | None
) -> np.ndarray:
    """SyncTalk_2D's square boxes (see the module docstring) for landmarks ``(N, K, 2)``; int32 ``(N, 4)``."""
    if scheme is None or not all(scheme.box_points):
        name = scheme.name if scheme is not None else "unknown"
        raise UsageError(
            f"the synctalk2d box rule needs eye-level contour and nose-bridge points, which the {name} "
            "landmark layout does not define; use --face-backend mediapipe or fan"
        )
    left, right, top = (landmarks[:, list(points)].mean(axis=1) for points in scheme.box_points)
    # PFLD landmark files hold integers and SyncTalk_2D casts them to int32 (truncation), so whole-pixel
    # input keeps its exact box; rounding changes nothing there and is unbiased for sub-pixel landmarks.
    x0 = np.rint(left[:, 0])
    y0 = np.rint(top[:, 1])
    side = np.rint(right[:, 0]) - x0
    return _inside(x0, y0, side, frame_size)


def _inside(x0: np.ndarray, y0: np.ndarray, side: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Square rectangles of ``side`` at ``(x0, y0)``, shifted (never squashed) to lie inside the frame."""
    width, height = frame_size
    side = np.clip(side, 2, min(width, height)).astype(np.int64)
    x0 = np.asarray(x0, np.float64).astype(np.int64)
    y0 = np.asarray(y0, np.float64).astype(np.int64)
    x0 = np.clip(x0, 0, width - side)
    y0 = np.clip(y0, 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def crop_face(frame: np.ndarray, rect: np.ndarray, size: int, interpolation_rule: str = "area") -> np.ndarray:
    """Cut ``rect`` out of a BGR frame and resize it to ``(size, size, 3)`` uint8.

    ``interpolation_rule``: ``"area"`` (INTER_AREA when shrinking, else INTER_LINEAR) or ``"cubic"``
    (INTER_CUBIC, what SyncTalk_2D's inference uses for its 328 crops).
    """
    x0, y0, x1, y1 = (int(v) for v in rect)
    patch = frame[y0:y1, x0:x1]
    if interpolation_rule == "cubic":
        return cv2.resize(patch, (size, size), interpolation=cv2.INTER_CUBIC)
    interpolation = cv2.INTER_AREA if (x1 - x0) > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def to_crop_coordinates(points: np.ndarray, rect: np.ndarray, size: int) -> np.ndarray:
    """Map frame-pixel points ``(..., 2)`` into the ``size``-pixel crop of ``rect``."""
    scale = size / float(rect[2] - rect[0])
    return np.asarray((points - rect[:2].astype(np.float32)) * np.float32(scale), dtype=np.float32)


def crop_jitter(rects: np.ndarray) -> float:
    """The RMS of the crop centre's frame-to-frame motion, in frame pixels (0 for fewer than 2 frames).

    Measured on the stored rectangles, i.e. after smoothing: it includes the head's own motion, so a still
    presenter's package should show well under a pixel and a restless one a few pixels.
    """
    if rects.shape[0] < 2:
        return 0.0
    centres = (rects[:, :2].astype(np.float64) + rects[:, 2:]) / 2.0
    steps = np.diff(centres, axis=0)
    return float(np.sqrt(np.mean(np.sum(steps**2, axis=1))))
