"""The segment-analysis footage in :mod:`tests.samples` holds what its docstrings promise.

Frame counts and audio come from the decoded files; faces from the mediapipe backend on a few frames each.
Who is on screen is told apart by the face box's width: the astronaut's face is about 44 px wide on the
320x240 canvas, the carphone man's about 85 px.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.faces import FaceBackend, FaceOptions, create_backend
from lipsync_tools.media.video import iter_frames, probe_video
from lipsync_tools.pipeline.detect import DetectOptions, detect_faces
from tests import samples

CLIPS: dict[str, tuple[Callable[[Path], Path], int]] = {
    "fade_in": (samples.fade_in_video, 80),
    "hard_cut": (samples.hard_cut_video, 150),
    "face_leaves": (samples.face_leaves_video, 216),
    "long_shot": (samples.long_shot_video, 500),
    "same_place_swap": (samples.same_place_swap_video, 120),
    "issue_cuts": (samples.issue_cuts_video, 223),
}


@pytest.fixture(scope="module")
def clips(media_dir: Path) -> dict[str, Path]:
    return {name: make(media_dir / f"footage_{name}.mp4") for name, (make, _) in CLIPS.items()}


@pytest.fixture(scope="module")
def frames(clips: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    return {name: list(iter_frames(path)) for name, path in clips.items()}


@pytest.fixture(scope="module")
def backend() -> Iterator[FaceBackend]:
    face_backend = create_backend("mediapipe", FaceOptions(video_mode=False))
    yield face_backend
    face_backend.close()


def who(backend: FaceBackend, frame: np.ndarray) -> str | None:
    """``"astronaut"``, ``"carphone"`` or ``None`` (no face) on ``frame``; fails on two faces."""
    faces = detect_faces(backend, frame, DetectOptions())
    if not faces:
        return None
    (face,) = faces
    width = float(face.box[2] - face.box[0])
    assert width < 60 or width > 70, width
    return "astronaut" if width < 60 else "carphone"


@pytest.mark.parametrize("name", list(CLIPS))
def test_clip_is_25_fps_320x240_with_a_mono_16k_tone_as_long_as_the_video(
    name: str, clips: dict[str, Path], frames: dict[str, list[np.ndarray]]
):
    expected = CLIPS[name][1]
    info = probe_video(clips[name])
    assert (info.width, info.height, info.fps, info.frame_count) == (320, 240, 25.0, expected)
    assert len(frames[name]) == expected
    assert info.has_audio and (info.audio_sample_rate, info.audio_channels) == (16000, 1)
    assert info.duration_s == pytest.approx(expected / 25, abs=0.1)


def test_ping_pong_turns_without_repeating_or_jumping():
    source = [samples._ping_pong(i, 120) for i in range(480)]
    assert source[117:123] == [117, 118, 119, 118, 117, 116]
    assert source[237:241] == [1, 0, 1, 2]
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(source))
    frames = list(samples.carphone_frames(2, start=119))  # source frames 119, 118
    assert frames[0].shape == (240, 320, 3)
    assert np.array_equal(frames[1], next(samples.carphone_frames(1, start=118)))


def test_a_face_carries_on_where_its_previous_shot_stopped():
    shots = (("astronaut", 3), ("carphone", 2), ("astronaut", 3), ("carphone", 2))
    got = list(samples._shot_frames(shots, samples.DEFAULT_SIZE, 0))
    astronaut = list(samples.astronaut_frames(6))
    carphone = list(samples.carphone_frames(4))
    expected = [*astronaut[:3], *carphone[:2], *astronaut[3:], *carphone[2:]]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_hard_cut_video_refuses_an_unknown_face(tmp_path: Path):
    with pytest.raises(ValueError, match="nobody"):
        samples.hard_cut_video(tmp_path / "x.mp4", (("nobody", 5),))


def test_fade_in_starts_black_and_brightens_steadily(frames: dict[str, list[np.ndarray]]):
    clip = frames["fade_in"]
    assert all(frame.max() <= 2 for frame in clip[:5])
    means = [float(frame.mean()) for frame in clip[4:21]]
    assert all(b > a for a, b in itertools.pairwise(means)), means
    assert means[1] < 0.1 * means[-1]
    assert clip[20].mean() == pytest.approx(clip[40].mean(), rel=0.05)  # full brightness from frame 20
    issue = frames["issue_cuts"]
    assert all(frame.max() <= 2 for frame in issue[:3]) and issue[3].max() > 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fade_in", {0: None, 4: None, 20: "astronaut", 79: "astronaut"}),
        ("hard_cut", {0: "astronaut", 59: "astronaut", 60: "carphone", 149: "carphone"}),
        ("face_leaves", {0: "present", 74: "present", 90: None, 110: None, 130: None, 145: "present"}),
        ("long_shot", {0: "carphone", 119: "carphone", 120: "carphone", 499: "carphone"}),
        (
            "issue_cuts",
            {1: None, 13: "astronaut", 52: "astronaut", 53: "carphone", 82: "carphone", 83: "astronaut"}
            | {142: "astronaut", 143: "carphone", 222: "carphone"},
        ),
    ],
)
def test_faces_are_where_the_docstring_says(
    name: str, expected: dict[int, str | None], frames: dict[str, list[np.ndarray]], backend: FaceBackend
):
    if name == "face_leaves":  # the face square is larger than the photo's face: only presence is checked
        found = {i: bool(detect_faces(backend, frames[name][i], DetectOptions())) for i in expected}
        got = {i: "present" if face else None for i, face in found.items()}
    else:
        got = {index: who(backend, frames[name][index]) for index in expected}
    assert got == expected


def test_same_place_swap_changes_only_the_face(frames: dict[str, list[np.ndarray]], backend: FaceBackend):
    before, after = frames["same_place_swap"][59], frames["same_place_swap"][60]
    side, (width, height) = samples.SWAP_PATCH, samples.DEFAULT_SIZE
    x0, y0 = (width - side) // 2, (height - side) // 2
    outside = np.ones((height, width), bool)
    outside[y0 - 8 : y0 + side + 8, x0 - 8 : x0 + side + 8] = False  # codec ringing at the square's edge
    assert np.abs(before.astype(int) - after.astype(int))[outside].max() <= 3
    inside = np.abs(before.astype(int) - after.astype(int))[y0 : y0 + side, x0 : x0 + side]
    assert inside.mean() > 30
    for frame in (before, after):
        (face,) = detect_faces(backend, frame, DetectOptions())
        centre = (face.box[:2] + face.box[2:]) / 2
        assert np.all(np.abs(centre - (width / 2, height / 2)) < 0.25 * side), face.box


def test_content_detector_cuts_at_the_hard_cuts_only(
    frames: dict[str, list[np.ndarray]],
):
    """PySceneDetect (not a dependency of the project; skipped without it) sees the issue clip's three cuts,
    none in the long shot, and scores the same-place swap like ordinary motion."""
    scenedetect = pytest.importorskip("scenedetect")
    from scenedetect.detectors import ContentDetector

    def run(clip: list[np.ndarray]) -> tuple[list[int], list[float]]:
        detector = ContentDetector()
        cuts, scores = [], []
        for index, frame in enumerate(clip):
            found = detector.process_frame(scenedetect.FrameTimecode(index, 25.0), frame)
            cuts += [cut.frame_num for cut in found]
            scores.append(float(detector._frame_score or 0.0))
        return cuts, scores

    assert run(frames["issue_cuts"])[0] == [53, 83, 143]
    assert run(frames["hard_cut"])[0] == [60]
    assert run(frames["long_shot"])[0] == []
    cuts, scores = run(frames["same_place_swap"])
    assert cuts == [] and scores[60] < 20 and max(scores) == scores[60]
