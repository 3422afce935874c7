"""Crop stage: square crop rectangles from landmarks, and the model-size crops cut with them.

Rectangles are ``(x0, y0, x1, y1)`` in frame pixels, half-open (``x1``/``y1`` excluded), int32. A
rectangle is always square: centred on the landmarks' extent, its side is the larger extent times
``1 + 2 * padding``; when it would leave the frame it is shifted back inside (never squashed), and only a
face larger than the frame itself gets a side equal to the frame's shorter dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class CropOptions:
    size: int = 96  # model input side in pixels (Wav2Lip: 96)
    padding: float = 0.1  # added on each side, as a fraction of the face's larger extent

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 1024:
            raise UsageError(f"crop size is {self.size}; expected 16..1024 pixels (Wav2Lip uses 96)")
        if not 0.0 <= self.padding <= 1.0:
            raise UsageError(f"box padding is {self.padding}; expected a fraction in 0..1 (e.g. 0.1)")


def crop_rectangles(landmarks: np.ndarray, frame_size: tuple[int, int], options: CropOptions) -> np.ndarray:
    """Square crop rectangles for landmarks ``(N, K, 2)`` in a frame of ``(width, height)``.

    Returns int32 ``(N, 4)``.
    """
    width, height = frame_size
    low = landmarks.min(axis=1)
    high = landmarks.max(axis=1)
    centre = (low + high) / 2.0
    extent = (high - low).max(axis=1)
    side = np.rint(extent * (1.0 + 2.0 * options.padding))
    side = np.clip(side, 2, min(width, height)).astype(np.int64)
    x0 = np.rint(centre[:, 0] - side / 2.0).astype(np.int64)
    y0 = np.rint(centre[:, 1] - side / 2.0).astype(np.int64)
    x0 = np.clip(x0, 0, width - side)
    y0 = np.clip(y0, 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def crop_face(frame: np.ndarray, rect: np.ndarray, size: int) -> np.ndarray:
    """Cut ``rect`` out of a BGR frame and resize it to ``(size, size, 3)`` uint8."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    patch = frame[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if (x1 - x0) > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def to_crop_coordinates(points: np.ndarray, rect: np.ndarray, size: int) -> np.ndarray:
    """Map frame-pixel points ``(..., 2)`` into the ``size``-pixel crop of ``rect``."""
    scale = size / float(rect[2] - rect[0])
    return np.asarray((points - rect[:2].astype(np.float32)) * np.float32(scale), dtype=np.float32)
