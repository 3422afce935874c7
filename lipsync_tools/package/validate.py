"""Full check of a package: version, layout, shapes, dtypes, value ranges and every checksum."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import LipsyncError, PackageFormatError
from .manifest import SEGMENT_END_REASONS, SEGMENT_START_REASONS, SELECTIONS, Manifest, longest_run
from .reader import (
    HDF5_DAMAGE,
    _shape_symbols,
    damaged,
    decode_stored_frame,
    expected_shape,
    open_hdf5,
    read_manifest,
)
from .spec import DATASETS, DATASETS_BY_PATH, MEL_WINDOW

_HASH_BLOCK = 64  # rows hashed per read, so validating a long package needs little RAM


@dataclass(frozen=True)
class Problem:
    dataset: str  # dataset path, or "manifest" / "file"
    message: str
    exit_code: int = PackageFormatError.exit_code  # PackageVersionError's (12) for a newer major version

    def __str__(self) -> str:
        return f"{self.dataset}: {self.message}"


def _hash_dataset(ds: h5py.Dataset) -> str:
    h = hashlib.sha256()
    if ds.dtype.kind == "O":  # vlen frames: u32 LE length then bytes, per frame
        for i in range(ds.shape[0]):
            item = ds[i].tobytes()
            h.update(len(item).to_bytes(4, "little"))
            h.update(item)
        return h.hexdigest()
    if ds.ndim == 0 or ds.shape[0] == 0:
        h.update(np.ascontiguousarray(ds[...]).tobytes())
        return h.hexdigest()
    for start in range(0, ds.shape[0], _HASH_BLOCK):
        h.update(np.ascontiguousarray(ds[start : start + _HASH_BLOCK]).tobytes())
    return h.hexdigest()


def validate_package(path: str | Path) -> list[Problem]:
    """Return every problem found (an empty list means the package is valid).

    Problems with the file as a whole (missing, not HDF5, newer major version, unreadable manifest) are
    reported as a single problem, because nothing else can be checked without them.
    """
    path = Path(path)
    try:
        f = open_hdf5(path)
    except LipsyncError as exc:
        return [Problem("file", str(exc), exc.exit_code)]
    with f:
        try:
            manifest = read_manifest(f, path)
        except LipsyncError as exc:
            return [Problem("manifest", str(exc), exc.exit_code)]
        try:
            return _check_datasets(f, manifest)
        except LipsyncError as exc:
            return [Problem("file", str(exc), exc.exit_code)]
        except HDF5_DAMAGE as exc:
            return [Problem("file", str(damaged(path, exc)))]


def _check_datasets(f: h5py.File, manifest: Manifest) -> list[Problem]:
    problems: list[Problem] = []
    symbols = _shape_symbols(manifest, f)
    for spec in DATASETS:
        if spec.path not in f:
            if spec.required:
                problems.append(Problem(spec.path, "missing"))
            continue
        ds = f[spec.path]
        want_shape = expected_shape(spec.shape, symbols)
        if ds.shape != want_shape:
            problems.append(Problem(spec.path, f"shape {ds.shape}, expected {want_shape}"))
            continue
        if spec.dtype != "vlen-uint8" and ds.dtype != np.dtype(spec.dtype):
            problems.append(Problem(spec.path, f"dtype {ds.dtype}, expected {spec.dtype}"))
            continue
        if spec.hot and (ds.chunks is not None or ds.compression is not None):
            problems.append(Problem(spec.path, "stored chunked/compressed; hot datasets MUST be contiguous"))
        meta = manifest.datasets.get(spec.path)
        if meta is None:
            problems.append(Problem(spec.path, "no checksum in manifest.datasets"))
            continue
        if list(ds.shape) != meta.shape:
            problems.append(Problem(spec.path, f"shape {ds.shape} differs from manifest {meta.shape}"))
        actual = _hash_dataset(ds)
        if actual != meta.sha256:
            problems.append(
                Problem(
                    spec.path,
                    f"checksum mismatch: sha256 {actual[:16]}..., manifest says "
                    f"{meta.sha256[:16]}... (the data was changed or damaged)",
                )
            )
    for name in manifest.datasets:
        if name not in DATASETS_BY_PATH:
            problems.append(Problem(name, "listed in the manifest but not part of the format"))
    if not problems:
        problems.extend(_check_values(f, manifest))
    return problems


def _check_frames_decode(f: h5py.File, manifest: Manifest) -> list[Problem]:
    """Every stored frame decodes to the manifest's size (what a server checks when it loads)."""
    expected = (manifest.video.height, manifest.video.width, 3)
    frames = f["frames"]
    for i in range(frames.shape[0]):
        try:
            decode_stored_frame(np.asarray(frames[i], dtype=np.uint8), i, expected, manifest.frames.codec)
        except PackageFormatError as exc:
            return [Problem("frames", str(exc).removeprefix("dataset 'frames', ").removesuffix("."))]
    return []


