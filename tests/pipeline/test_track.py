import numpy as np
import pytest

from lipsync_tools.errors import NoFaceDetectedError, UsageError
from lipsync_tools.faces.base import FaceObservation
from lipsync_tools.pipeline.track import TrackOptions, box_iou, track_main_face


def face(x0: float, y0: float, side: float, k: int = 5) -> FaceObservation:
    box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
    pts = np.stack([np.linspace(x0, x0 + side, k), np.linspace(y0, y0 + side, k)], axis=1).astype(np.float32)
    return FaceObservation(box=box, landmarks=pts, score=0.9)


def test_box_iou():
    a = np.array([0, 0, 10, 10], np.float32)
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5, 0, 15, 10], np.float32)) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 30, 30], np.float32)) == 0.0


def test_main_face_is_the_large_steady_one_not_a_brief_closeup():
    frames = []
    for i in range(30):
        obs = [face(100 + i, 50, 80)]  # main face, moving slowly, every frame
        obs.append(face(10, 10, 20))  # small face in the background
        if i in (3, 4):
            obs.append(face(300, 200, 150))  # big face for two frames only
        frames.append(obs)
    track = track_main_face(frames, TrackOptions())
    assert track.boxes[10, 0] == pytest.approx(110)
    assert not track.filled.any()
    assert track.faces_seen == 3


def test_missing_frames_are_interpolated_and_recorded():
    frames = [[face(100 + 2 * i, 50, 80)] for i in range(10)]
    frames[4] = []
    frames[5] = []
    track = track_main_face(frames, TrackOptions())
    assert track.filled.tolist() == [i in (4, 5) for i in range(10)]
    np.testing.assert_allclose(track.boxes[4, 0], 108, atol=1e-4)
    np.testing.assert_allclose(track.landmarks[5], face(110, 50, 80).landmarks, atol=1e-4)


def test_leading_frames_without_face_copy_the_first_found():
    frames = [[] for _ in range(25)] + [[face(100, 50, 80)] for _ in range(10)]
    track = track_main_face(frames, TrackOptions())
    assert track.filled[:25].all() and not track.filled[25:].any()
    np.testing.assert_allclose(track.boxes[0], [100, 50, 180, 130])


def test_fail_policy_names_frames():
    frames = [[face(100, 50, 80)] for _ in range(5)]
    frames[2] = []
    with pytest.raises(
        NoFaceDetectedError, match=r"missing on 1 of 5 frames \(2\).*--missing-face interpolate"
    ):
        track_main_face(frames, TrackOptions(missing="fail"))


def test_no_face_at_all():
    with pytest.raises(NoFaceDetectedError, match="no face found on any of the 4 frames"):
        track_main_face([[], [], [], []], TrackOptions())


def test_bad_policy():
    with pytest.raises(UsageError, match="expected 'interpolate' or 'fail'"):
        TrackOptions(missing="guess")  # type: ignore[arg-type]
