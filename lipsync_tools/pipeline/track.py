"""Track stage: pick the main face and follow it across frames; fill frames where it was not found.

Faces are linked frame to frame by box overlap (IoU) into tracks; the main face is the track with the most
"presence", the sum of its box areas over the frames it appears on, so a large face seen throughout beats
both a brief close-up and a small face in the background. Frames where the main face is missing are filled
by linear interpolation between the nearest frames that have it (copies at the ends), or fail the build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import NoFaceDetectedError, UsageError
from ..faces.base import FaceObservation

MissingPolicy = Literal["interpolate", "fail"]


@dataclass(frozen=True)
class TrackOptions:
    """``min_iou``: overlap needed to call two boxes on consecutive frames the same face.
    ``max_gap``: frames a track may skip (face lost) and still continue.
    ``missing``: what to do with frames where the main face is not found.
    """

    min_iou: float = 0.3
    max_gap: int = 12
    missing: MissingPolicy = "interpolate"

    def __post_init__(self) -> None:
        if self.missing not in ("interpolate", "fail"):
            raise UsageError(f"missing-face policy is {self.missing!r}; expected 'interpolate' or 'fail'")
        if not 0.0 < self.min_iou <= 1.0:
            raise UsageError(f"min_iou is {self.min_iou}; expected a value in (0, 1]")


@dataclass(frozen=True)
class FaceTrack:
    """The main face on every frame. N frames, K landmarks."""

    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1
    landmarks: np.ndarray  # float32 (N, K, 2)
    filled: np.ndarray  # bool (N,) true where the face was interpolated
    faces_seen: int  # most faces seen on one frame


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _link_tracks(
    per_frame: Sequence[Sequence[FaceObservation]], options: TrackOptions
) -> list[dict[int, int]]:
    """Greedy IoU linking. Each track maps frame index -> index of the observation on that frame."""
    tracks: list[dict[int, int]] = []
    last: list[tuple[int, np.ndarray]] = []  # per track: (last frame seen, last box)
    for frame, observations in enumerate(per_frame):
        candidates = sorted(
            (
                (box_iou(last[t][1], obs.box), t, o)
                for t in range(len(tracks))
                if frame - last[t][0] <= options.max_gap + 1
                for o, obs in enumerate(observations)
            ),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_obs: set[int] = set()
        for iou, t, o in candidates:
            if iou < options.min_iou or t in used_tracks or o in used_obs:
                continue
            tracks[t][frame] = o
            last[t] = (frame, observations[o].box)
            used_tracks.add(t)
            used_obs.add(o)
        for o, obs in enumerate(observations):
            if o not in used_obs:
                tracks.append({frame: o})
                last.append((frame, obs.box))
    return tracks


def track_main_face(per_frame: Sequence[Sequence[FaceObservation]], options: TrackOptions) -> FaceTrack:
    """Follow the main face over ``per_frame`` (the detections of each frame, in frame order).

    Raises :class:`NoFaceDetectedError` if no frame has a face, or if a frame lacks the main face and
    ``options.missing`` is ``"fail"``; the message names the frames.
    """
    n = len(per_frame)
    tracks = _link_tracks(per_frame, options)
    if not tracks:
        raise NoFaceDetectedError(
            f"no face found on any of the {n} frames; expected one clearly visible face "
            "(check the video, or try another --face-backend)"
        )
    presence = [sum(_area(per_frame[f][o].box) for f, o in track.items()) for track in tracks]
    main = tracks[int(np.argmax(presence))]
    num_points = per_frame[next(iter(main))][main[next(iter(main))]].landmarks.shape[0]

    boxes = np.zeros((n, 4), np.float32)
    landmarks = np.zeros((n, num_points, 2), np.float32)
    found = np.zeros(n, bool)
    for frame, o in main.items():
        boxes[frame] = per_frame[frame][o].box
        landmarks[frame] = per_frame[frame][o].landmarks
        found[frame] = True

    missing = np.flatnonzero(~found)
    if missing.size and options.missing == "fail":
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if missing.size > 10 else "")
        raise NoFaceDetectedError(
            f"the main face is missing on {missing.size} of {n} frames ({shown}); "
            "use --missing-face interpolate to fill them from neighbouring frames"
        )
    if missing.size:
        have = np.flatnonzero(found)
        boxes = _interpolate(boxes, have, missing)
        landmarks = _interpolate(landmarks.reshape(n, -1), have, missing).reshape(n, num_points, 2)
    return FaceTrack(
        boxes=boxes,
        landmarks=landmarks,
        filled=~found,
        faces_seen=max((len(obs) for obs in per_frame), default=0),
    )


def _interpolate(values: np.ndarray, have: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Linear interpolation over the frame axis, per column; ends copy the nearest known frame."""
    out = values.copy()
    for column in range(values.shape[1]):
        out[missing, column] = np.interp(missing, have, values[have, column])
    return out
