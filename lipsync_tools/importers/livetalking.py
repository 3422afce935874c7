"""LiveTalking avatar folders (lipku/LiveTalking, ``data/avatars/<id>/``), as its ``genavatar.py`` scripts
write them for its wav2lip and ultralight avatars.

Reads::

    full_imgs/NNNNNNNN.png   the video's frames (.jpg also accepted)
    face_imgs/NNNNNNNN.png   the face crops, one per frame, any size (resized to the family's crop size)
    coords.pkl               a pickled list with one rectangle per frame (order below)
    ultralight.pth           optional: the avatar's Ultralight network (the family is ultralight-160 then)

and the speech from ``--audio FILE`` (the folder holds none). The frame rate is 25 unless ``--fps`` says
otherwise: LiveTalking plays its avatars at 25 fps.

The order of each rectangle in ``coords.pkl`` depends on which script wrote it (checked in LiveTalking's
code): ``avatars/wav2lip/genavatar.py`` appends ``(y1, y2, x1, x2)`` and ``wav2lip_avatar.py`` unpacks
``y1, y2, x1, x2 = bbox``; ``avatars/ultralight/genavatar.py`` appends ``(xmin, ymin, xmin + w, ymin + h)``
and ``ultralight_avatar.py`` unpacks ``x1, y1, x2, y2 = bbox``. So the wav2lip family reads
``(y1, y2, x1, x2)`` and the UNet families ``(x1, y1, x2, y2)``. Ultralight's rectangles are square
(SyncTalk_2D's box rule on PFLD landmarks) and its crops are used as they are. Wav2lip's are face-detector
boxes, not square, squashed to 96x96 by the script; the engine pastes crops back into squares, and the
Wav2Lip network is not per-avatar, so each box becomes the square of its larger side around its centre
(shifted inside the frame) and the crop is cut again from the full frame (the manifest counts those frames).

``coords.pkl`` is read with :class:`CoordsUnpickler`, which builds nothing but lists, tuples and numbers:
a pickle naming any other global (``os.system``, ...) is refused before anything runs. Ultralight's
rectangles hold NumPy integers (its landmarks are ``np.int32``), so NumPy's numeric scalars are rebuilt by
a checked constructor of our own, never by NumPy's unpickling functions.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImportFormatError, NoAudioError
from ..pipeline.build import file_sha256
from ..pipeline.crop import crop_face
from .base import (
    FRAME_EXTENSIONS,
    AvatarData,
    AvatarFolder,
    FrameRecord,
    ImportOptions,
    check_counts,
    check_rects,
    choose_model,
    decode_image_file,
    frame_rate,
)

LAYOUT = "a LiveTalking avatar"
DEFAULT_FPS = 25.0
_FRAMES_HOLD = "its video frames as full_imgs/NNNNNNNN.png"
_FACES_HOLD = "its face crops as face_imgs/NNNNNNNN.png, one per frame"
_COORDS_HOLD = "its crop rectangles as coords.pkl (a pickled list, one rectangle per frame)"

_NUMPY_SCALAR_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_NUMERIC_DTYPE = re.compile(r"[iuf][1248]\Z")


def _numpy_dtype(name: object, align: object = False, copy: object = True) -> np.dtype[Any]:
    """``numpy.dtype`` for pickles: numeric type codes only, always a fresh object (pickle's BUILD step then
    sets its byte order; on a shared dtype it would change NumPy's own)."""
    if not isinstance(name, str) or not _NUMERIC_DTYPE.match(name):
        raise pickle.UnpicklingError(f"numpy dtype {str(name)[:20]!r} is not a plain number type")
    return np.dtype(name, align=False, copy=True)


def _numpy_scalar(dtype: object, data: object = b"") -> int | float:
    """``numpy.core.multiarray.scalar`` for pickles: one number of a numeric dtype, as a Python number."""
    if not (
        isinstance(dtype, np.dtype)
        and dtype.kind in "iuf"
        and isinstance(data, bytes)
        and len(data) == dtype.itemsize
    ):
        raise pickle.UnpicklingError("numpy scalar is not a plain number")
    value: int | float = np.frombuffer(data, dtype)[0].item()
    return value


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` for pickles: how protocols 0-2 spell a ``bytes`` value (a scalar's raw data)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or len(text) > 64:
        raise pickle.UnpicklingError("_codecs.encode is used for more than a scalar's bytes")
    return text.encode("latin1")


class CoordsUnpickler(pickle.Unpickler):
    """Unpickle lists, tuples, ints and floats (and NumPy numeric scalars, rebuilt as Python numbers; with
    pickle protocols 0-2 their raw bytes come through ``_codecs.encode``, allowed for short latin-1 text).

    Every other global a pickle names is refused in :meth:`find_class`, before it could be called; the
    pickle opcodes that build lists, tuples and numbers need no global at all.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_SCALAR_GLOBALS:
            return _numpy_scalar
        if (module, name) == ("numpy", "dtype"):
            return _numpy_dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a list of rectangles never needs")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds persistent references, which a list of rectangles never needs")


def load_coords(path: Path, data: bytes) -> list[list[float]]:
    """The rectangles of ``coords.pkl`` (its bytes ``data``): a list of 4-number lists, as stored (no
    reordering). Raises :class:`ImportFormatError` for anything else, a refused global included."""
    try:
        value = CoordsUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any failure of an untrusted pickle is a format error, one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportFormatError(
            f"{path} was refused ({reason}); expected {_COORDS_HOLD} of numbers only"
        ) from None
    if not isinstance(value, list | tuple):
        raise ImportFormatError(f"{path} holds a {type(value).__name__}; expected {_COORDS_HOLD}")
    rects = []
    for i, item in enumerate(value):
        if not (
            isinstance(item, list | tuple)
            and len(item) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)
        ):
            raise ImportFormatError(f"{path} entry {i} is {str(item)[:60]}; expected four numbers")
        rects.append([float(v) for v in item])
    return rects


def read_livetalking(
    folder: Path,
    *,
    family: str | None,
    audio_mode: str | None,
    checkpoint: Path | None,
    audio: Path | None,
    options: ImportOptions,
) -> AvatarData:
    """Read and check a LiveTalking avatar folder (see the module docstring)."""
    avatar = AvatarFolder(folder, LAYOUT)
    if (folder / "latents.pt").exists() and not (folder / "face_imgs").is_dir():
        raise ImportFormatError(
            f"{folder} is a LiveTalking MuseTalk avatar (latents.pt, no face_imgs/); lipsync import reads "
            "LiveTalking's wav2lip and ultralight avatars"
        )
    images = avatar.numbered_files("full_imgs", tuple(FRAME_EXTENSIONS), _FRAMES_HOLD)
    faces = avatar.numbered_files("face_imgs", tuple(FRAME_EXTENSIONS), _FACES_HOLD)
    coords_path = avatar.require_file("coords.pkl", _COORDS_HOLD)
    coords = load_coords(coords_path, avatar.read_bytes(coords_path, _COORDS_HOLD))
    check_counts(
        [
            (len(images), str(folder / "full_imgs")),
            (len(faces), str(folder / "face_imgs")),
            (len(coords), str(coords_path)),
        ]
    )
    if audio is None:
        raise NoAudioError(
            f"{folder} is a LiveTalking avatar, which holds no audio; pass --audio FILE with the speech of "
            "the video it was made from"
        )
    bundled = folder / "ultralight.pth"
    checkpoint = checkpoint or (bundled if bundled.is_file() else None)
    fam, mode = choose_model(
        checkpoint,
        family,
        audio_mode,
        fallback_family="ultralight-160" if bundled.is_file() else "wav2lip",
        feature_modes=(),
        check=options.check_checkpoint,
    )

    first = decode_image_file(images[0], images[0].read_bytes(), _FRAMES_HOLD)
    height, width = first.shape[:2]
    raw = np.asarray(coords, np.float64)
    if fam.name == "wav2lip":
        order = "(y1, y2, x1, x2)"
        rects_xyxy = raw[:, [2, 0, 3, 1]]
    else:
        order = "(x1, y1, x2, y2)"
        rects_xyxy = raw
    source = f"{coords_path} (read as {order}, LiveTalking's {fam.name} order)"
    square = fam.name != "wav2lip"
    rects = check_rects(rects_xyxy, width, height, source, square=square)
    recut = np.zeros(len(rects), bool)
    if not square:
        squared = _squares(rects, width, height)
        recut = (squared != rects).any(axis=1)
        rects = squared

    def frames() -> Iterator[FrameRecord]:
        for index, (path, face_path) in enumerate(zip(images, faces, strict=True)):
            data = path.read_bytes()
            image = decode_image_file(path, data, _FRAMES_HOLD)
            if image.shape[:2] != (height, width):
                raise ImportFormatError(
                    f"{path} is {image.shape[1]}x{image.shape[0]}; frame 0 ({images[0].name}) is "
                    f"{width}x{height}: every frame of {folder / 'full_imgs'} must have one size"
                )
            if recut[index]:
                crop = crop_face(image, rects[index], fam.crop_size, "area")
            else:
                crop = decode_image_file(face_path, face_path.read_bytes(), _FACES_HOLD)
            yield FrameRecord(
                image=image, file_bytes=data, file_codec=FRAME_EXTENSIONS[path.suffix.lower()], crop=crop
            )

    return AvatarData(
        kind="livetalking",
        folder=folder,
        n_frames=len(images),
        width=width,
        height=height,
        frame_rate=frame_rate(options.fps or DEFAULT_FPS),
        frames=frames,
        rects=rects,
        landmarks=None,
        scheme=None,
        box_rule=fam.box_rule,
        crop_interpolation="area",
        audio=audio,
        source_audio=file_sha256(audio),
        source_video=None,
        source_name="full_imgs/",
        features=None,
        features_file=None,
        checkpoint=checkpoint,
        family=fam,
        audio_mode=mode,
        notes={"coords_order": order, "recut_square_crops": int(recut.sum())},
    )


def _squares(rects: np.ndarray, width: int, height: int) -> np.ndarray:
    """Each rectangle as the square of its larger side around its centre, shifted inside the frame."""
    side = np.minimum(np.maximum(rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1]), min(width, height))
    cx = (rects[:, 0] + rects[:, 2]) // 2
    cy = (rects[:, 1] + rects[:, 3]) // 2
    x0 = np.clip(cx - side // 2, 0, width - side)
    y0 = np.clip(cy - side // 2, 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)
