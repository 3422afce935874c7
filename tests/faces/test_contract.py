"""One contract suite run over every registered face backend (after face-alignment's test_detectors.py).

Real faces: the astronaut photograph bundled with scikit-image. The ``fan`` backend runs with randomly
initialised FAN weights saved into a temporary torch hub folder, so its landmarks are meaningless, but its
boxes and face counts (from the detector) and the shape and placement of its landmarks are still checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from lipsync_tools.errors import UsageError
from lipsync_tools.faces import FaceBackend, FaceObservation, FaceOptions, backend_names, create_backend
from lipsync_tools.faces.fan_backend import FAN_WEIGHTS_FILE
from lipsync_tools.faces.schemes import MEDIAPIPE_468

# A generous rectangle around the astronaut's face (x0, y0, x1, y1), found once with the mediapipe backend,
# whose landmarks span about (178, 72, 272, 175).
ASTRONAUT_FACE = np.array([160, 50, 290, 200], dtype=np.float32)


def save_random_fan_weights(folder: Path) -> Path:
    """Save a randomly initialised FAN-4 state dict under the name the fan backend looks for."""
    import torch
    from face_alignment.models import FAN

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FAN_WEIGHTS_FILE
    torch.save(FAN(4).state_dict(), path)
    return path


def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary $TORCH_HOME whose hub cache holds random FAN weights."""
    home = tmp_path_factory.mktemp("torch_home")
    save_random_fan_weights(home / "hub" / "checkpoints")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module", params=backend_names())
def backend_name(request: pytest.FixtureRequest, torch_home: Path) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def still_backend(backend_name: str) -> Iterator[FaceBackend]:
    backend = create_backend(backend_name, FaceOptions(video_mode=False, max_faces=4))
    yield backend
    backend.close()


def check_observation(backend: FaceBackend, frame: np.ndarray, face: FaceObservation) -> None:
    assert isinstance(face, FaceObservation)
    assert face.box.shape == (4,) and face.box.dtype == np.float32
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= frame.shape[1] and 0 <= y0 < y1 <= frame.shape[0]
    assert face.landmarks.shape == (backend.scheme.num_points, 2)
    assert face.landmarks.dtype == np.float32
    assert np.isfinite(face.landmarks).all()
    width, height = x1 - x0, y1 - y0
    assert (face.landmarks[:, 0] >= x0 - width).all() and (face.landmarks[:, 0] <= x1 + width).all()
    assert (face.landmarks[:, 1] >= y0 - height).all() and (face.landmarks[:, 1] <= y1 + height).all()
    assert 0.0 <= face.score <= 1.0


def test_scheme_indices_are_valid(still_backend: FaceBackend) -> None:
    scheme = still_backend.scheme
    assert scheme.name and scheme.num_points > 0
    for contour in (scheme.jaw, scheme.outer_lips, scheme.left_eye, scheme.right_eye):
        assert len(contour) >= 3
        assert len(set(contour)) == len(contour)
        assert all(0 <= index < scheme.num_points for index in contour)
    assert 0 <= scheme.nose_tip < scheme.num_points
    assert not set(scheme.left_eye) & set(scheme.right_eye)


def test_one_face_on_the_astronaut(still_backend: FaceBackend) -> None:
    frame = astronaut_bgr()
    faces = still_backend.detect(frame)
    assert len(faces) == 1
    check_observation(still_backend, frame, faces[0])
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.3


@pytest.mark.parametrize("value", [0, 128], ids=["black", "gray"])
def test_no_face_on_a_uniform_frame(still_backend: FaceBackend, value: int) -> None:
    assert still_backend.detect(np.full((360, 640, 3), value, dtype=np.uint8)) == []


def test_two_faces_side_by_side(still_backend: FaceBackend) -> None:
    crop = astronaut_bgr()[0:300, 100:300]
    frame = np.ascontiguousarray(np.concatenate([crop, crop], axis=1))
    faces = still_backend.detect(frame)
    assert len(faces) == 2
    for face in faces:
        check_observation(still_backend, frame, face)
    centres = sorted(float(face.box[0] + face.box[2]) / 2 for face in faces)
    assert centres[0] < 200 < centres[1]


def test_still_image_mode_is_deterministic(still_backend: FaceBackend) -> None:
    frame = astronaut_bgr()
    first, second = still_backend.detect(frame), still_backend.detect(frame)
    assert len(first) == len(second) == 1
    np.testing.assert_array_equal(first[0].box, second[0].box)
    np.testing.assert_array_equal(first[0].landmarks, second[0].landmarks)
    assert first[0].score == second[0].score


def test_bad_frames_are_refused(still_backend: FaceBackend) -> None:
    with pytest.raises(UsageError, match=r"\(H, W, 3\) uint8"):
        still_backend.detect(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(UsageError, match=r"\(H, W, 3\) uint8"):
        still_backend.detect(np.zeros((64, 64, 3), dtype=np.float32))


def test_video_mode_then_close(backend_name: str) -> None:
    backend = create_backend(backend_name, FaceOptions(video_mode=True))
    frame = astronaut_bgr()
    for _ in range(3):
        faces = backend.detect(frame)
        assert len(faces) == 1
        assert iou(faces[0].box, ASTRONAUT_FACE) > 0.3
    backend.close()
    backend.close()  # a second close is harmless
    with pytest.raises(UsageError, match="closed"):
        backend.detect(frame)


def test_mediapipe_contours_follow_face_mesh_edges() -> None:
    from mediapipe.python.solutions import face_mesh_connections as connections

    edges = {
        frozenset(edge)
        for table in (
            connections.FACEMESH_FACE_OVAL,
            connections.FACEMESH_LIPS,
            connections.FACEMESH_LEFT_EYE,
            connections.FACEMESH_RIGHT_EYE,
        )
        for edge in table
    }
    closed = (MEDIAPIPE_468.outer_lips, MEDIAPIPE_468.left_eye, MEDIAPIPE_468.right_eye)
    for contour in closed:
        for a, b in zip(contour, contour[1:] + contour[:1], strict=True):
            assert frozenset((a, b)) in edges, (a, b)
    for a, b in zip(MEDIAPIPE_468.jaw, MEDIAPIPE_468.jaw[1:], strict=False):
        assert frozenset((a, b)) in edges, (a, b)


def test_mediapipe_scheme_points_where_it_says() -> None:
    backend = create_backend("mediapipe", FaceOptions(video_mode=False))
    try:
        (face,) = backend.detect(astronaut_bgr())
    finally:
        backend.close()
    points, scheme = face.landmarks, backend.scheme
    left_eye, right_eye = points[list(scheme.left_eye)].mean(0), points[list(scheme.right_eye)].mean(0)
    nose, lips, jaw = points[scheme.nose_tip], points[list(scheme.outer_lips)], points[list(scheme.jaw)]
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's left eye is on the image right
    assert max(left_eye[1], right_eye[1]) < nose[1] < lips[:, 1].mean()
    assert jaw[0, 0] < jaw[-1, 0]  # from the subject's right ear (image left) to the left ear
    assert np.argmax(jaw[:, 1]) in range(len(jaw) // 2 - 3, len(jaw) // 2 + 4)  # the chin is mid-contour
    assert lips[:, 1].max() < jaw[:, 1].max()