def _check_values(f: h5py.File, manifest: Manifest) -> list[Problem]:
    problems: list[Problem] = []
    w, h = manifest.video.width, manifest.video.height
    rects = f["rects"][...]
    bad = (
        (rects[:, 0] < 0)
        | (rects[:, 1] < 0)
        | (rects[:, 2] > w)
        | (rects[:, 3] > h)
        | (rects[:, 2] <= rects[:, 0])
        | (rects[:, 3] <= rects[:, 1])
    )
    if bad.any():
        problems.append(
            Problem(
                "rects",
                f"{int(bad.sum())} rectangles lie outside the {w}x{h} frame or are "
                f"empty (first at frame {int(np.argmax(bad))})",
            )
        )
    not_square = (rects[:, 2] - rects[:, 0]) != (rects[:, 3] - rects[:, 1])
    if not_square.any():
        problems.append(
            Problem("rects", f"{int(not_square.sum())} rectangles are not square (first at frame "
                             f"{int(np.argmax(not_square))})")
        )
    problems.extend(_check_frames_decode(f, manifest))
    mel_index = f["audio/mel_index"][...]
    columns = manifest.audio.mel_columns
    bad_mel = (mel_index < 0) | (mel_index + MEL_WINDOW > columns)
    if bad_mel.any():
        problems.append(
            Problem("audio/mel_index", f"{int(bad_mel.sum())} windows fall outside the {columns} mel columns")
        )
    filled = f["filled"][...]
    if int(filled.sum()) != manifest.faces.filled_frames or not np.isin(filled, (0, 1)).all():
        problems.append(
            Problem(
                "filled",
                f"holds {int(filled.sum())} filled frames, manifest says {manifest.faces.filled_frames}",
            )
        )
    input_mask = f["masks/input"][...]
    if not np.isin(input_mask, (0, 1)).all():
        problems.append(Problem("masks/input", "values other than 0 and 1"))
    problems.extend(Problem("manifest", message) for message in footage_problems(manifest, filled))
    return problems


def footage_problems(manifest: Manifest, filled: np.ndarray) -> list[str]:
    """Contradictions inside the manifest's ``footage`` section (1.2) and between it and ``filled``."""
    footage = manifest.footage
    if footage is None:
        return []
    n = manifest.video.frame_count
    found: list[str] = []
    if not 0 <= footage.range_start <= footage.source_start < footage.source_end <= footage.range_end:
        found.append(
            f"footage ranges do not nest: analysed {footage.range_start}-{footage.range_end}, stored "
            f"{footage.source_start}-{footage.source_end}"
        )
    if footage.range_end > footage.source_frames:
        found.append(f"footage.range_end {footage.range_end} is past the {footage.source_frames} frames")
    if footage.source_end - footage.source_start != n:
        found.append(
            f"footage stores source frames {footage.source_start}-{footage.source_end} "
            f"({footage.source_end - footage.source_start}), but video.frame_count is {n}"
        )
    detected = n - int(filled.sum())
    if footage.detected_frames != detected:
        found.append(f"footage.detected_frames is {footage.detected_frames}; filled says {detected}")
    if footage.longest_fill != longest_run(filled):
        found.append(f"footage.longest_fill is {footage.longest_fill}; filled says {longest_run(filled)}")
    if footage.selection not in SELECTIONS:
        found.append(f"footage.selection is {footage.selection!r}; expected one of {', '.join(SELECTIONS)}")
    if not 0 <= footage.kept_segment < len(footage.segments):
        found.append(f"footage.kept_segment {footage.kept_segment} is not one of the {len(footage.segments)}")
    else:
        kept = footage.segments[footage.kept_segment]
        if (kept.start, kept.end) != (footage.source_start, footage.source_end):
            found.append(
                f"the kept segment is {kept.start}-{kept.end} but the stored range is "
                f"{footage.source_start}-{footage.source_end}"
            )
    if footage.segments_found < len(footage.segments):
        found.append(f"footage lists {len(footage.segments)} segments, found {footage.segments_found}")
    previous_end = footage.range_start
    for i, segment in enumerate(footage.segments):
        where = f"footage.segments[{i}]"
        if not previous_end <= segment.start < segment.end <= footage.range_end:
            found.append(f"{where} spans {segment.start}-{segment.end}: out of order or outside the range")
        if segment.start_reason not in SEGMENT_START_REASONS or segment.end_reason not in SEGMENT_END_REASONS:
            found.append(f"{where} has reasons {segment.start_reason!r}/{segment.end_reason!r}")
        if not 0 < segment.detected_frames <= segment.frames:
            found.append(f"{where} has {segment.detected_frames} detected frames in {segment.frames}")
        previous_end = max(previous_end, segment.end)
    return found

