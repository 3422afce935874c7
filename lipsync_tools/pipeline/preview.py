"""A contact sheet of a package, so a person can see at a glance whether it is right.

Each row is one sampled frame: the full frame with the crop rectangle (green; red if the face was filled
from neighbours), the landmarks and the blend mask tinted in; then the crop at the same height with the
blend mask; then what the model sees (the crop with its lower half hidden). Row labels give the package
frame and, for packages that record their footage (format 1.2), the source video frame.

Under the rows, a timeline strip (:func:`render_timeline`) shows what part of the source video the package
holds: a summary line (kept source range, detected and filled counts, longest fill, crop jitter) and the
package's warnings in red; then a bar spanning the whole source video (packages without a ``footage``
section: the stored frames), one colour per frame class (:data:`CLASS_COLOURS`): face detected (green),
filled (red), another segment not kept (light grey, hatched), no segment/no face (grey), outside
--start/--end (dark grey). A pixel column of the bar covers many frames of a long video; it takes the
colour of the most important class among them (filled > detected > other segment > no face > outside), so a
one-frame fill stays visible. The kept range is outlined in white, segment boundaries are ticked under the
bar, triangles above it mark the rows' frames, and a legend row says what each mark means.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .._atomic import atomic_output
from ..errors import LipsyncError, OutputNotWritableError, UsageError
from ..media.images import decode_image
from ..package.manifest import FootageMeta, longest_run
from ..package.reader import Package, open_package, read_encoded_frames
from ..package.writer import check_output_path

ROW_HEIGHT = 240
_GREEN = (80, 200, 80)
_RED = (60, 60, 230)
_LANDMARK = (255, 200, 0)
_BACKGROUND = 32  # the grey between rows and behind the timeline strip
_FONT = cv2.FONT_HERSHEY_SIMPLEX

# Frame classes of the timeline, in increasing priority (a bar column shows the highest among its frames).
OUTSIDE_RANGE = 0  # before --start or from --end on: not analysed
NO_FACE = 1  # analysed, in no segment (no face, or only a brief one)
OTHER_SEGMENT = 2  # in a segment that was not kept
DETECTED = 3  # stored, face detected
FILLED = 4  # stored, no face detected: the position was interpolated from neighbours
CLASS_COLOURS = np.array(
    [
        (58, 58, 58),  # OUTSIDE_RANGE: dark grey
        (100, 100, 100),  # NO_FACE: grey
        (165, 165, 165),  # OTHER_SEGMENT: light grey, hatched with _HATCH
        _GREEN,  # DETECTED
        _RED,  # FILLED
    ],
    np.uint8,
)  # BGR
CLASS_NAMES = (
    "outside --start/--end",
    "no face (no segment)",
    "other segment (not kept)",
    "face detected",
    "filled (no face, interpolated)",
)
_HATCH = (118, 118, 118)
_KEPT_OUTLINE = (255, 255, 255)
_TICK = (215, 215, 215)
_TEXT = (230, 230, 230)
_MARKER = (255, 255, 255)

TIMELINE_MARGIN = 10  # pixels left and right of the bar
_BAR_HEIGHT = 24
_TEXT_SCALE = 0.5
_TEXT_LINE = 20
_SMALL_SCALE = 0.42
_LEGEND_LINE = 20


def sample_indices(n_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from first to last."""
    if count < 1:
        raise UsageError(f"--frames is {count}; expected at least 1")
    count = min(count, n_frames)
    return sorted({round(i) for i in np.linspace(0, n_frames - 1, count)})


def _tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    alpha = (mask.astype(np.float32) / 255.0 * 0.45)[..., None]
    return (image * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)


def _put_text(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    colour: tuple[int, int, int],
    scale: float,
    outline: bool = False,
) -> None:
    if outline:
        cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, colour, 1, cv2.LINE_AA)


def _text_width(text: str, scale: float) -> int:
    return int(cv2.getTextSize(text, _FONT, scale, 1)[0][0])


