"""Masks stage: the model-input mask and the feathered blend mask, both in crop coordinates.

* The model-input mask hides the lower half of the crop, as Wav2Lip's generator expects (it paints the
  mouth there from audio). It is the same for every frame: ``(S, S)`` uint8, 1 = visible, 0 = hidden.
* The blend mask says where a generated crop replaces the original when pasted back: the lower face from
  the nose tip down, inside the jaw line, feathered with a Gaussian so there is no seam, and forced to 0 at
  the crop border so the rectangle's edge never shows. ``(S, S)`` uint8, 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UsageError
from ..faces.base import LandmarkScheme


@dataclass(frozen=True)
class MaskOptions:
    feather: float = 0.06  # Gaussian sigma as a fraction of the crop side

    def __post_init__(self) -> None:
        if not 0.0 <= self.feather <= 0.5:
            raise UsageError(f"mask feather is {self.feather}; expected a fraction in 0..0.5")


def model_input_mask(size: int) -> np.ndarray:
    """``(size, size)`` uint8: 1 on the upper half, 0 on the lower half (rows ``size // 2`` and below)."""
    mask = np.ones((size, size), np.uint8)
    mask[size // 2 :] = 0
    return mask


def blend_mask(
    crop_landmarks: np.ndarray, scheme: LandmarkScheme, size: int, options: MaskOptions
) -> np.ndarray:
    """Feathered lower-face mask from landmarks already mapped to crop coordinates ``(K, 2)``."""
    jaw = crop_landmarks[list(scheme.jaw)]
    lips = crop_landmarks[list(scheme.outer_lips)]
    nose_y = float(crop_landmarks[scheme.nose_tip, 1])
    lower_jaw = jaw[jaw[:, 1] >= nose_y]
    if lower_jaw.shape[0] == 0:
        lower_jaw = jaw
    left, right = float(lower_jaw[:, 0].min()), float(lower_jaw[:, 0].max())
    top = np.array([[left, nose_y], [right, nose_y]], np.float32)
    points = np.concatenate([lower_jaw, lips, top]).astype(np.float32)
    points = np.clip(points, 0, size - 1)
    hull = cv2.convexHull(np.rint(points).astype(np.int32))
    mask = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(mask, hull, (1.0,))
    sigma = options.feather * size
    if sigma > 0:
        mask = np.asarray(
            cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT),
            dtype=np.float32,
        )
        # Fade to exactly 0 at the border over ~2 sigma, so the pasted rectangle has no visible edge.
        ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / max(2.0 * sigma, 1.0), 0, 1)
        mask *= np.minimum.outer(ramp, ramp).astype(np.float32)
    return np.rint(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
