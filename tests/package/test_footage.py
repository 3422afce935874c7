"""The manifest's ``footage`` section (format 1.2): parsing, the consistency ``validate`` checks, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from lipsync_tools.errors import PackageFormatError
from lipsync_tools.package import open_package, validate_package
from lipsync_tools.package.inspect import describe_package, dropped_stretches
from lipsync_tools.package.manifest import FootageMeta, Manifest, SegmentMeta, longest_run
from lipsync_tools.package.spec import MAX_SEGMENTS

from .synthetic import write_synthetic_package

GOOD = FootageMeta(
    source_frames=10,
    range_start=0,
    range_end=10,
    source_start=3,
    source_end=7,
    selection="longest",
    max_gap_seconds=0.5,
    min_segment_seconds=0.1,
    segments_found=2,
    segments=[
        SegmentMeta(start=1, end=3, start_reason="video_start", end_reason="cut", detected_frames=2),
        SegmentMeta(start=3, end=7, start_reason="cut", end_reason="face_lost", detected_frames=3),
    ],
    kept_segment=1,
    detected_frames=3,
    longest_fill=1,
    jitter_rms_px=0.0,
)


def test_a_consistent_footage_section_validates(tmp_path: Path) -> None:
    path = tmp_path / "ok.sanders"
    write_synthetic_package(path, footage=GOOD)
    assert validate_package(path) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source_end": 8}, "video.frame_count is 4"),
        ({"detected_frames": 4}, "detected_frames is 4; filled says 3"),
        ({"longest_fill": 0}, "longest_fill is 0; filled says 1"),
        ({"kept_segment": 0}, "kept segment is 1-3 but the stored range is 3-7"),
        ({"kept_segment": 5}, "kept_segment 5 is not one of the 2"),
        ({"selection": "shortest"}, "selection is 'shortest'"),
        ({"range_end": 11}, "range_end 11 is past the 10 frames"),
        ({"range_start": 4}, "ranges do not nest"),
        ({"segments_found": 1}, "lists 2 segments, found 1"),
        (
            {"segments": [GOOD.segments[1], GOOD.segments[0]], "kept_segment": 0},
            "out of order or outside the range",
        ),
        (
            {"segments": [msgspec.structs.replace(GOOD.segments[0], start_reason="magic"), GOOD.segments[1]]},
            "reasons 'magic'",
        ),
        (
            {"segments": [msgspec.structs.replace(GOOD.segments[0], detected_frames=0), GOOD.segments[1]]},
            "0 detected frames in 2",
        ),
    ],
)
def test_validate_names_each_contradiction(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.sanders"
    write_synthetic_package(path, footage=msgspec.structs.replace(GOOD, **change))
    problems = [str(p) for p in validate_package(path)]
    assert any(message in p for p in problems), problems


V1_2 = Path(__file__).parents[1] / "data" / "v1.2-synthetic-footage.sanders"


def _good_manifest() -> Manifest:
    return open_package(V1_2).manifest


def _manifest_dict() -> dict[str, object]:
    data = json.loads(_good_manifest().to_json())
    assert isinstance(data, dict)
    return data


def test_manifest_round_trips_footage() -> None:
    manifest = _good_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.footage is not None and manifest.footage.segments[1].frames == 4


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ("none", "footage.segments is str; expected a list"),
        ([{"start": 1}], r"footage.segments\[0\] lacks the key"),
        ([1], r"footage.segments\[0\] is int; expected an object"),
        ([{**msgspec.structs.asdict(GOOD.segments[0]), "colour": "red"}], "unknown keys"),
    ],
)
def test_bad_segment_lists_are_refused(segments: object, message: str) -> None:
    data = _manifest_dict()
    footage = data["footage"]
    assert isinstance(footage, dict)
    footage["segments"] = segments
    with pytest.raises(PackageFormatError, match=message):
        Manifest.from_dict(data)


def test_segment_lists_have_a_limit() -> None:
    data = _manifest_dict()
    footage = data["footage"]
    assert isinstance(footage, dict)
    footage["segments"] = [msgspec.structs.asdict(GOOD.segments[0])] * (MAX_SEGMENTS + 1)
    with pytest.raises(PackageFormatError, match=f"the limit is {MAX_SEGMENTS}"):
        Manifest.from_dict(data)


def test_filled_share_above_ten_percent_warns_and_below_does_not(tmp_path: Path) -> None:
    manifest = _good_manifest()  # 1 of 4 frames filled
    assert "1 of 4 frames (25 %)" in manifest.warnings()[0]
    ten = msgspec.structs.replace(
        manifest,
        video=msgspec.structs.replace(manifest.video, frame_count=10),
        faces=msgspec.structs.replace(manifest.faces, filled_frames=1),
    )
    assert ten.warnings() == []  # exactly 10 % is not above it


def test_inspect_gives_footage_and_warnings() -> None:
    info = describe_package(V1_2)
    footage = info["footage"]
    assert footage["source_range"] == [3, 7] and footage["segments_found"] == 2
    assert footage["detected_frames"] == 3 and footage["longest_fill_frames"] == 1
    assert [s["kept"] for s in footage["segments"]] == [False, True]
    assert info["warnings"] and "filled" in info["warnings"][0]


def test_inspect_of_an_old_package_gives_counts_only() -> None:
    info = describe_package(Path(__file__).parents[1] / "data" / "v1.1-synthetic-ave.sanders")
    assert info["footage"]["filled_frames"] == 1 and "source_range" not in info["footage"]


def test_dropped_stretches_cover_everything_not_stored() -> None:
    ranged = msgspec.structs.replace(GOOD, range_start=1, range_end=9)
    stretches = dropped_stretches(ranged)
    assert [(d["start"], d["end"], d["reason"]) for d in stretches] == [
        (0, 1, "before_range"),
        (1, 3, "segment"),
        (7, 9, "no_face"),
        (9, 10, "after_range"),
    ]
    kept = ranged.source_end - ranged.source_start
    assert sum(d["end"] - d["start"] for d in stretches) + kept == ranged.source_frames


def test_longest_run() -> None:
    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0])) == 3
    assert longest_run(np.zeros(5)) == 0 and longest_run(np.ones(5)) == 5 and longest_run(np.array([])) == 0


def test_a_damaged_hdf5_structure_is_a_package_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """h5py reports a broken object header (a killed writer's leftover) as KeyError: every reader says
    'damaged' with exit 11 instead of an internal error."""
    import h5py

    from lipsync_tools.package import validate as validate_module

    def broken(*args: object, **kwargs: object) -> object:
        raise KeyError("Unable to synchronously open object (bad object header version number)")

    monkeypatch.setattr(validate_module, "_check_datasets", broken)
    (problem,) = validate_package(V1_2)
    assert problem.dataset == "file" and "HDF5 structure is damaged" in problem.message
    assert problem.exit_code == 11
    monkeypatch.setattr(h5py.Group, "visititems", broken)
    with pytest.raises(PackageFormatError, match="HDF5 structure is damaged"):
        describe_package(V1_2)
    monkeypatch.setattr(h5py.Group, "__getitem__", broken)
    with pytest.raises(PackageFormatError, match="HDF5 structure is damaged"):
        open_package(V1_2)
