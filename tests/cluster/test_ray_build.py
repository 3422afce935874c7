"""``lipsync build-package DIR --ray``: Ray tasks build a folder and report what the local build does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.cluster.build import build_folder_on_ray
from lipsync_tools.errors import BackendUnavailableError
from lipsync_tools.package import validate_package

pytestmark = [pytest.mark.ray, pytest.mark.slow]

runner = CliRunner()

# what differs between two builds of one video: where it was written, and what the build cost
RUN_SPECIFIC = {"output", "stage_seconds", "total_seconds", "build_frames_per_second", "peak_rss_mb"}


def _video_folder(tmp_path: Path, astronaut_mp4: Path, talking_head_mp4: Path, text_mp4: Path) -> Path:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(astronaut_mp4, videos / "astronaut.mp4")
    shutil.copy(talking_head_mp4, videos / "head.mp4")
    shutil.copy(text_mp4, videos / "broken.mp4")
    return videos


def _build(videos: Path, out: Path, *options: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["build-package", str(videos), "-o", str(out), "--json", *options])
    return result.exit_code, json.loads(result.stdout)


def test_ray_build_reports_what_the_local_build_reports(
    ray_cluster, tmp_path, astronaut_mp4, talking_head_mp4, text_mp4
):
    videos = _video_folder(tmp_path, astronaut_mp4, talking_head_mp4, text_mp4)
    local_code, local = _build(videos, tmp_path / "local", "-j", "2")
    ray_code, on_ray = _build(videos, tmp_path / "ray", "--ray")

    assert ray_code == local_code == 17
    assert on_ray.keys() == local.keys()
    assert {k: on_ray[k] for k in ("ok", "built", "failed")} == {"ok": False, "built": 2, "failed": 1}
    assert [p["video"] for p in on_ray["packages"]] == [p["video"] for p in local["packages"]]
    for got, want in zip(on_ray["packages"], local["packages"], strict=True):
        assert got.keys() == want.keys()
        assert {k: v for k, v in got.items() if k not in RUN_SPECIFIC} == {
            k: v for k, v in want.items() if k not in RUN_SPECIFIC
        }
        assert Path(got["output"]) == tmp_path / "ray" / Path(want["output"]).name
    broken = next(p for p in on_ray["packages"] if not p["ok"])
    assert broken["error"] == "NotAVideoError" and broken["exit_code"] == 4
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["astronaut.sanders", "head.sanders"]
    assert all(validate_package(p) == [] for p in (tmp_path / "ray").iterdir())


def test_results_arrive_as_they_finish_and_the_callers_ray_stays_up(ray_cluster, tmp_path, text_mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(text_mp4, videos / "a.mp4")
    shutil.copy(text_mp4, videos / "b.mp4")
    seen: list[str] = []
    report = build_folder_on_ray(
        [videos], tmp_path / "out", on_done=lambda entry: seen.append(Path(entry["video"]).name)
    )
    assert sorted(seen) == ["a.mp4", "b.mp4"]
    assert [Path(e["video"]).name for e in report.results] == ["a.mp4", "b.mp4"]  # input order
    assert report.summary()["failed"] == 2
    assert ray.is_initialized()  # it joined the test session's Ray and left it running


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path, text_mp4):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'lipsync-tools\[ray\]'"):
        build_folder_on_ray([text_mp4], tmp_path)


def test_the_cli_refuses_what_ray_cannot_do(tmp_path, astronaut_mp4):
    result = runner.invoke(app, ["build-package", str(astronaut_mp4), "--ray"])
    assert result.exit_code == 2 and "is one video: build it without --ray" in result.stderr
    result = runner.invoke(app, ["build-package", str(tmp_path), "--address", "auto"])
    assert result.exit_code == 2 and "--address names the Ray cluster for --ray" in result.stderr
    result = runner.invoke(app, ["build-package", str(tmp_path), "--ray", "-j", "2"])
    assert result.exit_code == 2 and "drop --workers" in result.stderr
