"""The fan backend through the CLI: random FAN weights in a temporary torch hub folder, or a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync_tools.package import open_package


def _run(*args: str, torch_home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lipsync_tools", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true", "TORCH_HOME": str(torch_home)},
        timeout=300,
    )


def test_missing_fan_weights_is_a_clear_error(astronaut_mp4: Path, tmp_path: Path):
    proc = _run(
        "build-package",
        str(astronaut_mp4),
        "-o",
        str(tmp_path / "a.sanders"),
        "--face-backend",
        "fan",
        torch_home=tmp_path / "empty-hub",
    )
    assert proc.returncode == 13, proc.stderr
    assert "2DFAN4-11f355bf06.pth.tar" in proc.stderr and "--weights-dir" in proc.stderr
    assert not (tmp_path / "a.sanders").exists()


@pytest.mark.slow
def test_fan_backend_builds_with_random_weights(astronaut_mp4: Path, tmp_path: Path):
    import torch
    from face_alignment.models import FAN

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), checkpoints / "2DFAN4-11f355bf06.pth.tar")
    out = tmp_path / "fan.sanders"
    proc = _run(
        "build-package", str(astronaut_mp4), "-o", str(out), "--face-backend", "fan", torch_home=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    manifest = open_package(out).manifest
    assert manifest.faces.scheme == "ibug-68" and manifest.faces.num_points == 68
