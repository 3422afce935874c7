"""Several videos in parallel workers, and the CI example workflow's script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.package import validate_package
from tests import samples

runner = CliRunner()
ROOT = Path(__file__).parents[2]


def _video_folder(tmp_path: Path, astronaut_mp4: Path, text_mp4: Path) -> Path:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(astronaut_mp4, videos / "one.mp4")
    samples.late_face_video(videos / "two.mp4", n_frames=100)  # no face in its first second
    shutil.copy(text_mp4, videos / "broken.mp4")
    (videos / "notes.txt").write_text("not a video, and not picked up")
    return videos


def test_folder_builds_in_parallel_and_reports_failures(tmp_path, astronaut_mp4, text_mp4):
    videos = _video_folder(tmp_path, astronaut_mp4, text_mp4)
    out = tmp_path / "packages"
    result = runner.invoke(app, ["build-package", str(videos), "-o", str(out), "--json", "-j", "2"])
    assert result.exit_code == 17, result.output
    report = json.loads(result.stdout)
    assert report["built"] == 2 and report["failed"] == 1 and report["ok"] is False
    by_name = {Path(p["video"]).name: p for p in report["packages"]}
    assert by_name["broken.mp4"]["exit_code"] == 4 and "expected a video" in by_name["broken.mp4"]["message"]
    assert by_name["one.mp4"]["ok"] and by_name["one.mp4"]["source_range"] == [0, 50]
    assert by_name["two.mp4"]["source_range"] == [25, 100] and by_name["two.mp4"]["dropped"] == [
        {"start": 0, "end": 25, "reason": "no_face"}
    ]
    assert sorted(p.name for p in out.iterdir()) == ["one.sanders", "two.sanders"]


def test_ci_example_script(tmp_path, astronaut_mp4, text_mp4):
    """Runs examples/ci/build-packages.sh exactly as examples/ci/github-actions.yml does."""
    workflow = (ROOT / "examples/ci/github-actions.yml").read_text()
    assert "bash examples/ci/build-packages.sh avatars packages" in workflow
    videos = _video_folder(tmp_path, astronaut_mp4, text_mp4)
    packages = tmp_path / "packages"
    env = {**os.environ, "CI": "true", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(ROOT / "examples/ci/build-packages.sh"), str(videos), str(packages)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0  # broken.mp4 failed, and the job says so
    build = json.loads((packages / "build-report.json").read_text())
    validation = json.loads((packages / "validate-report.json").read_text())
    assert build["built"] == 2 and validation["ok"] is True
    assert all(validate_package(p) == [] for p in packages.glob("*.sanders"))
    (videos / "broken.mp4").unlink()
    shutil.rmtree(packages)
    proc = subprocess.run(
        ["bash", str(ROOT / "examples/ci/build-packages.sh"), str(videos), str(packages)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # SEGMENT=fail: a job that wants exactly the videos it gave refuses two.mp4 (no face in its first second)
    shutil.rmtree(packages)
    proc = subprocess.run(
        ["bash", str(ROOT / "examples/ci/build-packages.sh"), str(videos), str(packages)],
        capture_output=True,
        text=True,
        env={**env, "SEGMENT": "fail"},
        timeout=300,
    )
    assert proc.returncode == 17
    entries = json.loads((packages / "build-report.json").read_text())["packages"]
    report = {Path(p["video"]).name: p for p in entries}
    assert report["one.mp4"]["ok"] and report["two.mp4"]["exit_code"] == 21
