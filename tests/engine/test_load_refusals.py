"""Loads fail cleanly: a package with a corrupt frame, a non-square rectangle, an fps out of range or crops
its model cannot take is refused at load, naming the dataset, and ``lipsync validate`` finds the same."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from lipsync_tools.engine import PackageStore
from lipsync_tools.engine.model_store import ModelDefaults, ModelStore
from lipsync_tools.errors import PackageFormatError
from lipsync_tools.package import open_package, validate_package
from tests.package.synthetic import write_synthetic_package


def damaged(tmp_path: Path, change: Callable[[h5py.File], None]) -> Path:
    path = tmp_path / f"damaged-{change.__name__}.sanders"
    write_synthetic_package(path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def corrupt_frame(f: h5py.File) -> None:
    f["frames"][2] = np.frombuffer(b"definitely not a png", np.uint8)


def non_square_rect(f: h5py.File) -> None:
    f["rects"][1] = np.array([4, 4, 36, 30], np.int32)


def fps_out_of_range(f: h5py.File) -> None:
    manifest = json.loads(f.attrs["manifest"])
    manifest["video"]["fps"] = 10_000.0
    f.attrs["manifest"] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (corrupt_frame, "dataset 'frames', frame 2"),
        (non_square_rect, "dataset 'rects', rectangle 1 (4, 4, 36, 30) is not square"),
        (fps_out_of_range, "video.fps is 10000.0; expected more than 0, at most 240"),
    ],
    ids=["corrupt-frame", "non-square-rect", "fps"],
)
def test_a_damaged_package_is_refused_at_load_naming_the_dataset(tmp_path: Path, change, words):
    path = damaged(tmp_path, change)
    store = PackageStore()
    with pytest.raises(PackageFormatError, match=words.replace("(", r"\(").replace(")", r"\)")):
        store.load("pkg", path)
    assert len(store) == 0
    assert validate_package(path)  # validate finds a problem too (a checksum, or the same invariant)


def test_validate_names_a_non_square_rectangle_and_an_undecodable_frame(tmp_path: Path):
    problems = validate_package(damaged(tmp_path, non_square_rect))
    assert any(p.dataset == "rects" for p in problems)
    problems = validate_package(damaged(tmp_path, corrupt_frame))
    assert any(p.dataset == "frames" for p in problems)


def test_crops_the_model_cannot_take_are_refused_before_anything_is_decoded(tmp_path: Path):
    path = tmp_path / "tiny.sanders"
    write_synthetic_package(path)  # 16-pixel crops: no Wav2Lip network takes them
    models = ModelStore(ModelDefaults(model="random"))
    store = PackageStore()
    store.admit = models.register
    words = "dataset 'crops' holds 16-pixel crops but the wav2lip network takes 96"
    with pytest.raises(PackageFormatError, match=words):
        store.load("tiny", path)
    assert len(store) == 0 and models.key_of("tiny") is None
    assert open_package(path).crop_size == 16  # the file itself is intact
