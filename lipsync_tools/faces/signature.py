"""An appearance signature of one found face, to tell a different face from the same face moving or talking.

Segment analysis must notice when the face in the tracked place changes identity (a cut between two people
framed alike) without face-recognition weights, which cannot be shipped or downloaded. The signature is the
classic texture descriptor of Ahonen et al. (2006): uniform local binary patterns (LBP, 8 neighbours at
radius 1; the 58 uniform codes plus one bin for all others = 59 bins) counted in a 4x4 grid of blocks over a
64x64 grayscale crop of the inner face. LBP codes compare each pixel with its neighbours only, so they do
not change with brightness or contrast; the grid keeps where on the face each texture is (eyes, nose,
mouth); blocks of 15x15 codes tolerate a shift of a few pixels between frames.

The crop is a square centred on the face box, of side 0.8 x the box's larger side (eyes, nose, mouth, little
background or hair), with edge pixels replicated outside the frame so a face at the edge still gives a full
crop. A crop of up to 128 px is cut with ``cv2.warpAffine`` straight to 64x64 (bilinear, exact to a
fraction of a pixel, ``BORDER_REPLICATE``). A larger one is averaged down with ``cv2.resize(INTER_AREA)``
instead: ``warpAffine`` samples bilinearly whatever flag it is given (it treats ``INTER_AREA`` as linear),
which would alias fine texture into the codes, and warping to a large intermediate size cost 0.3-0.7 ms.
The 64x64 crop gives a 62x62 code image, whose first 60x60 codes make the 16 blocks of 15x15 = 225 codes,
so every count fits in a uint8.

:func:`signature_distance` is the mean over blocks of the chi-square distance between the blocks'
normalised histograms, between 0 (identical) and 1 (no code in common).

``SAME_FACE_MAX_DISTANCE`` was calibrated with this implementation on faces found by the MediaPipe backend
(``detect_faces`` with default options) in frames of 320x240:

* the same face, consecutive frames: the carphone talking head (``tests/samples.carphone_path()``, 176x144
  upscaled, 119 pairs) median 0.080, max 0.111; the drifting astronaut photo (``samples.astronaut_frames``,
  49 pairs) median 0.061, max 0.072 (max 0.098 after H.264 encoding); Grace Hopper's photo (matplotlib's
  sample data) drifting the same way, median 0.080, max 0.108. At 960x720 (the ``INTER_AREA`` path):
  carphone max 0.112, astronaut max 0.088. Darkening to 60 % or adding 40 grey levels: at most 0.042.
* the same face further apart, as a talking head turns and speaks: carphone frames 2 apart max 0.155,
  5 apart max 0.186, 10 apart max 0.252, 30 apart max 0.324.
* different faces, every frame of one clip against every frame of the other: astronaut and carphone min
  0.327, median 0.385 (consecutive frames across a cut between them: 0.33-0.42); Hopper and carphone min
  0.269, median 0.341; Hopper and astronaut min 0.282, median 0.314.

The threshold 0.2 lies between the largest consecutive same-face distance (0.11) and the smallest
different-face one (0.27), a little below their midpoint because taking two people for one (two faces in
one segment) is worse than splitting one person's segment. It is meant for frames close together (up to
about 5 frames apart): a talking face that turns drifts past it within a third of a second (10 frames), so
compare each frame with its recent predecessor, not with a reference taken long before. An earlier
prototype measured same face up to 0.17 and different faces from 0.41 and proposed 0.3; with this
implementation Hopper against the carphone man and the astronaut goes down to 0.27-0.28, under 0.3.

Cost, measured on one core (median of 2000 calls on a decoded carphone frame): ``face_signature`` 0.07 ms
at 320x240 (crop 78 px) and 0.14 ms at 1280x720 (crop 266 px); ``signature_distance`` 0.02 ms.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import UsageError

__all__ = ["SAME_FACE_MAX_DISTANCE", "SIGNATURE_SIZE", "face_signature", "signature_distance"]

GRID = 4  # blocks per side
BINS = 59  # 58 uniform 8-bit LBP codes + 1 bin for every non-uniform code
SIGNATURE_SIZE = GRID * GRID * BINS  # uint8 values per signature
SAME_FACE_MAX_DISTANCE = 0.2  # for frames up to ~5 apart; the module docstring has the measurements

CROP = 64  # side of the grayscale crop, pixels
CROP_FRACTION = 0.8  # crop side as a fraction of the face box's larger side
MIN_CROP_SIDE = 8.0  # pixels in the frame; a degenerate box still gives a crop
# Crops up to twice CROP are warped straight to CROP (bilinear, exact to a fraction of a pixel); larger ones
# are averaged down (INTER_AREA), which bilinear sampling would alias and which costs less than warping them.
_WARP_MAX_SIDE = 2.0 * CROP
_BLOCK = (CROP - 2) // GRID  # 15 codes per block side (the code image is CROP - 2 square): 225 fit a uint8


def _uniform_lut() -> np.ndarray:
    """Map each 8-bit LBP code to its bin: uniform codes (at most 2 circular 0/1 transitions) to 0..57 in
    increasing code order, all others to 58."""
    lut = np.full(256, BINS - 1, np.intp)
    next_bin = 0
    for code in range(256):
        rotated = ((code >> 1) | ((code & 1) << 7)) & 0xFF
        if bin(code ^ rotated).count("1") <= 2:
            lut[code] = next_bin
            next_bin += 1
    if next_bin != BINS - 1:  # pragma: no cover - a property of 8-bit patterns
        raise RuntimeError(f"found {next_bin} uniform LBP codes; expected {BINS - 1}")
    return lut


_LUT = _uniform_lut()
# Block index (0..15, row-major) of each code in the 60x60 used part of the code image, times BINS: adding
# a code's bin gives its slot in the signature, so one bincount makes all 16 histograms.
_BLOCK_OFFSET = (
    (np.arange(GRID * _BLOCK) // _BLOCK)[:, None] * GRID + (np.arange(GRID * _BLOCK) // _BLOCK)[None, :]
) * BINS
# Neighbour offsets (dy, dx) of the 8 LBP bits, clockwise from the top-left.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def face_signature(frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The appearance signature of the face in ``box`` on ``frame_bgr``.

    ``frame_bgr`` is ``(H, W, 3)`` uint8 BGR; ``box`` is ``(x0, y0, x1, y1)`` in frame pixels (a face
    observation's ``box``). A box partly or wholly outside the frame uses replicated edge pixels; a box of
    zero or negative size gets a crop of 8 pixels; a box with a NaN or infinite coordinate is read as an
    8-pixel box at the frame centre (the signature is then meaningless but nothing fails).

    Returns uint8 ``(SIGNATURE_SIZE,)``: 16 blocks (row-major over the crop) of 59 LBP-bin counts each,
    every block summing to 225. Raises :class:`UsageError` for a frame that is not ``(H, W, 3)`` uint8 or a
    box that is not 4 numbers.
    """
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise UsageError(
            f"frame is {frame_bgr.dtype} {frame_bgr.shape}; expected a (height, width, 3) uint8 BGR image"
        )
    corners = np.asarray(box, dtype=np.float64)
    if corners.size != 4:
        raise UsageError(f"face box has shape {corners.shape}; expected 4 values (x0, y0, x1, y1)")
    x0, y0, x1, y1 = (float(v) for v in corners.reshape(4))
    if all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = max(CROP_FRACTION * max(x1 - x0, y1 - y0), MIN_CROP_SIDE)
    else:
        cx, cy, side = frame_bgr.shape[1] / 2, frame_bgr.shape[0] / 2, MIN_CROP_SIDE

    # A box far larger than the frame (nonsense, but possible input) is warped too: padding it out to an
    # explicit square would allocate without bound.
    if side <= _WARP_MAX_SIDE or side > 2 * max(frame_bgr.shape[:2]):
        crop = _warp_crop(frame_bgr, cx - side / 2, cy - side / 2, side)
    else:
        crop = _area_crop(frame_bgr, cx, cy, side)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)

    centre = gray[1:-1, 1:-1]
    codes = np.zeros(centre.shape, np.intp)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        neighbour = gray[1 + dy : CROP - 1 + dy, 1 + dx : CROP - 1 + dx]
        codes |= (neighbour >= centre).astype(np.intp) << bit
    used = GRID * _BLOCK
    slots = _LUT[codes[:used, :used]] + _BLOCK_OFFSET
    return np.bincount(slots.ravel(), minlength=SIGNATURE_SIZE).astype(np.uint8)


