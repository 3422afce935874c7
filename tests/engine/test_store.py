"""PackageStore: load, unload, id validation, what a load reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.engine import PackageStore
from lipsync_tools.errors import InputNotFoundError, PackageFormatError, RequestError


def test_load_reports_timings_and_ram(head_package: Path):
    store = PackageStore()
    info = store.load("alice", head_package)
    assert (info.id, info.path, info.n_frames, info.width, info.height, info.crop_size) == (
        "alice", head_package, 120, 176, 144, 96)
    assert info.fps == pytest.approx(30000 / 1001)
    assert not info.has_checkpoint
    assert list(info.load_seconds) == ["open", "frame_preload", "feature_mapping", "total"]
    assert all(v >= 0 for v in info.load_seconds.values())
    assert info.load_seconds["total"] >= info.load_seconds["frame_preload"]
    assert info.ram_bytes >= 120 * 176 * 144 * 3  # every frame decoded in RAM
    assert info.mapped_bytes >= 120 * 96 * 96 * 3  # crops mapped, not copied
    assert info.to_dict()["load_seconds"].keys() == info.load_seconds.keys()
    loaded = store.get("alice")
    assert len(loaded.frames) == 120 and loaded.frames[0].shape == (144, 176, 3)
    assert not loaded.frames[0].flags.writeable
    assert isinstance(loaded.crops, np.memmap) and not loaded.crops.flags.writeable
    assert loaded.mel_window(5).shape == (80, 16)
    assert loaded.package.encoded_frames == []  # the decoded frames replace the encoded ones
    assert [i.id for i in store.infos()] == ["alice"]
    assert "alice" in store and len(store) == 1


def test_unload_and_unknown(head_package: Path):
    store = PackageStore()
    store.load("a", head_package)
    store.load("b", head_package)
    store.unload("a")
    assert [i.id for i in store.infos()] == ["b"]
    with pytest.raises(RequestError) as err:
        store.get("a")
    assert err.value.reason == "unknown_package" and "'a' is not loaded" in str(err.value)
    with pytest.raises(RequestError) as err:
        store.unload("a")
    assert err.value.reason == "unknown_package"


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "a\\b", ".hidden", "..", "x" * 65, "sp ace", "é"])
def test_invalid_ids_are_refused_before_any_file_access(bad: str, tmp_path: Path):
    store = PackageStore()
    with pytest.raises(RequestError) as err:
        store.load(bad, tmp_path / "does-not-exist.sanders")
    assert err.value.reason == "bad_request"
    assert len(store) == 0


def test_duplicate_id(head_package: Path):
    store = PackageStore()
    store.load("a", head_package)
    with pytest.raises(RequestError, match="already loaded") as err:
        store.load("a", head_package)
    assert err.value.reason == "bad_request"
    assert store.load("a", head_package, replace=True).id == "a"


def test_missing_and_invalid_files(tmp_path: Path):
    store = PackageStore()
    with pytest.raises(InputNotFoundError):
        store.load("a", tmp_path / "nope.sanders")
    junk = tmp_path / "junk.sanders"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(PackageFormatError):
        store.load("a", junk)


def test_crop_size_mismatch_is_refused(head_package: Path):
    store = PackageStore(expected_crop_size=128)
    with pytest.raises(PackageFormatError, match="crops are 96x96 but the model takes 128x128"):
        store.load("a", head_package)


def test_a_package_with_many_filled_frames_carries_its_warning(head_package: Path, tmp_path: Path):
    """Every summary of a package shows its warnings: the server's package listing and startup report too."""
    from lipsync_tools.server.app import StartupReport
    from lipsync_tools.server.run import format_startup
    from tests.package.synthetic import write_synthetic_package

    store = PackageStore()
    assert store.load("clean", head_package).warnings == ()
    write_synthetic_package(tmp_path / "filled.sanders", size=96)  # 1 of its 4 frames filled: 25 %
    info = store.load("filled", tmp_path / "filled.sanders")
    assert len(info.warnings) == 1 and "1 of 4 frames (25 %)" in info.warnings[0]
    assert info.to_dict()["warnings"] == list(info.warnings)

    class Model:
        def to_dict(self) -> dict[str, str]:
            return {"name": "random", "source": "random", "backend": "onnx"}

    seconds = dict.fromkeys(("frame_preload", "feature_mapping", "package_open", "total"), 0.0)
    report = StartupReport(
        url="http://x", seconds=seconds, model=Model(), packages=[info.to_dict()], rss_bytes=0
    )
    assert f"  warning   filled: {info.warnings[0]}" in format_startup(report).splitlines()


def test_blend_masks_are_resized_to_their_rectangles_at_load(head_package: Path):
    """Each frame's mask at its rectangle's side, cut to its non-zero box, counted in ram_bytes; crop masks
    are views of the mapped array; a crop-only load prepares no rectangle masks."""
    from lipsync_tools.engine.compositor import prepare_mask

    store = PackageStore()
    info = store.load("alice", head_package)
    loaded = store.get("alice")
    assert len(loaded.rect_masks) == len(loaded.crop_masks) == 120
    for i in (0, 64, 119):
        x0, _, x1, _ = loaded.rects[i]
        expected = prepare_mask(np.asarray(loaded.blend_masks[i]), x1 - x0)
        got = loaded.rect_masks[i]
        assert (got.top, got.left) == (expected.top, expected.left)
        assert np.array_equal(got.weights, expected.weights) and got.weights.dtype == np.uint8
        assert np.shares_memory(loaded.crop_masks[i].weights, loaded.blend_masks)
    unique = {id(m.weights): m.nbytes for m in loaded.rect_masks}
    assert 0 < sum(unique.values()) < 120 * 96 * 96  # boxes of masks smaller than the crops
    lean = PackageStore()
    lean_info = lean.load("lean", head_package, frames="none")
    assert lean.get("lean").rect_masks == [] and len(lean.get("lean").crop_masks) == 120
    frames = sum(f.nbytes for f in loaded.frames) + sum(map(len, loaded.encoded_frames))
    assert info.ram_bytes - lean_info.ram_bytes == frames + sum(unique.values())


def test_frames_with_the_same_mask_share_it_per_side():
    """An imported package's one mask (or a still face) costs one array per rectangle side, not per frame."""
    from lipsync_tools.engine.store import _prepare_masks

    mask = np.zeros((96, 96), np.uint8)
    mask[50:80, 20:76] = 255
    masks = np.stack([mask] * 6 + [255 - mask])
    rects = [(0, 0, side, side) for side in (200, 200, 210, 200, 210, 96, 200)]
    rect_masks, crop_masks, held = _prepare_masks(masks, rects, True)
    assert rect_masks[0] is rect_masks[1] is rect_masks[3] and rect_masks[2] is rect_masks[4]
    assert rect_masks[6] is not rect_masks[0]  # another mask: prepared again
    assert held == sum({id(m): m.nbytes for m in rect_masks}.values())
    assert crop_masks[0] is crop_masks[5] and crop_masks[6] is not crop_masks[0]
    assert _prepare_masks(masks, rects, False)[0] == []
