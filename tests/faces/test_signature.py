from collections.abc import Iterator
from itertools import pairwise

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from lipsync_tools.errors import UsageError
from lipsync_tools.faces import FaceBackend, FaceOptions, create_backend
from lipsync_tools.faces.signature import (
    SAME_FACE_MAX_DISTANCE,
    SIGNATURE_SIZE,
    face_signature,
    signature_distance,
)
from lipsync_tools.media.video import iter_frames
from lipsync_tools.pipeline.detect import DetectOptions, detect_faces
from tests import samples

SIZE = (320, 240)


@pytest.fixture(scope="module")
def backend() -> Iterator[FaceBackend]:
    # Frames of different clips are mixed, so no tracking between calls.
    face_backend = create_backend("mediapipe", FaceOptions(video_mode=False))
    yield face_backend
    face_backend.close()


def _signatures(backend: FaceBackend, frames) -> list[np.ndarray]:
    """The signature of the most confident face on each frame (every frame must show one)."""
    signatures = []
    for frame in frames:
        faces = detect_faces(backend, frame, DetectOptions())
        assert faces, "the test clip should show a face on every frame"
        signatures.append(face_signature(frame, faces[0].box))
    return signatures


def _carphone(size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    return [
        cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        for frame in iter_frames(samples.carphone_path())
    ]


def _hopper(n: int) -> list[np.ndarray]:
    """Grace Hopper's photo (matplotlib's sample data) on a 320x240 canvas, shifted a few pixels per frame."""
    photo = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    photo = cv2.resize(photo, (205, 240), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        canvas = np.full((240, 320, 3), 96, np.uint8)
        x0 = 57 + round(6 * np.sin(2 * np.pi * i / 10))
        canvas[:, x0 : x0 + 205] = photo
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def carphone(backend: FaceBackend) -> list[np.ndarray]:
    return _signatures(backend, _carphone())


@pytest.fixture(scope="module")
def astronaut(backend: FaceBackend) -> list[np.ndarray]:
    return _signatures(backend, samples.astronaut_frames(50, SIZE))


@pytest.fixture(scope="module")
def hopper(backend: FaceBackend) -> list[np.ndarray]:
    return _signatures(backend, _hopper(10))


def _consecutive(signatures: list[np.ndarray]) -> np.ndarray:
    return np.array([signature_distance(a, b) for a, b in pairwise(signatures)])


def _all_pairs(first: list[np.ndarray], second: list[np.ndarray]) -> np.ndarray:
    return np.array([[signature_distance(a, b) for b in second] for a in first])


def test_consecutive_frames_of_one_face_are_the_same_face(carphone, astronaut, hopper):
    for signatures in (carphone, astronaut, hopper):
        distances = _consecutive(signatures)
        assert distances.max() < SAME_FACE_MAX_DISTANCE
        assert np.median(distances) < SAME_FACE_MAX_DISTANCE / 2


def test_different_people_are_different_faces(carphone, astronaut, hopper):
    for first, second in ((astronaut, carphone), (hopper, carphone), (hopper, astronaut)):
        assert _all_pairs(first, second).min() > SAME_FACE_MAX_DISTANCE
    # a cut between the astronaut and the carphone man, seen from the frames either side of it
    assert signature_distance(astronaut[-1], carphone[0]) > SAME_FACE_MAX_DISTANCE
    assert signature_distance(carphone[-1], astronaut[0]) > SAME_FACE_MAX_DISTANCE


def test_large_faces_behave_like_small_ones(backend):
    # At 960x720 the crops are over 128 px and are averaged down rather than warped.
    frames = _carphone((960, 720))[::4]
    faces = [detect_faces(backend, frame, DetectOptions())[0] for frame in frames]
    assert min(max(face.box[2] - face.box[0], face.box[3] - face.box[1]) for face in faces) * 0.8 > 128
    large = [face_signature(frame, face.box) for frame, face in zip(frames, faces, strict=True)]
    small_frames = [cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA) for frame in frames]
    small = [face_signature(frame, face.box / 3) for frame, face in zip(small_frames, faces, strict=True)]
    # the same face at two resolutions is about as close as a neighbouring frame
    distances = [signature_distance(a, b) for a, b in zip(large, small, strict=True)]
    assert max(distances) < SAME_FACE_MAX_DISTANCE / 2


def test_shape_dtype_and_counts(astronaut):
    signature = astronaut[0]
    assert signature.dtype == np.uint8 and signature.shape == (SIGNATURE_SIZE,) == (944,)
    np.testing.assert_array_equal(signature.reshape(16, 59).sum(axis=1, dtype=np.int64), 225)


def test_identical_input_gives_zero_and_distance_is_symmetric(astronaut, carphone):
    frame = next(samples.astronaut_frames(1, SIZE))
    box = np.array([130.0, 40.0, 180.0, 95.0], np.float32)
    assert signature_distance(face_signature(frame, box), face_signature(frame, box)) == 0.0
    assert signature_distance(astronaut[3], carphone[7]) == signature_distance(carphone[7], astronaut[3])


def test_distance_is_one_for_disjoint_histograms():
    a = np.zeros(SIGNATURE_SIZE, np.uint8)
    b = np.zeros(SIGNATURE_SIZE, np.uint8)
    a[::59] = 225  # every block: all codes in bin 0
    b[1::59] = 225  # every block: all codes in bin 1
    assert signature_distance(a, b) == pytest.approx(1.0)


def test_brightness_does_not_change_a_flat_crop():
    # LBP compares pixels with their neighbours: a uniform patch of any grey is all code 255 (a uniform code).
    dark = np.full((100, 100, 3), 30, np.uint8)
    light = np.full((100, 100, 3), 200, np.uint8)
    box = np.array([20.0, 20.0, 80.0, 80.0])
    assert signature_distance(face_signature(dark, box), face_signature(light, box)) == 0.0
    assert np.count_nonzero(face_signature(dark, box)) == 16


@pytest.mark.parametrize(
    "box",
    [
        [-30.0, -20.0, 40.0, 60.0],  # over the top-left corner
        [280.0, 200.0, 360.0, 290.0],  # over the bottom-right corner
        [-500.0, -500.0, -400.0, -400.0],  # wholly outside
        [1000.0, 100.0, 1400.0, 500.0],  # wholly outside and large (the averaging path)
        [-100.0, -100.0, 420.0, 340.0],  # larger than the frame
        [0.0, 0.0, 1e7, 1e7],  # absurdly large
        [100.0, 100.0, 100.0, 100.0],  # zero size
        [150.0, 150.0, 100.0, 90.0],  # negative size
        [float("nan"), 10.0, 50.0, 50.0],
        [float("inf"), 10.0, 50.0, 50.0],
    ],
)
def test_edge_and_degenerate_boxes_give_a_signature(box):
    frame = next(samples.astronaut_frames(1, SIZE))
    signature = face_signature(frame, np.array(box, np.float32))
    assert signature.dtype == np.uint8 and signature.shape == (SIGNATURE_SIZE,)
    np.testing.assert_array_equal(signature.reshape(16, 59).sum(axis=1, dtype=np.int64), 225)


def test_a_face_partly_off_the_edge_stays_the_same_face(backend):
    # Moving the face left until a tenth of its crop lies beyond the frame edge: that part is filled with
    # replicated edge pixels, which changes the signature less than the threshold.
    frame = next(samples.astronaut_frames(1, SIZE))
    box = detect_faces(backend, frame, DetectOptions())[0].box
    side = 0.8 * max(box[2] - box[0], box[3] - box[1])
    shift = round((box[0] + box[2]) / 2 - side / 2 + 0.1 * side)
    moved_frame = np.roll(frame, -shift, axis=1)
    moved_box = box - np.array([shift, 0, shift, 0], np.float32)
    assert (moved_box[0] + moved_box[2]) / 2 - side / 2 < -3  # the crop reaches past the left edge
    distance = signature_distance(face_signature(frame, box), face_signature(moved_frame, moved_box))
    assert 0 < distance < SAME_FACE_MAX_DISTANCE


def test_bad_inputs():
    with pytest.raises(UsageError, match=r"expected a \(height, width, 3\) uint8 BGR image"):
        face_signature(np.zeros((240, 320), np.uint8), np.array([0.0, 0.0, 10.0, 10.0]))
    with pytest.raises(UsageError, match=r"expected 4 values \(x0, y0, x1, y1\)"):
        face_signature(np.zeros((240, 320, 3), np.uint8), np.array([0.0, 0.0, 10.0]))
    with pytest.raises(UsageError, match="expected 944 each"):
        signature_distance(np.zeros(944, np.uint8), np.zeros(59, np.uint8))
