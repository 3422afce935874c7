"""``lipsync inspect``, ``validate`` and ``preview`` on a real package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
from typer.testing import CliRunner

from lipsync_tools.cli.main import app

runner = CliRunner()


def test_inspect_human_and_json(head_package: Path):
    result = runner.invoke(app, ["inspect", str(head_package)])
    assert result.exit_code == 0, result.output
    assert "frames 120" in result.output and "mediapipe" in result.output and "crops" in result.output
    info = json.loads(runner.invoke(app, ["inspect", str(head_package), "--json"]).stdout)
    assert info["video"]["frame_count"] == 120 and info["faces"]["filled_frames"] == 0
    assert info["datasets"]["crops"] == {
        "shape": [120, 96, 96, 3],
        "dtype": "uint8",
        "storage": "contiguous",
        "bytes": 120 * 96 * 96 * 3,
    }
    assert info["datasets"]["frames"]["storage"].startswith("chunked")


def test_validate_ok_then_names_each_damaged_dataset(head_package: Path, tmp_path: Path):
    result = runner.invoke(app, ["validate", str(head_package)])
    assert result.exit_code == 0 and result.stdout.strip() == f"{head_package}: ok"
    damaged = tmp_path / "damaged.sanders"
    shutil.copy(head_package, damaged)
    with h5py.File(damaged, "r+") as f:
        f["audio/mel"][0, 0] += 1.0
        f["masks/blend"][3, 40, 40] ^= 1
    result = runner.invoke(app, ["validate", str(damaged)])
    assert result.exit_code == 11
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["masks/blend", "audio/mel"]
    assert all("checksum mismatch" in line for line in lines)
    report = json.loads(runner.invoke(app, ["validate", str(damaged), "--json"]).stdout)
    assert report["ok"] is False and len(report["packages"][str(damaged)]) == 2


def test_validate_not_a_package(tmp_path: Path):
    bogus = tmp_path / "x.sanders"
    bogus.write_text("hello")
    result = runner.invoke(app, ["validate", str(bogus)])
    assert result.exit_code == 11 and "not a sanders package" in result.stdout


def test_preview_writes_a_contact_sheet(head_package: Path, tmp_path: Path):
    out = tmp_path / "sheet.png"
    result = runner.invoke(app, ["preview", str(head_package), "-o", str(out), "--frames", "4"])
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[0] > 4 * (240 + 6)  # the rows, then the timeline strip
    assert runner.invoke(app, ["preview", str(head_package), "-o", str(out)]).exit_code == 9  # needs --force
    assert runner.invoke(app, ["preview", str(head_package), "-o", str(tmp_path / "s.jpg")]).exit_code == 2


def _newer_major(source: Path, path: Path) -> Path:
    """A copy of ``source`` that says it was written by format 2.0."""
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = "2.0"
        manifest = json.loads(f.attrs["manifest"])
        manifest["format_version"] = "2.0"
        f.attrs["manifest"] = json.dumps(manifest)
    return path


def test_a_newer_major_version_exits_12_as_the_readme_says(head_package: Path, tmp_path: Path):
    newer = _newer_major(head_package, tmp_path / "newer.sanders")
    for command in (["validate", str(newer)], ["inspect", str(newer)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 12, (command, result.output)
        assert "newer than this lipsync-tools reads" in result.output and "upgrade" in result.output
    # with another package that is damaged in another way, the general code wins
    broken = tmp_path / "broken.sanders"
    broken.write_bytes(b"not hdf5")
    assert runner.invoke(app, ["validate", str(newer), str(broken)]).exit_code == 11
    assert runner.invoke(app, ["validate", str(newer), str(head_package)]).exit_code == 12
