"""Track stage: the kept segment's face on every one of its frames, short gaps filled.

The segments stage (:mod:`.segments`) has already decided which face each segment follows and on which frames
it was detected; no gap inside a segment is longer than ``--max-gap``. This stage turns that into per-frame
arrays: frames where the face was missed are filled by linear interpolation between the nearest frames that
have it, or fail the build (``--missing-face fail``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import NoFaceDetectedError, UsageError
from ..faces.base import FaceObservation

MissingPolicy = Literal["interpolate", "fail"]


@dataclass(frozen=True)
class TrackOptions:
    """``missing``: what to do with frames of the kept segment where its face was not found."""

    missing: MissingPolicy = "interpolate"

    def __post_init__(self) -> None:
        if self.missing not in ("interpolate", "fail"):
            raise UsageError(f"missing-face policy is {self.missing!r}; expected 'interpolate' or 'fail'")


@dataclass(frozen=True)
class FaceTrack:
    """The followed face on every frame of a segment. N frames, K landmarks."""

    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1
    landmarks: np.ndarray  # float32 (N, K, 2)
    filled: np.ndarray  # bool (N,) true where the face was interpolated


def fill_track(
    per_frame: Sequence[Sequence[FaceObservation]],
    faces: Mapping[int, int],
    start: int,
    end: int,
    options: TrackOptions,
) -> FaceTrack:
    """The face of frames ``start..end-1`` from ``faces`` (frame -> index of its observation in
    ``per_frame[frame - start]``; ``per_frame`` holds the segment's frames only).

    Raises :class:`NoFaceDetectedError` if ``faces`` is empty, or if a frame lacks the face and
    ``options.missing`` is ``"fail"``; the message names the frames.
    """
    n = end - start
    if not faces:
        raise NoFaceDetectedError(f"no face found on any of the {n} frames {start}-{end}")
    first_frame = next(iter(faces))
    num_points = per_frame[first_frame - start][faces[first_frame]].landmarks.shape[0]
    boxes = np.zeros((n, 4), np.float32)
    landmarks = np.zeros((n, num_points, 2), np.float32)
    found = np.zeros(n, bool)
    for frame, o in faces.items():
        face = per_frame[frame - start][o]
        boxes[frame - start] = face.box
        landmarks[frame - start] = face.landmarks
        found[frame - start] = True

    missing = np.flatnonzero(~found)
    if missing.size and options.missing == "fail":
        shown = ", ".join(str(start + i) for i in missing[:10]) + (" ..." if missing.size > 10 else "")
        raise NoFaceDetectedError(
            f"the face is missing on {missing.size} of the {n} frames kept ({shown}); "
            "use --missing-face interpolate to fill them from neighbouring frames"
        )
    if missing.size:
        have = np.flatnonzero(found)
        boxes = _interpolate(boxes, have, missing)
        landmarks = _interpolate(landmarks.reshape(n, -1), have, missing).reshape(n, num_points, 2)
    return FaceTrack(boxes=boxes, landmarks=landmarks, filled=~found)


def _interpolate(values: np.ndarray, have: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Linear interpolation over the frame axis, per column; ends copy the nearest known frame."""
    out = values.copy()
    for column in range(values.shape[1]):
        out[missing, column] = np.interp(missing, have, values[have, column])
    return out
