"""PackageWriter never leaves a file at the output path unless the package is complete, and makes a complete
one durable: fsync the file, rename, fsync the folder (issue 11)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from lipsync_tools.errors import OutputNotWritableError
from lipsync_tools.package import open_package, validate_package
from lipsync_tools.package.writer import PackageWriter
from tests.package.synthetic import write_synthetic_package
from tests.test_atomic import expected_events, record_durability


def _no_space(monkeypatch: pytest.MonkeyPatch, dataset: str) -> None:
    """Make the early allocation of ``dataset`` fail as a full disk would (after the file was created)."""
    real_hot = PackageWriter._hot

    def hot(self: PackageWriter, name: str, shape: tuple[int, ...], dtype: type) -> h5py.Dataset:
        if name == dataset:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_hot(self, name, shape, dtype)

    monkeypatch.setattr(PackageWriter, "_hot", hot)


def test_constructor_failure_after_creating_the_file_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _no_space(monkeypatch, "masks/blend")  # the temporary file and its crops dataset already exist by then
    with pytest.raises(OutputNotWritableError, match=r"cannot write .*\.a\.sanders\.\d+\.tmp.*No space left"):
        PackageWriter(tmp_path / "a.sanders", n_frames=3, crop_size=16, num_points=5, force=False)
    assert list(tmp_path.iterdir()) == []


def test_constructor_failure_of_another_kind_removes_it_too(tmp_path: Path):
    # zero frames: h5py refuses the (0,)-sized chunks of `frames` after the file was created
    with pytest.raises(ValueError):  # noqa: PT011 (h5py's own message, not ours to pin)
        PackageWriter(tmp_path / "a.sanders", n_frames=0, crop_size=16, num_points=5, force=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_with_force_keeps_the_existing_package(tmp_path: Path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    before = path.read_bytes()
    with (  # noqa: PT012 (the failure inside the writer is the test)
        pytest.raises(RuntimeError, match="killed"),
        PackageWriter(path, n_frames=3, crop_size=16, num_points=5, force=True) as writer,
    ):
        writer.write_frame(0, b"\x89PNG", np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8))
        raise RuntimeError("killed mid-build")
    assert path.read_bytes() == before and validate_package(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["a.sanders"]


def test_commit_fsyncs_the_file_renames_then_fsyncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    events = record_durability(monkeypatch)
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    assert events == expected_events(path)
    assert validate_package(path) == [] and [p.name for p in tmp_path.iterdir()] == ["a.sanders"]


def test_a_disk_full_at_fsync_leaves_the_old_package_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path, n=2)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputNotWritableError, match=r"cannot write .*a\.sanders: No space left on device"):
        write_synthetic_package(path, n=4, force=True)
    assert open_package(path).n_frames == 2  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["a.sanders"]


def test_stale_temporary_files_do_not_block_a_new_package(tmp_path: Path):
    """A SIGKILL-ed build leaves ``.NAME.PID.tmp``: another PID's is left alone, one with our (recycled) PID
    is overwritten; neither stops the build."""
    other = tmp_path / ".a.sanders.999999999.tmp"
    ours = tmp_path / f".a.sanders.{os.getpid()}.tmp"
    other.write_bytes(b"half a package")
    ours.write_bytes(b"half a package")
    write_synthetic_package(tmp_path / "a.sanders")
    assert validate_package(tmp_path / "a.sanders") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.sanders", other.name])
    assert other.read_bytes() == b"half a package"


@pytest.mark.slow
def test_build_failing_while_creating_the_writer_leaves_nothing(
    astronaut_mp4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """build_package creates the writer inside its ``with``: a failure there leaves no hidden file."""
    from lipsync_tools.pipeline.build import build_package

    _no_space(monkeypatch, "masks/blend")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputNotWritableError, match="No space left"):
        build_package(astronaut_mp4, out / "astro.sanders")
    assert list(out.iterdir()) == []
