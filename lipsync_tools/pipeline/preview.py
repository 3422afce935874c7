"""A contact sheet of a package, so a person can see at a glance whether it is right.

Each row is one sampled frame: the full frame with the crop rectangle (green; red if the face was filled
from neighbours), the landmarks and the blend mask tinted in; then the crop at the same height with the
blend mask; then what the model sees (the crop with its lower half hidden).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import LipsyncError, UsageError
from ..media.images import decode_image
from ..package.reader import Package, open_package, read_encoded_frames
from ..package.writer import check_output_path

ROW_HEIGHT = 240
_GREEN = (80, 200, 80)
_RED = (60, 60, 230)
_LANDMARK = (255, 200, 0)


def sample_indices(n_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from first to last."""
    if count < 1:
        raise UsageError(f"--frames is {count}; expected at least 1")
    count = min(count, n_frames)
    return sorted({round(i) for i in np.linspace(0, n_frames - 1, count)})


def _tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    alpha = (mask.astype(np.float32) / 255.0 * 0.45)[..., None]
    return (image * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)


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
    label = f"frame {index}" + ("  (filled)" if filled else "")
    cv2.putText(row, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(
        row,
        label,
        (8, 22),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.6,
        _RED if filled else (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return row


def _gap() -> np.ndarray:
    return np.full((ROW_HEIGHT, 6, 3), 32, np.uint8)


def make_contact_sheet(
    package_path: str | Path, output: str | Path, *, frames: int = 6, force: bool = False
) -> Path:
    """Write a PNG contact sheet of ``frames`` sampled frames of the package to ``output``."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"-o {output} must end in .png")
    check_output_path(output, force)
    package = open_package(package_path, load_frames=False)  # a long package's frames are gigabytes
    indices = sample_indices(package.n_frames, frames)
    encoded = read_encoded_frames(package, indices)
    rows = [render_row(package, i, data) for i, data in zip(indices, encoded, strict=True)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=32) for r in rows]
    sheet = np.concatenate(rows, axis=0)
    ok, data = cv2.imencode(".png", sheet)
    if not ok:
        raise LipsyncError(f"could not encode the contact sheet for {output}")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output