def _warp_crop(frame_bgr: np.ndarray, left: float, top: float, side: float) -> np.ndarray:
    """The square ``[left, left + side)`` x ``[top, top + side)`` of the frame resampled to CROP x CROP
    bilinearly, to a fraction of a pixel, edge pixels replicated outside the frame."""
    scale = CROP / side
    # Frame pixel x covers [x, x + 1) and crop pixel u covers [u, u + 1), with u = (x - left) * scale.
    matrix = np.array(
        [[scale, 0.0, scale * (0.5 - left) - 0.5], [0.0, scale, scale * (0.5 - top) - 0.5]], np.float64
    )
    return cv2.warpAffine(
        frame_bgr, matrix, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _area_crop(frame_bgr: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The square of ``side`` centred on ``(cx, cy)``, edge pixels replicated outside the frame, averaged
    down to CROP x CROP: first by a whole factor ``k`` (OpenCV's fast ``INTER_AREA`` path, several times
    quicker than its general one), then by the remaining factor of at most 2.

    The square is snapped to whole pixels and its side to a multiple of ``k``: the centre moves by at most
    half a frame pixel and the side by at most ``k / 2`` pixels (under 1 %), both under a quarter of a crop
    pixel.
    """
    height, width = frame_bgr.shape[:2]
    k = int(side // CROP)
    n = k * max(round(side / k), CROP)
    x0, y0 = round(cx - n / 2), round(cy - n / 2)
    rows = _clipped_span(y0, n, height)
    cols = _clipped_span(x0, n, width)
    region = frame_bgr[rows[0] : rows[1], cols[0] : cols[1]]
    if region.shape[0] != n or region.shape[1] != n:  # partly or wholly outside the frame
        region = cv2.copyMakeBorder(region, *rows[2:], *cols[2:], borderType=cv2.BORDER_REPLICATE)
    small = cv2.resize(region, (n // k, n // k), interpolation=cv2.INTER_AREA)
    if n // k == CROP:
        return small
    return cv2.resize(small, (CROP, CROP), interpolation=cv2.INTER_AREA)


def _clipped_span(start: int, n: int, limit: int) -> tuple[int, int, int, int]:
    """``(begin, end, pad_before, pad_after)``: the part of ``[start, start + n)`` inside ``[0, limit)``
    (at least the nearest one pixel when none is inside), and how many replicated pixels complete it."""
    begin = min(max(start, 0), limit - 1)
    end = max(min(start + n, limit), begin + 1)
    before = min(max(begin - start, 0), n - (end - begin))
    return begin, end, before, n - (end - begin) - before


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """How different two signatures are: 0 = identical, 1 = no LBP code in common in any block.

    The mean over the 16 blocks of the chi-square distance ``0.5 * sum((p - q)^2 / (p + q))`` between the
    blocks' histograms normalised to sum 1 (bins empty in both count 0). Compare with
    :data:`SAME_FACE_MAX_DISTANCE`. Raises :class:`UsageError` unless both have ``SIGNATURE_SIZE`` values.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.size != SIGNATURE_SIZE or b.size != SIGNATURE_SIZE:
        raise UsageError(
            f"signatures have {a.size} and {b.size} values; expected {SIGNATURE_SIZE} each "
            "(made by face_signature)"
        )
    p = a.reshape(GRID * GRID, BINS).astype(np.float64)
    q = b.reshape(GRID * GRID, BINS).astype(np.float64)
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1.0)
    q /= np.maximum(q.sum(axis=1, keepdims=True), 1.0)
    total = p + q
    diff = p - q
    chi = np.divide(diff * diff, total, out=np.zeros_like(total), where=total > 0)
    return float(0.5 * chi.sum(axis=1).mean())
