import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from lipsync_tools.errors import (
    InputNotFoundError,
    OutputExistsError,
    OutputNotWritableError,
    PackageFormatError,
    PackageVersionError,
)
from lipsync_tools.package import open_package, validate_package
from lipsync_tools.package.writer import PackageWriter
from tests.package.synthetic import write_synthetic_package


def test_write_then_open_memory_maps_hot_arrays(tmp_path):
    path = tmp_path / "a.sanders"
    manifest = write_synthetic_package(path, checkpoint=b"weights" * 100)
    pkg = open_package(path)
    assert pkg.n_frames == 4 and pkg.crop_size == 16 and pkg.fps == 25.0
    assert set(pkg.memory_mapped) >= {"crops", "rects", "masks/blend", "audio/mel", "audio/mel_index"}
    assert isinstance(pkg.crops, np.memmap) and not pkg.crops.flags.writeable
    assert pkg.crops.shape == (4, 16, 16, 3) and pkg.landmarks.shape == (4, 5, 2)
    assert pkg.read_checkpoint() == b"weights" * 100
    frames = pkg.decode_frames()
    assert len(frames) == 4 and frames[2].shape == (48, 64, 3) and frames[2][0, 0, 0] == 80
    assert set(manifest.datasets) == {
        "frames",
        "crops",
        "rects",
        "masks/input",
        "masks/blend",
        "landmarks",
        "boxes",
        "filled",
        "audio/pcm",
        "audio/mel",
        "audio/mel_index",
        "model/checkpoint",
    }
    assert validate_package(path) == []


def test_same_input_gives_identical_bytes(tmp_path):
    a, b = tmp_path / "a.sanders", tmp_path / "b.sanders"
    ma = write_synthetic_package(a)
    mb = write_synthetic_package(b)
    assert ma.datasets == mb.datasets
    assert a.read_bytes() == b.read_bytes()


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with pytest.raises(OutputExistsError, match="already exists; pass --force"):
        write_synthetic_package(path)
    write_synthetic_package(path, force=True)


def test_unwritable_and_missing_folders(tmp_path):
    with pytest.raises(OutputNotWritableError, match="does not exist"):
        write_synthetic_package(tmp_path / "nope" / "a.sanders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root writes anywhere a mode allows; /proc refuses new files even to root
        target = locked if not os.access(locked, os.W_OK) else Path("/proc")
        with pytest.raises(OutputNotWritableError, match=r"not writable|cannot create"):
            write_synthetic_package(target / "a.sanders")
        assert not (target / "a.sanders").exists()
    finally:
        locked.chmod(0o700)


def test_interrupted_write_leaves_nothing(tmp_path):
    path = tmp_path / "a.sanders"
    with (
        pytest.raises(RuntimeError),
        PackageWriter(path, n_frames=3, crop_size=16, num_points=5, force=False),
    ):
        raise RuntimeError("killed mid-build")
    assert list(tmp_path.iterdir()) == []


def _rewrite_attr(path, name, value):
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value


def test_checksum_damage_is_reported_per_dataset(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        f["crops"][0, 0, 0, 0] ^= 0xFF
        f["rects"][0, 0] = 5
    problems = validate_package(path)
    assert [p.dataset for p in problems] == ["crops", "rects"]
    assert "checksum mismatch" in str(problems[0])


def test_newer_major_version_is_refused_with_advice(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    _rewrite_attr(path, "format_version", "2.0")
    with pytest.raises(
        PackageVersionError,
        match=r"package format 2.0 is newer than this lipsync-tools reads "
        r"\(up to 1.x\); upgrade lipsync-tools",
    ):
        open_package(path)
    assert [p.dataset for p in validate_package(path)] == ["manifest"]


def test_newer_minor_version_with_extra_keys_and_datasets_still_reads(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        manifest = json.loads(f.attrs["manifest"])
        manifest["format_version"] = "1.7"
        manifest["video"]["hdr"] = True  # a key a future minor version might add
        f.attrs["manifest"] = json.dumps(manifest)
        f.attrs["format_version"] = "1.7"
        f.create_dataset("extras/future", data=np.zeros(3))
    assert open_package(path).n_frames == 4


def test_unknown_manifest_key_in_current_version_is_rejected(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        manifest = json.loads(f.attrs["manifest"])
        manifest["video"]["hdr"] = True
        f.attrs["manifest"] = json.dumps(manifest)
    with pytest.raises(PackageFormatError, match=r"manifest.video has unknown keys \['hdr'\]"):
        open_package(path)


def test_shape_disagreeing_with_manifest(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        del f["rects"]
        f.create_dataset("rects", data=np.zeros((3, 4), np.int32))
    with pytest.raises(PackageFormatError, match=r"dataset 'rects' has shape \(3, 4\); expected \(4, 4\)"):
        open_package(path)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"not an hdf5 file at all", "not a sanders package"),
        (b"", "not a sanders package"),
    ],
)
def test_not_a_package(tmp_path, content, error):
    path = tmp_path / "x.sanders"
    path.write_bytes(content)
    with pytest.raises(PackageFormatError, match=error):
        open_package(path)


def test_hdf5_that_is_not_a_package(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["a"] = 1
    with pytest.raises(PackageFormatError, match="HDF5 file but not a sanders package"):
        open_package(path)


def test_truncated_package(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert validate_package(path)  # never valid
    with pytest.raises(PackageFormatError):  # noqa: PT012 (either call may refuse it)
        pkg = open_package(path)
        pkg.decode_frames()


def test_missing_package():
    with pytest.raises(InputNotFoundError, match="does not exist; build one"):
        open_package("/nonexistent/a.sanders")


def test_limits_are_checked_before_anything_is_read(tmp_path):
    path = tmp_path / "a.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        manifest = json.loads(f.attrs["manifest"])
        manifest["audio"]["samples"] = 10**12
        f.attrs["manifest"] = json.dumps(manifest)
    expected = r"manifest audio.samples is 1000000000000; expected 1..691200000"
    with pytest.raises(PackageFormatError, match=expected):
        open_package(path)
