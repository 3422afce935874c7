"""``lipsync build-package`` as a user runs it: real videos, exit codes, messages, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.package import open_package, validate_package

runner = CliRunner()
STAGES = {"decode", "detect", "segments", "track", "smooth", "crop", "masks", "encode", "audio", "write"}


def lipsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a fresh process (as a user or CI job would)."""
    return subprocess.run(
        [sys.executable, "-m", "lipsync_tools", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true", **(env or {})},
        timeout=300,
    )


def test_talking_head_builds_validates_and_reports_stages(talking_head_mp4: Path, tmp_path: Path):
    out = tmp_path / "head.sanders"
    result = runner.invoke(app, ["build-package", str(talking_head_mp4), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["frames"] == 120 and summary["width"] == 176
    assert summary["face_backend"] == "mediapipe" and summary["filled_frames"] == 0
    assert set(summary["stage_seconds"]) == STAGES
    assert summary["audio_seconds"] >= 120 / summary["fps"]
    assert validate_package(out) == []
    pkg = open_package(out)
    assert pkg.crops.shape == (120, 96, 96, 3) and pkg.landmarks.shape == (120, 468, 2)
    # the crop rectangles follow the face: the carphone face sits in the upper middle of the frame
    centre = (pkg.rects[:, :2] + pkg.rects[:, 2:]) / 2
    assert (abs(centre[:, 0] - 88) < 40).all() and (centre[:, 1] < 100).all()
    assert pkg.manifest.source_video.name == talking_head_mp4.name


def test_default_output_next_to_video_and_stderr_is_clean(astronaut_mp4: Path, tmp_path: Path):
    video = tmp_path / "astro.mp4"
    video.write_bytes(astronaut_mp4.read_bytes())
    proc = lipsync("build-package", str(video))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "astro.sanders").is_file()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("built "), proc.stderr
    assert [line.split(" ", 1)[0] for line in lines[1:]] == ["kept", "faces:"], proc.stderr  # no absl noise
    assert "kept source frames 0-50 (0.00-2.00 s) of 50: the whole video" in lines[1]
    assert proc.stdout == ""


def test_identical_builds_give_identical_datasets(astronaut_mp4: Path, tmp_path: Path):
    a, b = tmp_path / "a.sanders", tmp_path / "b.sanders"
    for out in (a, b):
        assert runner.invoke(app, ["build-package", str(astronaut_mp4), "-o", str(out), "-q"]).exit_code == 0
    assert open_package(a).manifest.datasets == open_package(b).manifest.datasets


def test_late_face_keeps_the_frames_with_the_face(late_face_mp4: Path, tmp_path: Path):
    """The first second shows no face: those frames are dropped, not filled from the first face found."""
    out = tmp_path / "late.sanders"
    result = runner.invoke(
        app, ["build-package", str(late_face_mp4), "-o", str(out), "--json", "--min-segment", "1"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source_range"] == [25, 50] and summary["frames"] == 25 and summary["filled_frames"] == 0
    assert summary["dropped"] == [{"start": 0, "end": 25, "reason": "no_face"}]
    pkg = open_package(out)
    assert pkg.n_frames == 25 and not pkg.filled.any()
    short = runner.invoke(app, ["build-package", str(late_face_mp4), "-o", str(tmp_path / "f.sanders")])
    assert short.exit_code == 21 and "--min-segment 2 s" in short.output and "frames 25-50" in short.output
    assert not (tmp_path / "f.sanders").exists()


def test_stereo_44k_audio_is_resampled(stereo_44k_mp4: Path, tmp_path: Path):
    out = tmp_path / "s.sanders"
    result = runner.invoke(app, ["build-package", str(stereo_44k_mp4), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    pkg = open_package(out)
    assert pkg.manifest.audio.sample_rate == 16000 and pkg.pcm.dtype.name == "int16"
    assert pkg.manifest.audio.samples >= 2 * 16000
    assert pkg.pcm[: 16000 * 2].std() > 100  # real audio, not padding


def test_separate_audio_file(silent_mp4: Path, speech_wav: Path, tmp_path: Path):
    out = tmp_path / "s.sanders"
    result = runner.invoke(
        app, ["build-package", str(silent_mp4), "--audio", str(speech_wav), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = open_package(out).manifest
    assert manifest.source_audio is not None and manifest.source_audio.name == speech_wav.name


@pytest.mark.parametrize(
    ("fixture", "extra", "code", "message"),
    [
        (None, [], 3, "expected a video. Check the path"),
        ("text_mp4", [], 4, "expected a video"),
        ("truncated_mp4", [], 5, ""),
        ("empty_avi", [], 6, ""),
        ("silent_mp4", [], 7, "pass --audio FILE"),
        ("black_mp4", [], 8, "no face found on any of the 25 frames"),
        ("astronaut_mp4", ["--audio", "/nonexistent/speech.wav"], 3, "check the --audio path"),
    ],
    ids=["missing", "not-a-video", "truncated", "zero-frames", "no-audio", "no-face", "missing-audio"],
)
def test_bad_input_one_line_distinct_exit_code_nothing_written(
    request, tmp_path, fixture, extra, code, message
):
    video = request.getfixturevalue(fixture) if fixture else tmp_path / "missing.mp4"
    out = tmp_path / "out.sanders"
    proc = lipsync("build-package", str(video), "-o", str(out), *extra)
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # not even a temporary file


def test_existing_output_needs_force(astronaut_mp4: Path, tmp_path: Path):
    out = tmp_path / "a.sanders"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["build-package", str(astronaut_mp4), "-o", str(out)])
    assert result.exit_code == 9 and "--force" in result.output
    assert out.read_bytes() == b"keep me"
    assert (
        runner.invoke(app, ["build-package", str(astronaut_mp4), "-o", str(out), "--force", "-q"]).exit_code
        == 0
    )
    assert validate_package(out) == []


def test_unwritable_output_folder(astronaut_mp4: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["build-package", str(astronaut_mp4), "-o", str(tmp_path / "no" / "a.sanders")]
    )
    assert result.exit_code == 10 and "does not exist" in result.output
    # /proc refuses new files even to root
    result = runner.invoke(app, ["build-package", str(astronaut_mp4), "-o", "/proc/a.sanders"])
    assert result.exit_code == 10, result.output
    assert not Path("/proc/a.sanders").exists()


def test_json_error_is_machine_readable(tmp_path: Path):
    result = runner.invoke(app, ["build-package", str(tmp_path / "x.mp4"), "--json"])
    assert result.exit_code == 3
    payload = json.loads(result.stdout)
    assert (
        payload == {"ok": False, "error": "InputNotFoundError", "exit_code": 3, "message": payload["message"]}
        and "Check the path" in payload["message"]
    )


def test_debug_shows_the_traceback(tmp_path: Path):
    proc = lipsync("build-package", str(tmp_path / "x.mp4"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InputNotFoundError" in proc.stderr


def test_bad_option_values_are_usage_errors(astronaut_mp4: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["build-package", str(astronaut_mp4), "-o", str(tmp_path / "a.sanders"), "--smooth-window", "4"]
    )
    assert result.exit_code == 2 and "odd number" in result.output
    assert list(tmp_path.iterdir()) == []


def test_embedded_checkpoint_is_checked_then_stored(astronaut_mp4: Path, tmp_path: Path):
    import torch

    from lipsync_tools.models.checkpoint import load_wav2lip, random_wav2lip

    good = tmp_path / "avatar-finetune.pth"
    torch.save({"state_dict": random_wav2lip(seed=3).state_dict()}, good)
    out = tmp_path / "a.sanders"
    result = runner.invoke(
        app, ["build-package", str(astronaut_mp4), "-o", str(out), "--checkpoint", str(good)]
    )
    assert result.exit_code == 0, result.output
    pkg = open_package(out)
    assert pkg.has_checkpoint and pkg.manifest.build_options["checkpoint"] == "avatar-finetune.pth"
    stored = load_wav2lip(pkg.read_checkpoint() or b"")
    expected = random_wav2lip(seed=3).state_dict()
    assert all(torch.equal(stored.state_dict()[k], expected[k]) for k in expected)
    assert validate_package(out) == []

    bad = tmp_path / "not-a-checkpoint.pth"
    bad.write_bytes(b"\x00" * 100)
    out2 = tmp_path / "b.sanders"
    result = runner.invoke(
        app, ["build-package", str(astronaut_mp4), "-o", str(out2), "--checkpoint", str(bad)]
    )
    assert result.exit_code == 15 and not out2.exists()