def render_row(package: Package, index: int, encoded_frame: bytes) -> np.ndarray:
    frame = decode_image(encoded_frame)
    rect = package.rects[index]
    x0, y0, x1, y1 = (int(v) for v in rect)
    side = x1 - x0
    full_mask = np.zeros(frame.shape[:2], np.uint8)
    full_mask[y0:y1, x0:x1] = cv2.resize(package.blend_masks[index], (side, side))
    frame = _tint(frame, full_mask, (255, 0, 255))
    # Scale first, then draw, so lines and points are one screen pixel wide whatever the video size.
    scale = ROW_HEIGHT / frame.shape[0]
    frame = cv2.resize(
        frame,
        (max(1, round(frame.shape[1] * scale)), ROW_HEIGHT),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    filled = bool(package.filled[index])
    r = np.rint(rect * scale).astype(int)
    cv2.rectangle(frame, (r[0], r[1]), (r[2] - 1, r[3] - 1), _RED if filled else _GREEN, 2)
    for x, y in package.landmarks[index] * scale:
        frame[int(np.clip(y, 0, ROW_HEIGHT - 1)), int(np.clip(x, 0, frame.shape[1] - 1))] = _LANDMARK
    crop = np.asarray(package.crops[index])
    crop_view = cv2.resize(
        _tint(crop, package.blend_masks[index], (255, 0, 255)),
        (ROW_HEIGHT, ROW_HEIGHT),
        interpolation=cv2.INTER_NEAREST,
    )
    model_view = cv2.resize(
        crop * package.input_mask[..., None], (ROW_HEIGHT, ROW_HEIGHT), interpolation=cv2.INTER_NEAREST
    )
    row = np.concatenate([frame, _gap(), crop_view, _gap(), model_view], axis=1)
    footage = package.manifest.footage
    label = f"frame {index}"
    if footage is not None:
        label += f" (source {footage.source_start + index})"
    if filled:
        label += "  (filled)"
    _put_text(row, label, (8, 22), _RED if filled else (255, 255, 255), 0.6, outline=True)
    return row


def _gap() -> np.ndarray:
    return np.full((ROW_HEIGHT, 6, 3), _BACKGROUND, np.uint8)


# --- the timeline strip ---


def frame_classes(filled: np.ndarray, footage: FootageMeta | None) -> np.ndarray:
    """The class (``OUTSIDE_RANGE`` .. ``FILLED``) of every source frame, uint8; one per stored frame when
    ``footage`` is None. ``filled`` has one value per stored frame (non-zero: filled). Vectorised: a loop
    runs over the segments (at most :data:`~lipsync_tools.package.spec.MAX_SEGMENTS`), never over frames."""
    flags = np.asarray(filled).ravel() != 0
    n = flags.size
    if footage is None:
        classes = np.full(max(n, 1), DETECTED, np.uint8)
        classes[:n][flags] = FILLED
        return classes
    start = max(0, footage.source_start)
    total = max(footage.source_frames, footage.range_end, start + n, 1)
    classes = np.full(total, OUTSIDE_RANGE, np.uint8)
    classes[max(0, footage.range_start) : max(0, footage.range_end)] = NO_FACE
    for segment in footage.segments:
        classes[max(0, segment.start) : max(0, segment.end)] = OTHER_SEGMENT
    stored = classes[start : start + n]  # a view
    stored[:] = DETECTED
    stored[flags] = FILLED
    return classes


def column_starts(total: int, n_columns: int) -> np.ndarray:
    """The first frame shown by each of ``n_columns`` pixel columns spanning ``total`` frames (int64,
    non-decreasing). With more frames than columns, column ``c`` shows frames ``starts[c]`` up to
    ``starts[c + 1]``; with fewer, each frame spans several columns."""
    return (np.arange(n_columns, dtype=np.int64) * total) // n_columns


def column_classes(classes: np.ndarray, n_columns: int) -> np.ndarray:
    """The class each of ``n_columns`` pixel columns shows: the highest of its frames' classes, so a short
    fill stays visible in a long video (``np.maximum.reduceat``; no Python loop over frames)."""
    starts = column_starts(classes.size, n_columns)
    if classes.size >= n_columns:
        return np.maximum.reduceat(classes, starts)
    return classes[starts]


def _first_column(starts: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The first pixel column showing each of ``frames`` (the one holding it, if it starts inside one)."""
    left = np.searchsorted(starts, frames, side="left")
    return np.minimum(left, _last_column(starts, frames))


def _last_column(starts: np.ndarray, frames: np.ndarray) -> np.ndarray:
    return np.maximum(np.searchsorted(starts, frames, side="right") - 1, 0)


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (a single over-long word keeps its line)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        attempt = f"{current} {word}" if current else word
        if current and _text_width(attempt, scale) > width:
            lines.append(current)
            current = word
        else:
            current = attempt
    if current:
        lines.append(current)
    return lines


def timeline_summary(package: Package) -> str:
    """The line above the bar: the kept source range and what the package's frames are made of."""
    m = package.manifest
    footage = m.footage
    filled = m.faces.filled_frames
    if footage is None:
        n = package.n_frames
        return (
            f"{n} frames, {n - filled} detected, {filled} filled (longest fill "
            f"{longest_run(package.filled)} frames); source range not recorded "
            f"(package format {m.format_version})"
        )
    fps = package.fps
    return (
        f"source frames {footage.source_start}-{footage.source_end} of {footage.source_frames} kept "
        f"({footage.source_start / fps:.2f}-{footage.source_end / fps:.2f} s), "
        f"{footage.detected_frames} detected, {filled} filled (longest fill {footage.longest_fill} frames), "
        f"jitter {footage.jitter_rms_px:.2f} px"
    )


def _legend_items(counts: np.ndarray, has_footage: bool) -> list[tuple[str, str, int]]:
    """(kind, text, class) for each legend entry: the classes that occur (face detected and filled always),
    with their frame counts, then the marks."""
    items = [
        ("box", f"{CLASS_NAMES[c]}: {int(counts[c])}", c)
        for c in (DETECTED, FILLED, OTHER_SEGMENT, NO_FACE, OUTSIDE_RANGE)
        if c in (DETECTED, FILLED) or counts[c]
    ]
    if has_footage:
        items += [("kept", "kept range", -1), ("tick", "segment boundary", -1)]
    items.append(("marker", "rows above", -1))
    return items


def render_timeline(package: Package, indices: list[int], width: int) -> np.ndarray:
    """The timeline strip under the contact sheet, ``width`` pixels wide (BGR uint8).

    A summary line and the package's warnings (red), wrapped to ``width``; a bar over the whole source
    video (or the stored frames, for packages without a ``footage`` section) coloured by frame class, the
    kept range outlined, segment boundaries ticked below it and triangles above it at the package frames
    ``indices`` (the rows shown above); frame-count labels; a legend. Cost is linear in the frame count
    and vectorised (a million frames take milliseconds)."""
    footage = package.manifest.footage
    fps = package.fps
    width = max(int(width), 2 * TIMELINE_MARGIN + 1)
    bar_width = width - 2 * TIMELINE_MARGIN
    text_width = width - 2 * TIMELINE_MARGIN
    classes = frame_classes(package.filled, footage)
    total = int(classes.size)
    columns = column_classes(classes, bar_width)
    counts = np.bincount(classes, minlength=len(CLASS_COLOURS))
    starts = column_starts(total, bar_width)

    text_lines = [(line, _TEXT) for line in _wrap(timeline_summary(package), text_width, _TEXT_SCALE)]
    for warning in package.manifest.warnings():
        text_lines += [(line, _RED) for line in _wrap(f"warning: {warning}", text_width, _TEXT_SCALE)]

    # Legend entries flow left to right, wrapping to the strip's width.
    legend_rows: list[list[tuple[int, str, str, int]]] = [[]]
    x = TIMELINE_MARGIN
    for kind, text, cls in _legend_items(counts, footage is not None):
        item_width = 14 + 5 + _text_width(text, _SMALL_SCALE)
        if legend_rows[-1] and x + item_width > width - TIMELINE_MARGIN:
            legend_rows.append([])
            x = TIMELINE_MARGIN
        legend_rows[-1].append((x, kind, text, cls))
        x += item_width + 18

    y = 10
    text_top = y
    y += _TEXT_LINE * len(text_lines) + 4
    marker_top = y
    bar_top = marker_top + 13
    bar_bottom = bar_top + _BAR_HEIGHT
    axis_baseline = bar_bottom + 22
    legend_top = axis_baseline + 6
    height = legend_top + _LEGEND_LINE * len(legend_rows) + 6
    strip = np.full((height, width, 3), _BACKGROUND, np.uint8)

    for i, (line, colour) in enumerate(text_lines):
        _put_text(strip, line, (TIMELINE_MARGIN, text_top + i * _TEXT_LINE + 14), colour, _TEXT_SCALE)

    # The bar: one colour per column, the other-segment columns hatched.
    x0 = TIMELINE_MARGIN
    bar = np.broadcast_to(CLASS_COLOURS[columns], (_BAR_HEIGHT, bar_width, 3)).copy()
    yy, xx = np.mgrid[0:_BAR_HEIGHT, 0:bar_width]
    hatch = (columns[None, :] == OTHER_SEGMENT) & ((xx + yy) % 6 < 2)
    bar[hatch] = _HATCH
    strip[bar_top:bar_bottom, x0 : x0 + bar_width] = bar

    if footage is not None:
        bounds = np.array(
            sorted({b for s in footage.segments for b in (s.start, s.end)}), dtype=np.int64
        ).reshape(-1)
        if bounds.size:
            ticks = x0 + np.clip(_first_column(starts, bounds), 0, bar_width - 1)
            strip[bar_bottom + 3 : bar_bottom + 9, ticks] = _TICK
        if footage.source_end > footage.source_start:
            k0 = x0 + int(_first_column(starts, np.array([footage.source_start]))[0])
            k1 = x0 + int(_last_column(starts, np.array([footage.source_end - 1]))[0])
            cv2.rectangle(strip, (k0 - 1, bar_top - 2), (k1 + 1, bar_bottom + 1), _KEPT_OUTLINE, 1)

    # Triangles above the bar at the rows' frames (red for a filled frame, like its row's label).
    offset = max(0, footage.source_start) if footage is not None else 0
    rows = np.asarray(indices, dtype=np.int64).reshape(-1)
    if rows.size:
        frames = np.clip(rows + offset, 0, total - 1)
        centres = x0 + (_first_column(starts, frames) + _last_column(starts, frames)) // 2
        for index, cx in zip(rows.tolist(), centres.tolist(), strict=True):
            filled = 0 <= index < package.n_frames and bool(package.filled[index])
            _triangle(strip, int(cx), marker_top, _RED if filled else _MARKER)

    unit = "source frames" if footage is not None else "frames"
    _put_text(strip, "0", (x0, axis_baseline), _TEXT, _SMALL_SCALE)
    right = f"{total} {unit} ({total / fps:.1f} s)" if fps > 0 else f"{total} {unit}"
    _put_text(
        strip,
        right,
        (width - TIMELINE_MARGIN - _text_width(right, _SMALL_SCALE), axis_baseline),
        _TEXT,
        _SMALL_SCALE,
    )

    for r, items in enumerate(legend_rows):
        top = legend_top + r * _LEGEND_LINE
        for x, kind, text, cls in items:
            box = strip[top + 3 : top + 15, x : x + 14]
            if kind == "box":
                box[:] = CLASS_COLOURS[cls]
                if cls == OTHER_SEGMENT:
                    by, bx = np.mgrid[0:12, 0:14]
                    box[(bx + by) % 6 < 2] = _HATCH
            elif kind == "kept":
                cv2.rectangle(strip, (x, top + 3), (x + 13, top + 14), _KEPT_OUTLINE, 1)
            elif kind == "tick":
                strip[top + 3 : top + 15, x + 6] = _TICK
            else:
                _triangle(strip, x + 7, top + 4, _MARKER)
            _put_text(strip, text, (x + 19, top + 14), _TEXT, _SMALL_SCALE)
    return strip


def _triangle(image: np.ndarray, cx: int, top: int, colour: tuple[int, int, int]) -> None:
    """A small downward triangle with its base on row ``top`` and its tip 8 rows lower, centred on ``cx``."""
    points = np.array([[cx - 5, top], [cx + 5, top], [cx, top + 8]], np.int32)
    cv2.fillPoly(image, [points], colour, cv2.LINE_AA)


def make_contact_sheet(
    package_path: str | Path, output: str | Path, *, frames: int = 6, force: bool = False
) -> Path:
    """Write a PNG contact sheet of ``frames`` sampled frames of the package, with the timeline strip under
    them, to ``output``."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"-o {output} must end in .png")
    check_output_path(output, force)
    package = open_package(package_path, load_frames=False)  # a long package's frames are gigabytes
    indices = sample_indices(package.n_frames, frames)
    encoded = read_encoded_frames(package, indices)
    rows = [render_row(package, i, data) for i, data in zip(indices, encoded, strict=True)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=_BACKGROUND) for r in rows]
    sheet = np.concatenate([*rows, render_timeline(package, indices, width)], axis=0)
    ok, data = cv2.imencode(".png", sheet)
    if not ok:
        raise LipsyncError(f"could not encode the contact sheet for {output}")
    try:
        with atomic_output(output) as tmp:
            tmp.write_bytes(data.tobytes())
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output
