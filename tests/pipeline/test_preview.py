"""The contact sheet's timeline strip (``lipsync preview``): classes, colours, old packages, long videos."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import cv2
import h5py
import msgspec
import numpy as np
import pytest

from lipsync_tools.package.manifest import FootageMeta, SegmentMeta, longest_run
from lipsync_tools.package.reader import Package, open_package
from lipsync_tools.pipeline.preview import (
    CLASS_COLOURS,
    DETECTED,
    FILLED,
    NO_FACE,
    OTHER_SEGMENT,
    OUTSIDE_RANGE,
    ROW_HEIGHT,
    TIMELINE_MARGIN,
    column_classes,
    frame_classes,
    make_contact_sheet,
    render_timeline,
    sample_indices,
)
from tests.package.synthetic import write_synthetic_package

DATA = Path(__file__).resolve().parents[1] / "data"
_HATCH = (118, 118, 118)


def _segment(start: int, end: int, detected: int | None = None) -> SegmentMeta:
    return SegmentMeta(
        start=start,
        end=end,
        start_reason="cut",
        end_reason="cut",
        detected_frames=end - start if detected is None else detected,
    )


def _footage(
    source_frames: int,
    analysed: tuple[int, int],
    segments: list[SegmentMeta],
    kept: int,
    filled: np.ndarray,
) -> FootageMeta:
    flags = filled != 0
    return FootageMeta(
        source_frames=source_frames,
        range_start=analysed[0],
        range_end=analysed[1],
        source_start=segments[kept].start,
        source_end=segments[kept].end,
        selection="longest",
        max_gap_seconds=0.5,
        min_segment_seconds=1.0,
        segments_found=len(segments),
        segments=segments,
        kept_segment=kept,
        detected_frames=int((~flags).sum()),
        longest_fill=longest_run(flags),
        jitter_rms_px=1.25,
    )


def _with_footage(package: Package, filled: np.ndarray, footage: FootageMeta) -> Package:
    """``package`` holding ``len(filled)`` frames (rects broadcast, no copy) described by ``footage``."""
    n = len(filled)
    m = package.manifest
    manifest = msgspec.structs.replace(
        m,
        video=msgspec.structs.replace(m.video, frame_count=n),
        faces=msgspec.structs.replace(m.faces, filled_frames=int((filled != 0).sum())),
        footage=footage,
    )
    rects = np.broadcast_to(np.asarray(package.rects[:1]), (n, 4))
    return replace(package, manifest=manifest, rects=rects, filled=filled)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Package:
    path = tmp_path_factory.mktemp("preview") / "synthetic.sanders"
    write_synthetic_package(path)
    return open_package(path, load_frames=False)


def _bar_top(strip: np.ndarray) -> int:
    """The first row of the bar: the first that holds a green pixel (text above it is white or red)."""
    return int(np.flatnonzero((strip == CLASS_COLOURS[DETECTED]).all(axis=2).any(axis=1))[0])


def _bar_row(strip: np.ndarray, x: int) -> int:
    """A row through the middle of the bar: the green column ``x`` is green there."""
    rows = np.flatnonzero((strip[:, x] == CLASS_COLOURS[DETECTED]).all(axis=1))
    assert rows.size >= 10, "no bar found"
    return int(rows[rows.size // 2])


def test_frame_and_column_classes() -> None:
    filled = np.zeros(50, np.uint8)
    filled[20:25] = 1
    footage = _footage(200, (20, 180), [_segment(30, 45), _segment(50, 100), _segment(120, 160)], 1, filled)
    classes = frame_classes(filled, footage)
    assert classes.shape == (200,)
    expected = {5: OUTSIDE_RANGE, 25: NO_FACE, 35: OTHER_SEGMENT, 47: NO_FACE, 60: DETECTED, 72: FILLED}
    expected |= {110: NO_FACE, 140: OTHER_SEGMENT, 185: OUTSIDE_RANGE}
    assert {f: int(classes[f]) for f in expected} == expected
    # A column shows the most important class among its frames; with fewer frames, frames span columns.
    assert column_classes(np.array([0, 0, 0, 4, 3, 3], np.uint8), 2).tolist() == [0, 4]
    assert column_classes(np.array([1, 3], np.uint8), 4).tolist() == [1, 1, 3, 3]
    # Old packages: only the stored frames.
    assert frame_classes(np.array([0, 1, 0], np.uint8), None).tolist() == [DETECTED, FILLED, DETECTED]


def test_timeline_colours_match_the_frame_classes(synthetic: Package) -> None:
    # A package holding source frames 50-100 of 200; stored frames 20-24 (source 70-74) filled.
    filled = np.zeros(50, np.uint8)
    filled[20:25] = 1
    footage = _footage(200, (20, 180), [_segment(30, 45), _segment(50, 100), _segment(120, 160)], 1, filled)
    package = _with_footage(synthetic, filled, footage)
    width = 400 + 2 * TIMELINE_MARGIN  # two pixel columns per source frame

    def x_of(frame: int) -> int:
        return TIMELINE_MARGIN + 2 * frame

    strip = render_timeline(package, [0, 22, 49], width)
    assert strip.shape[1] == width and strip.dtype == np.uint8
    y = _bar_row(strip, x_of(60))

    def colour(frame: int) -> tuple[int, ...]:
        return tuple(int(v) for v in strip[y, x_of(frame)])

    dark, grey, light = (
        tuple(int(v) for v in CLASS_COLOURS[c]) for c in (OUTSIDE_RANGE, NO_FACE, OTHER_SEGMENT)
    )
    green, red = tuple(int(v) for v in CLASS_COLOURS[DETECTED]), tuple(int(v) for v in CLASS_COLOURS[FILLED])
    # The left quarter (source frames 0-49) is grey, never green or red.
    left = strip[y, x_of(0) : x_of(50) - 1]
    assert not (left == CLASS_COLOURS[DETECTED]).all(axis=1).any()
    assert not (left == CLASS_COLOURS[FILLED]).all(axis=1).any()
    assert colour(5) == dark and colour(190) == dark  # outside --start/--end
    assert colour(25) == grey and colour(47) == grey and colour(110) == grey  # no segment
    assert colour(35) in (light, _HATCH) and colour(140) in (light, _HATCH)  # another segment, hatched
    assert {tuple(int(v) for v in p) for p in strip[y, x_of(30) : x_of(45)]} == {light, _HATCH}
    assert colour(55) == green and colour(95) == green
    assert all(colour(f) == red for f in range(70, 75))
    # The kept range is outlined in white, just above the bar.
    top = y
    while tuple(strip[top - 1, x_of(60)]) == green:
        top -= 1
    assert tuple(int(v) for v in strip[top - 2, x_of(60)]) == (255, 255, 255)
    assert tuple(int(v) for v in strip[top - 2, x_of(20)]) != (255, 255, 255)
    # Triangles above the bar mark the rows: source frames 50, 72 (filled: red) and 99.
    marker_row = strip[top - 10]
    assert tuple(int(v) for v in marker_row[x_of(50) + 1]) == (255, 255, 255)
    assert tuple(int(v) for v in marker_row[x_of(72) + 1]) == red
    assert tuple(int(v) for v in marker_row[x_of(99) + 1]) == (255, 255, 255)
    assert tuple(int(v) for v in marker_row[x_of(30)]) == (32, 32, 32)  # no row there
    # 5 of 50 frames filled is not over 10 %: no red text; 10 of 50 is.
    assert not _has_red(strip[: top - 15])
    filled[30:35] = 1
    warned = render_timeline(
        _with_footage(synthetic, filled, msgspec.structs.replace(footage, detected_frames=40)), [0], width
    )
    assert _has_red(warned[: _bar_top(warned) - 15]) and warned.shape[0] > strip.shape[0]


def _has_red(image: np.ndarray) -> bool:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return bool(((r > 150) & (r > b + 80) & (r > g + 80)).any())


def test_preview_with_footage_is_taller_than_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "footage.sanders"
    manifest = write_synthetic_package(path)  # 4 frames, frame 1 filled
    filled = np.array([0, 1, 0, 0], np.uint8)
    footage = _footage(20, (0, 20), [_segment(2, 6), _segment(8, 12, detected=3)], 1, filled)
    with h5py.File(path, "r+") as f:
        f.attrs["manifest"] = msgspec.structs.replace(manifest, footage=footage).to_json()
    assert open_package(path, load_frames=False).manifest.footage == footage
    out = make_contact_sheet(path, tmp_path / "sheet.png", frames=4)
    sheet = cv2.imread(str(out))
    rows = 4 * (ROW_HEIGHT + 6)
    assert sheet is not None and sheet.shape[0] > rows + 60
    strip = sheet[rows:]
    bar = strip[_bar_top(strip) + 5, TIMELINE_MARGIN : sheet.shape[1] - TIMELINE_MARGIN]
    colours = {tuple(int(v) for v in p) for p in bar}
    # The whole video was analysed: nothing outside --start/--end; the kept range's outline is white.
    expected = {tuple(int(v) for v in CLASS_COLOURS[c]) for c in (DETECTED, FILLED, NO_FACE, OTHER_SEGMENT)}
    assert colours == expected | {_HATCH, (255, 255, 255)}
    assert _has_red(strip[: _bar_top(strip) - 15])  # 1 of 4 frames filled: the warning, in red


@pytest.mark.parametrize("name", ["v1.0-synthetic.sanders", "v1.1-synthetic-ave.sanders"])
def test_old_packages_still_preview(name: str, tmp_path: Path) -> None:
    package = open_package(DATA / name, load_frames=False)
    assert package.manifest.footage is None
    out = make_contact_sheet(DATA / name, tmp_path / "sheet.png", frames=4)
    sheet = cv2.imread(str(out))
    rows = len(sample_indices(package.n_frames, 4)) * (ROW_HEIGHT + 6)
    assert sheet is not None and sheet.shape[0] > rows
    strip = sheet[rows:]
    # The bar spans the stored frames only: detected and filled, nothing grey.
    y = _bar_row(strip, TIMELINE_MARGIN + 1)
    bar = strip[y, TIMELINE_MARGIN : sheet.shape[1] - TIMELINE_MARGIN]
    colours = {tuple(int(v) for v in p) for p in bar}
    assert colours == {tuple(int(v) for v in CLASS_COLOURS[c]) for c in (DETECTED, FILLED)}


def test_a_million_frame_timeline_renders_fast(synthetic: Package) -> None:
    n_source = 1_200_000
    stored = (200_000, 1_200_000)
    filled = np.zeros(stored[1] - stored[0], np.uint8)
    filled[500_000] = 1  # one filled frame in a million must stay visible
    filled[700_000:700_010] = 1
    others = [_segment(s, s + 50) for s in range(100_000, 199_000, 100)]  # 990 short segments
    segments = [*others, _segment(*stored)]
    footage = _footage(n_source, (50_000, n_source), segments, len(segments) - 1, filled)
    package = _with_footage(synthetic, filled, footage)
    width = 1000 + 2 * TIMELINE_MARGIN
    indices = sample_indices(package.n_frames, 6)
    render_timeline(package, indices, width)  # warm up (cv2, numpy)
    started = time.perf_counter()
    strip = render_timeline(package, indices, width)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"a million-frame timeline took {elapsed:.2f} s"
    y = _bar_row(strip, TIMELINE_MARGIN + 600)
    bar = strip[y, TIMELINE_MARGIN : TIMELINE_MARGIN + 1000]
    is_red = (bar == CLASS_COLOURS[FILLED]).all(axis=1)
    # 1200 frames a column: source frame 700,000 is column 583; 900,000 is column 750.
    assert np.flatnonzero(is_red).tolist() == [583, 750]
    assert (bar[:41] == CLASS_COLOURS[OUTSIDE_RANGE]).all()
    assert (bar[167:] == CLASS_COLOURS[DETECTED]).all(axis=1).sum() == 1000 - 167 - 2
