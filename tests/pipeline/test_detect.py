"""The detect stage's shared copy: one resize that the detector, the cut detector and the signatures use."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.faces.base import FaceObservation, LandmarkScheme
from lipsync_tools.pipeline.detect import DetectOptions, detect_faces, detect_in_copy, detection_copy


class BoxAtCentre:
    """A fake backend: one face, a box around the centre of whatever it is given."""

    name = "fake"
    scheme = LandmarkScheme("fake", 1, (0,), (0,), 0, (0,), (0,))

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def detect(self, frame_bgr: np.ndarray) -> list[FaceObservation]:
        self.seen.append(frame_bgr.shape)
        h, w = frame_bgr.shape[:2]
        box = np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4], np.float32)
        return [FaceObservation(box=box, landmarks=np.array([[w / 2, h / 2]], np.float32), score=1.0)]

    def close(self) -> None:
        pass


def test_a_large_frame_is_downscaled_once_and_results_come_back_in_frame_pixels() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    copy, scale = detection_copy(frame, DetectOptions(max_side=640))
    assert copy.shape == (360, 640, 3) and scale == pytest.approx(0.5)
    backend = BoxAtCentre()
    (face,) = detect_in_copy(backend, copy, scale)
    assert backend.seen == [(360, 640, 3)]
    np.testing.assert_allclose(face.box, [320, 180, 960, 540])
    np.testing.assert_allclose(face.landmarks, [[640, 360]])
    (again,) = detect_faces(BoxAtCentre(), frame, DetectOptions(max_side=640))
    np.testing.assert_allclose(again.box, face.box)


@pytest.mark.parametrize("max_side", [0, 640])
def test_a_small_frame_or_max_side_0_is_used_as_it_is(max_side: int) -> None:
    frame = np.zeros((240, 320, 3), np.uint8) if max_side else np.zeros((720, 1280, 3), np.uint8)
    copy, scale = detection_copy(frame, DetectOptions(max_side=max_side))
    assert copy is frame and scale == 1.0


def test_detection_size_is_checked() -> None:
    with pytest.raises(UsageError, match="expected 0 \\(full frame\\) or >= 128"):
        DetectOptions(max_side=100)
