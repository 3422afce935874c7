"""Building from real footage: shots, faceless stretches, identity changes, trimming, and the account a
build gives of what it kept (issue: fade-ins, cuts between two people, a presenter who leaves the frame).

The clips come from :mod:`tests.samples` (real faces: the astronaut photo and the carphone talking head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.errors import NoFaceDetectedError, SegmentError, UsageError
from lipsync_tools.faces import FaceOptions, create_backend
from lipsync_tools.media.images import decode_image
from lipsync_tools.media.video import iter_frames
from lipsync_tools.package import open_package, validate_package
from lipsync_tools.package.reader import read_encoded_frames
from lipsync_tools.pipeline.build import BuildOptions, BuildResult, build_package
from lipsync_tools.pipeline.detect import DetectOptions, detect_faces
from tests import samples

pytestmark = pytest.mark.slow
runner = CliRunner()
FPS = 25.0


@pytest.fixture(scope="module")
def clips(media_dir: Path) -> dict[str, Path]:
    makers = {
        "fade_in": samples.fade_in_video,
        "hard_cut": samples.hard_cut_video,
        "face_leaves": samples.face_leaves_video,
        "long_shot": samples.long_shot_video,
        "swap": samples.same_place_swap_video,
        "issue": samples.issue_cuts_video,
    }
    return {name: make(media_dir / f"segments_{name}.mp4") for name, make in makers.items()}


def build(clip: Path, tmp_path: Path, name: str = "out", **options: Any) -> BuildResult:
    result = build_package(clip, tmp_path / f"{name}.sanders", options=BuildOptions(**options))
    assert validate_package(result.output) == []
    footage = result.manifest.footage
    assert footage is not None
    # the rule every package keeps: no filled stretch longer than --max-gap
    assert footage.longest_fill / FPS <= result.manifest.build_options["max_gap"] + 1e-9
    return result


def kept(result: BuildResult) -> tuple[int, int]:
    footage = result.manifest.footage
    assert footage is not None
    return footage.source_start, footage.source_end


def reasons(result: BuildResult) -> list[tuple[int, int, str, str]]:
    footage = result.manifest.footage
    assert footage is not None
    return [(s.start, s.end, s.start_reason, s.end_reason) for s in footage.segments]


def test_the_issue_clip_keeps_one_shot_of_one_face_and_names_the_shots_it_dropped(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """3 black frames, a fade in, then astronaut 40 / carphone 30 / astronaut 60 / carphone 80 frames."""
    result = build(clips["issue"], tmp_path)
    summary = result.summary()
    assert kept(result) == (143, 223) and summary["frames"] == 80
    assert summary["filled_share"] < 0.10 and summary["warnings"] == []
    assert summary["segments_found"] == 4 and summary["source_frames"] == 223
    segments = reasons(result)
    assert [(s, e) for s, e, _, _ in segments][1:] == [(53, 83), (83, 143), (143, 223)]
    assert segments[0][1] == 53 and 3 <= segments[0][0] <= 6  # the face appears during the fade
    assert [s[2:] for s in segments[1:]] == [("cut", "cut"), ("cut", "cut"), ("cut", "video_end")]
    dropped = [(d["start"], d["end"], d["reason"]) for d in summary["dropped"]]
    assert dropped[0][2] == "no_face" and dropped[0][0] == 0
    assert [d for d in dropped if d[2] == "segment"] == [(segments[0][0], 53, "segment"), (53, 83, "segment"),
                                                          (83, 143, "segment")]
    # the audio is the kept stretch's: 80 frames of it (plus the padding of one mel window)
    assert 80 / FPS <= summary["audio_seconds"] <= 80 / FPS + 0.25


def test_segment_fail_refuses_the_issue_clip_listing_the_shots(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "fail.sanders"
    result = runner.invoke(app, ["build-package", str(clips["issue"]), "-o", str(out), "--segment", "fail"])
    assert result.exit_code == SegmentError.exit_code == 21
    assert "not one continuous shot of one face" in result.output and "4 segments" in result.output
    for span in ("frames 53-83", "frames 83-143", "frames 143-223"):
        assert span in result.output
    assert not out.exists()


def test_terminal_summary_says_what_was_kept_and_dropped(clips: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["build-package", str(clips["issue"]), "-o", str(tmp_path / "o.sanders")])
    assert result.exit_code == 0, result.output
    assert "kept source frames 143-223 (5.72-8.92 s) of 223: the longest of 4 segments" in result.output
    assert "dropped frames 53-83 (2.12-3.32 s): a shorter segment, from a cut to a cut" in result.output
    assert "faces: 80 frames detected, 0 filled" in result.output and "crop jitter" in result.output


def test_fade_in_from_black_stores_no_black_frame(clips: dict[str, Path], tmp_path: Path) -> None:
    result = build(clips["fade_in"], tmp_path)
    start, end = kept(result)
    assert 5 <= start <= 10 and end == 80  # black 0-4, fade 5-19, the face is found early in the fade
    pkg = open_package(result.output, load_frames=False)
    first = decode_image(read_encoded_frames(pkg, [0])[0])
    assert first.mean() > 5  # not one of the black frames
    assert result.summary()["filled_frames"] == 0


def test_hard_cut_keeps_the_longer_shot_and_its_audio(clips: dict[str, Path], tmp_path: Path) -> None:
    """Astronaut 60 frames, then carphone 90: the carphone shot is kept."""
    result = build(clips["hard_cut"], tmp_path)
    assert kept(result) == (60, 150)
    assert reasons(result) == [(0, 60, "video_start", "cut"), (60, 150, "cut", "video_end")]
    pkg = open_package(result.output, load_frames=False)
    widths = pkg.rects[:, 2] - pkg.rects[:, 0]
    assert widths.min() > 80  # the carphone man's face (the astronaut's crops are ~55 px)
    # the stored audio starts at source frame 60: of all whole-frame offsets into the source's tone, the
    # stored samples match the one of frame 60 best
    source_pcm = samples.tone(150 / FPS)[0]
    stored = pkg.pcm[:3200].astype(np.float32) / 32768
    per_frame = int(16000 / FPS)
    match = [np.corrcoef(stored, source_pcm[k * per_frame : k * per_frame + 3200])[0, 1] for k in range(100)]
    assert int(np.argmax(match)) == 60


def test_min_segment_refuses_when_no_shot_is_long_enough(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SegmentError, match=r"--min-segment 4 s \(100 frames\).*2 segments") as error:
        build_package(clips["hard_cut"], tmp_path / "x.sanders", options=BuildOptions(min_segment=4))
    assert "frames 0-60" in str(error.value) and "frames 60-150" in str(error.value)
    assert not (tmp_path / "x.sanders").exists()


def test_face_leaving_for_two_seconds_splits_the_video(clips: dict[str, Path], tmp_path: Path) -> None:
    """The person walks out and back in (one shot): no face on about 84-132, 2 s > --max-gap 0.5 s."""
    result = build(clips["face_leaves"], tmp_path)
    segments = reasons(result)
    assert [s[2:] for s in segments] == [("video_start", "face_lost"), ("face_found", "video_end")]
    assert segments[0][0] == 0 and 80 <= segments[0][1] <= 88 and 128 <= segments[1][0] <= 136
    assert segments[1][1] == 216 and kept(result) == segments[0][:2]  # 84 frames against 82
    assert result.summary()["filled_frames"] == 0


def test_a_longer_max_gap_bridges_the_absence_and_warns(clips: dict[str, Path], tmp_path: Path) -> None:
    result = build(clips["face_leaves"], tmp_path, max_gap=2.5)
    summary = result.summary()
    assert kept(result) == (0, 216) and len(reasons(result)) == 1
    assert 45 <= summary["longest_fill_frames"] <= 55 and summary["filled_share"] > 0.10
    assert any("filled from their neighbours" in w for w in summary["warnings"])
    with pytest.raises(NoFaceDetectedError, match="--missing-face interpolate"):
        build_package(
            clips["face_leaves"],
            tmp_path / "strict.sanders",
            options=BuildOptions(max_gap=2.5, missing_face="fail"),
        )


def test_a_different_face_in_the_same_place_ends_the_segment(clips: dict[str, Path], tmp_path: Path) -> None:
    """Astronaut then carphone face pasted at the same place on the same canvas: no cut to detect."""
    result = build(clips["swap"], tmp_path, min_segment=1.0)
    assert reasons(result) == [(0, 60, "video_start", "face_changed"), (60, 120, "face_changed", "video_end")]


def test_a_long_single_shot_is_kept_whole_and_passes_segment_fail(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result = build(clips["long_shot"], tmp_path, segment="fail")
    summary = result.summary()
    assert kept(result) == (0, 500) and reasons(result) == [(0, 500, "video_start", "video_end")]
    assert summary["dropped"] == [] and summary["filled_frames"] == 0
    assert 0 < summary["jitter_rms_px"] < 3


@pytest.mark.parametrize(("start", "end"), [("83f", "143 f"), ("3.32", "5.72s")])
def test_start_and_end_choose_the_range(
    clips: dict[str, Path], tmp_path: Path, start: str, end: str
) -> None:
    """The third shot (astronaut, 83-143) chosen by frames or by seconds."""
    result = build(clips["issue"], tmp_path, start=start, end=end, segment="fail")
    assert kept(result) == (83, 143)
    assert reasons(result) == [(83, 143, "range_start", "range_end")]
    footage = result.manifest.footage
    assert footage is not None
    assert (footage.range_start, footage.range_end, footage.source_frames) == (83, 143, 223)
    dropped = [(d["start"], d["end"], d["reason"]) for d in result.summary()["dropped"]]
    assert dropped == [(0, 83, "before_range"), (143, 223, "after_range")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "abc"], "--start is 'abc'; expected seconds"),
        (["--end", "2", "--start", "3"], "is not after --start"),
        (["--end", "500f"], "past the end of the video: the video has 223 frames (8.92 s)"),
        (["--start", "300 f"], "but the video has 223 frames"),
        (["--segment", "shortest"], "shortest"),
        (["--max-gap", "-1"], "--max-gap is -1.0 s"),
    ],
)
def test_bad_ranges_and_policies_are_usage_errors(
    clips: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "bad.sanders"
    result = runner.invoke(app, ["build-package", str(clips["issue"]), "-o", str(out), *args])
    assert result.exit_code == UsageError.exit_code, result.output
    assert message in result.output and not out.exists()


def test_faces_the_detector_finds_inside_the_kept_segment_are_never_filled(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """Recall: tracking loses no face the detector finds within the kept segment."""
    backend = create_backend("mediapipe", FaceOptions(video_mode=True))
    try:
        for name in ("issue", "hard_cut", "long_shot", "fade_in"):
            result = build(clips[name], tmp_path, name=name)
            start, end = kept(result)
            pkg = open_package(result.output, load_frames=False)
            found = [
                len(detect_faces(backend, frame, DetectOptions())) == 1
                for index, frame in enumerate(iter_frames(clips[name]))
                if start <= index < end
            ]
            lost = [start + i for i, (face, filled) in enumerate(zip(found, pkg.filled, strict=True))
                    if face and filled]
            assert lost == [], f"{name}: frames with a detected face were filled: {lost}"
    finally:
        backend.close()


def test_a_range_past_the_end_of_a_video_whose_header_gives_no_count(tmp_path: Path, tone_wav: Path) -> None:
    """Matroska headers carry no frame count: the range is checked against the frames actually decoded."""
    import av

    from lipsync_tools.media.video import probe_video

    video = tmp_path / "no-count.mkv"
    with av.open(str(video), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i, image in enumerate(samples.astronaut_frames(60)):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert probe_video(video).frame_count == 0
    refused = "--end 100f is frame 100, past the end of the video: the video has 60 frames"
    with pytest.raises(UsageError, match=refused):
        build_package(video, tmp_path / "x.sanders", audio=tone_wav, options=BuildOptions(end="100f"))
    assert not (tmp_path / "x.sanders").exists()
    result = build_package(video, tmp_path / "ok.sanders", audio=tone_wav, options=BuildOptions(end="50f"))
    assert kept(result) == (0, 50) and result.manifest.footage is not None
    assert result.manifest.footage.source_frames == 51  # the decode stopped one frame after --end
