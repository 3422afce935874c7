"""Track stage: the kept segment's face on every frame, gaps filled (``fill_track``)."""

from __future__ import annotations

from collections.abc import Set

import numpy as np
import pytest

from lipsync_tools.errors import NoFaceDetectedError, UsageError
from lipsync_tools.faces.base import FaceObservation
from lipsync_tools.pipeline.track import TrackOptions, fill_track


def face(x0: float, y0: float, side: float, k: int = 5) -> FaceObservation:
    box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
    pts = np.stack([np.linspace(x0, x0 + side, k), np.linspace(y0, y0 + side, k)], axis=1).astype(np.float32)
    return FaceObservation(box=box, landmarks=pts, score=0.9)


def moving(n: int, missing: Set[int] = frozenset()) -> tuple[list[list[FaceObservation]], dict[int, int]]:
    """``n`` frames of a face moving 2 px right per frame, absent on the frames (0-based) in ``missing``;
    and the ``faces`` map for a segment starting at frame 0."""
    per_frame = [[] if i in missing else [face(100 + 2 * i, 50, 80)] for i in range(n)]
    return per_frame, {i: 0 for i in range(n) if i not in missing}


def test_every_frame_detected_is_copied_as_is() -> None:
    per_frame, faces = moving(6)
    track = fill_track(per_frame, faces, 0, 6, TrackOptions())
    assert track.boxes.shape == (6, 4) and track.boxes.dtype == np.float32
    assert track.landmarks.shape == (6, 5, 2) and track.landmarks.dtype == np.float32
    assert track.filled.dtype == bool and not track.filled.any()
    for i in range(6):
        np.testing.assert_array_equal(track.boxes[i], per_frame[i][0].box)
        np.testing.assert_array_equal(track.landmarks[i], per_frame[i][0].landmarks)


def test_interior_gap_is_interpolated_and_recorded() -> None:
    per_frame, faces = moving(10, missing={4, 5})
    track = fill_track(per_frame, faces, 0, 10, TrackOptions())
    assert track.filled.tolist() == [i in (4, 5) for i in range(10)]
    np.testing.assert_allclose(track.boxes[4], face(108, 50, 80).box, atol=1e-4)
    np.testing.assert_allclose(track.boxes[5], face(110, 50, 80).box, atol=1e-4)
    np.testing.assert_allclose(track.landmarks[5], face(110, 50, 80).landmarks, atol=1e-4)


def test_frame_numbers_are_source_frames() -> None:
    """``faces`` keys are source frames; ``per_frame`` holds only the segment's frames."""
    per_frame, local = moving(10, missing={3})
    start = 250
    faces = {start + i: o for i, o in local.items()}
    track = fill_track(per_frame, faces, start, start + 10, TrackOptions())
    assert track.filled.tolist() == [i == 3 for i in range(10)]
    np.testing.assert_allclose(track.boxes[3], face(106, 50, 80).box, atol=1e-4)


def test_the_observation_index_is_followed() -> None:
    """Several faces per frame: the one ``faces`` names on each frame is used, not the first."""
    per_frame = [[face(10, 10, 20), face(100 + i, 50, 80)] for i in range(4)]
    per_frame[2] = [face(100 + 2, 50, 80), face(10, 10, 20)]  # order changes on one frame
    faces = {0: 1, 1: 1, 2: 0, 3: 1}
    track = fill_track(per_frame, faces, 0, 4, TrackOptions())
    np.testing.assert_allclose(track.boxes[:, 0], [100, 101, 102, 103])


def test_missing_ends_copy_the_nearest_detection() -> None:
    """The segments stage starts and ends segments on detections, but ``fill_track`` copies if not."""
    per_frame, faces = moving(10, missing={0, 1, 8, 9})
    track = fill_track(per_frame, faces, 0, 10, TrackOptions())
    assert track.filled.tolist() == [i in (0, 1, 8, 9) for i in range(10)]
    np.testing.assert_allclose(track.boxes[0], per_frame[2][0].box)
    np.testing.assert_allclose(track.boxes[1], per_frame[2][0].box)
    np.testing.assert_allclose(track.boxes[9], per_frame[7][0].box)
    np.testing.assert_allclose(track.landmarks[8], per_frame[7][0].landmarks)


def test_fail_policy_names_source_frames() -> None:
    per_frame, local = moving(5, missing={2})
    faces = {100 + i: o for i, o in local.items()}
    with pytest.raises(
        NoFaceDetectedError, match=r"missing on 1 of the 5 frames kept \(102\).*--missing-face interpolate"
    ):
        fill_track(per_frame, faces, 100, 105, TrackOptions(missing="fail"))


def test_fail_policy_lists_at_most_ten_frames() -> None:
    per_frame, faces = moving(20, missing=set(range(3, 15)))
    with pytest.raises(
        NoFaceDetectedError, match=r"missing on 12 of the 20 frames kept \(3, 4, .*, 12 \.\.\.\)"
    ):
        fill_track(per_frame, faces, 0, 20, TrackOptions(missing="fail"))


def test_fail_policy_passes_when_nothing_is_missing() -> None:
    per_frame, faces = moving(5)
    track = fill_track(per_frame, faces, 0, 5, TrackOptions(missing="fail"))
    assert not track.filled.any()


def test_no_face_at_all() -> None:
    with pytest.raises(NoFaceDetectedError, match=r"no face found on any of the 4 frames 100-104"):
        fill_track([[], [], [], []], {}, 100, 104, TrackOptions())


def test_bad_policy() -> None:
    with pytest.raises(UsageError, match="expected 'interpolate' or 'fail'"):
        TrackOptions(missing="guess")  # type: ignore[arg-type]
