"""Detect stage: run a face backend on one frame, optionally on a downscaled copy.

Landmark backends look at small inputs anyway (MediaPipe: a 128 px detector and a 192 px mesh), so handing
them a 1280x720 frame mostly pays for colour conversion and resampling of pixels they never use.
Downscaling the longer side to ``max_side`` first and scaling the results back costs about 1 ms and halves
detection time at 720p, with no change to what the detector sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UsageError
from ..faces.base import FaceBackend, FaceObservation


@dataclass(frozen=True)
class DetectOptions:
    max_side: int = 640  # longest side of the frame given to the backend; 0 = never downscale

    def __post_init__(self) -> None:
        if self.max_side != 0 and self.max_side < 128:
            raise UsageError(f"detection size is {self.max_side}; expected 0 (full frame) or >= 128 pixels")


def detection_copy(frame: np.ndarray, options: DetectOptions) -> tuple[np.ndarray, float]:
    """``(copy, scale)``: ``frame`` with its longest side at most ``options.max_side`` (the frame itself when
    it is small enough), and the factor from full-frame to copy coordinates. The build also finds shot cuts
    and face signatures on this copy, so every per-frame analysis shares one resize."""
    longest = max(frame.shape[0], frame.shape[1])
    if options.max_side == 0 or longest <= options.max_side:
        return frame, 1.0
    scale = options.max_side / longest
    small = cv2.resize(
        frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA
    )
    return small, scale


def detect_in_copy(backend: FaceBackend, copy: np.ndarray, scale: float) -> list[FaceObservation]:
    """Faces on a :func:`detection_copy`, in full-frame pixel coordinates."""
    if scale == 1.0:
        return backend.detect(copy)
    back = np.float32(1.0 / scale)
    return [
        FaceObservation(box=obs.box * back, landmarks=obs.landmarks * back, score=obs.score)
        for obs in backend.detect(copy)
    ]


def detect_faces(backend: FaceBackend, frame: np.ndarray, options: DetectOptions) -> list[FaceObservation]:
    """Faces on ``frame`` (BGR uint8), in full-frame pixel coordinates."""
    return detect_in_copy(backend, *detection_copy(frame, options))
