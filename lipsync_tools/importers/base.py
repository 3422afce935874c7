"""What every importer shares: options, result, kind detection, folder reading, model choice, the writer.

An importer turns an avatar folder that another tool prepared into a sanders package, keeping *that* tool's
crop rectangles and crops: a per-avatar model (SyncTalk_2D, Ultralight) only works on the crops it was
trained on, so nothing is re-detected. Each kind's module reads its folder into an :class:`AvatarData` (all
cheap checks: files present, counts agreeing, rectangles inside the frame) and
:func:`write_avatar_package` streams the frames into the package.

Choices every kind shares, recorded here once:

* **Kinds without landmarks** (LiveTalking avatars, mp4 packages without ``landmarks/``) store the four
  corners of each crop rectangle as their landmarks, under the scheme name :data:`RECT_CORNERS` (4 points,
  clockwise from the top-left: ``(x0, y0), (x1, y0), (x1, y1), (x0, y1)``); the format needs at least one
  point per frame, and corners are what a preview can draw truthfully.
* **Their blend mask** is :func:`default_blend_mask`: the family's usual lower face, drawn through
  :func:`~lipsync_tools.pipeline.masks.blend_mask` from a fixed template in crop coordinates, the same for
  every frame.
* **source_video** is the SHA-256 of the main input file (an mp4 package's ``full_body_video.mp4``); for
  folders of images it is the digest of the frame files in frame order, each as a little-endian u32 length
  then its bytes (the package's own ``frames`` checksum rule), named after the folder (``full_body_img/``),
  with the files' total size. When frames are stored as they are, the two digests are equal.
* Frame files already in the package's codec (``.jpg`` for JPEG, ``.png`` for PNG) are stored byte for byte
  (no second lossy encode); others are encoded with the options' codec and quality.
* Nothing is filled or smoothed: ``filled`` is all 0, ``boxes`` are the rectangles as float32.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import cv2
import numpy as np

from .._registry import load_attr
from .._version import __version__
from ..errors import CheckpointError, CorruptMediaError, ImportFormatError, InputNotFoundError, UsageError
from ..faces.base import LandmarkScheme
from ..media.audio import load_audio
from ..media.images import decode_image, encode_image
from ..models.audio_features import AudioEncoderChoice
from ..models.families import get_family
from ..models.family import AudioMode, ModelFamily
from ..package.manifest import (
    CropMeta,
    FacesMeta,
    FramesMeta,
    Manifest,
    SourceFile,
    ToolMeta,
    VideoMeta,
)
from ..package.spec import AUDIO_SAMPLE_RATE, FILE_SUFFIX, MEL_WINDOW
from ..package.writer import PackageWriter, check_output_path
from ..pipeline.build import check_frame_storage, model_meta
from ..pipeline.crop import crop_face, to_crop_coordinates
from ..pipeline.features import audio_features, audio_meta
from ..pipeline.masks import MaskOptions, blend_mask, model_input_mask
from ..progress import NullProgress, Progress

AvatarKind = Literal["synctalk", "mp4_package", "livetalking"]

RECT_CORNERS = "rect-corners"
"""Landmark scheme name of kinds without landmarks: the 4 corners of each crop rectangle."""

MAX_SIDE_FILE_BYTES = 64 * 1024 * 1024
"""Largest JSON or pickle side file read (rectangles, package_info.json, coords.pkl): far above real ones."""

FRAME_EXTENSIONS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """How an avatar folder becomes a package (the model family and audio mode are arguments of
    :func:`~lipsync_tools.importers.import_avatar`).

    ``fps``: the video rate; ``None`` takes the folder's (an mp4's own rate, ``package_info.json``'s
    ``fps``) and else 25, the rate of SyncTalk_2D datasets and LiveTalking avatars. ``frame_codec`` and
    ``frame_quality``: how frames that are not already in that codec are encoded (JPEG quality 1..100, PNG
    level 0..9). ``feather``: Gaussian sigma of the blend masks as a fraction of the crop side.
    ``check_checkpoint``: read the checkpoint and refuse it unless its keys and shapes are exactly those of
    a known network (and of ``family`` when given); with ``False`` and an explicit family it is embedded
    as it is, unread.
    """

    fps: float | None = None
    frame_codec: str = "jpeg"
    frame_quality: int = 95
    feather: float = 0.06
    check_checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.fps is not None and not 1.0 <= self.fps <= 240.0:
            raise UsageError(
                f"--fps is {self.fps}; expected a frame rate in 1..240 (SyncTalk_2D datasets: 25)"
            )
        check_frame_storage(self.frame_codec, self.frame_quality)
        MaskOptions(feather=self.feather)


@dataclass
class ImportResult:
    """What an import produced."""

    folder: Path
    output: Path
    kind: AvatarKind
    manifest: Manifest
    total_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        model = m.model
        return {
            "folder": str(self.folder),
            "output": str(self.output),
            "ok": True,
            "kind": self.kind,
            "frames": m.video.frame_count,
            "fps": m.video.fps,
            "width": m.video.width,
            "height": m.video.height,
            "family": model.family if model is not None else "wav2lip",
            "audio_mode": model.audio_mode if model is not None else "mel",
            "audio_features": model.features if model is not None else "none",
            "audio_encoder": model.audio_encoder if model is not None else "none",
            "crop_size": m.crop.size,
            "landmarks": m.faces.scheme,
            "checkpoint": m.build_options.get("checkpoint"),
            "audio_seconds": round(m.audio.samples / m.audio.sample_rate, 3),
            "package_bytes": self.output.stat().st_size,
            "total_seconds": round(self.total_seconds, 4),
        }


# -- kind detection --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindSpec:
    """One folder layout: its name, how to recognise it, and the ``"module:function"`` that reads it."""

    name: AvatarKind
    title: str
    markers: tuple[str, ...]  # any of these present (file or folder) means this layout
    reader: str


KINDS: tuple[KindSpec, ...] = (
    KindSpec(
        "mp4_package",
        "an mp4 video package (package_info.json + full_body_video.mp4)",
        ("package_info.json", "full_body_video.mp4"),
        "lipsync_tools.importers.mp4_package:read_mp4_package",
    ),
    KindSpec(
        "synctalk",
        "a SyncTalk_2D/Ultralight dataset (full_body_img/ + landmarks/)",
        ("full_body_img",),
        "lipsync_tools.importers.synctalk:read_synctalk",
    ),
    KindSpec(
        "livetalking",
        "a LiveTalking avatar (full_imgs/ + face_imgs/ + coords.pkl)",
        ("full_imgs", "coords.pkl"),
        "lipsync_tools.importers.livetalking:read_livetalking",
    ),
)
"""The layouts ``lipsync import`` knows, in the order they are tried."""


def detect_kind(folder: Path) -> AvatarKind:
    """Which layout ``folder`` is (the first of :data:`KINDS` whose marker it holds).

    Raises :class:`InputNotFoundError` when ``folder`` is not a folder and :class:`ImportFormatError`
    naming every layout looked for when none matches.
    """
    if not folder.exists():
        raise InputNotFoundError(f"avatar folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise InputNotFoundError(
            f"{folder} is a file; `lipsync import` takes an avatar folder (to build from a video, use "
            "`lipsync build-package`)"
        )
    for spec in KINDS:
        if any((folder / marker).exists() for marker in spec.markers):
            return spec.name
    looked_for = "; ".join(spec.title for spec in KINDS)
    raise ImportFormatError(f"{folder} is not an avatar folder lipsync import knows: looked for {looked_for}")


def default_output(folder: Path) -> Path:
    """``path/to/avatar/`` -> ``path/to/avatar.sanders``."""
    folder = folder.resolve() if folder.name in ("", ".", "..") else folder
    return folder.with_name(folder.name + FILE_SUFFIX)


# -- folder reading ------------------------------------------------------------------------------------
class AvatarFolder:
    """Read an avatar folder's parts; every problem is one :class:`ImportFormatError` line naming the file
    and what it should hold. ``layout`` names the folder kind in those lines ("a SyncTalk_2D dataset")."""

    def __init__(self, root: Path, layout: str) -> None:
        self.root = root
        self.layout = layout

    def path(self, relative: str) -> Path:
        return self.root / relative

    def missing(self, relative: str, holds: str) -> ImportFormatError:
        """``relative`` ending in "/" is a folder, and is shown so."""
        shown = f"{self.path(relative)}{'/' if relative.endswith('/') else ''}"
        return ImportFormatError(f"{shown} is missing: {self.layout} needs {holds}")

    def require_file(self, relative: str, holds: str) -> Path:
        path = self.path(relative)
        if not path.is_file():
            raise self.missing(relative, holds)
        return path

    def require_dir(self, relative: str, holds: str) -> Path:
        path = self.path(relative)
        if not path.is_dir():
            raise self.missing(relative + "/", holds)
        return path

    def numbered_files(self, relative: str, extensions: Sequence[str], holds: str) -> list[Path]:
        """Files ``relative/N.ext`` (``N`` decimal, zero-padded or not) for ``N = 0 .. count-1``, in order.

        Files whose stem is not a number are ignored. Raises when the folder is missing or empty, when a
        number is given twice (``0.jpg`` and ``0.png``) or when one is missing.
        """
        folder = self.require_dir(relative, holds)
        found: dict[int, Path] = {}
        for entry in folder.iterdir():
            if entry.suffix.lower() not in extensions or not entry.stem.isdigit() or not entry.is_file():
                continue
            index = int(entry.stem)
            if index in found:
                raise ImportFormatError(
                    f"{found[index]} and {entry} are both frame {index}; {self.layout} needs one file per "
                    "frame: remove one"
                )
            found[index] = entry
        kinds = "/".join(extensions)
        if not found:
            raise ImportFormatError(f"{folder} holds no numbered {kinds} files: {self.layout} needs {holds}")
        for index in range(len(found)):
            if index not in found:
                raise ImportFormatError(
                    f"{folder / f'{index}{extensions[0]}'} is missing: {self.layout} numbers its frames "
                    f"0..{len(found) - 1} without gaps, but {folder} holds {len(found)} files up to "
                    f"{max(found)}"
                )
        return [found[i] for i in range(len(found))]

    def read_json(self, path: Path, holds: str) -> Any:
        data = self._read_bytes(path, holds)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImportFormatError(f"{path} is not valid JSON ({exc}); expected {holds}") from exc

    def read_npy(self, path: Path, holds: str) -> np.ndarray:
        """A ``.npy`` array as float32 (numeric arrays only: pickled object arrays are refused)."""
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImportFormatError(
                f"{path} is not a readable NumPy .npy array ({reason}); expected {holds}"
            ) from exc
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
            raise ImportFormatError(
                f"{path} holds {getattr(array, 'dtype', type(array))} data; expected {holds}"
            )
        values = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ImportFormatError(f"{path} holds NaN or infinite values; expected {holds}")
        return values

    def read_bytes(self, path: Path, holds: str) -> bytes:
        return self._read_bytes(path, holds)

    def _read_bytes(self, path: Path, holds: str) -> bytes:
        size = path.stat().st_size
        if size > MAX_SIDE_FILE_BYTES:
            raise ImportFormatError(
                f"{path} is {size} bytes; expected {holds} (at most {MAX_SIDE_FILE_BYTES} bytes)"
            )
        return path.read_bytes()


_LMS_LINE = re.compile(rb"\S+")


def read_lms(path: Path, num_points: int = 110) -> np.ndarray:
    """One PFLD landmarks file (``num_points`` lines ``"x y"``) -> float32 ``(num_points, 2)``."""
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImportFormatError(
            f"{path} is missing: a SyncTalk_2D dataset needs one landmarks file per frame "
            f"({num_points} lines 'x y')"
        ) from exc
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) != num_points:
        raise ImportFormatError(
            f"{path} has {len(rows)} lines; expected {num_points} lines 'x y' (PFLD landmarks, one point "
            "a line)"
        )
    points = np.empty((num_points, 2), np.float32)
    for i, row in enumerate(rows):
        values = _LMS_LINE.findall(row)
        try:
            if len(values) != 2:
                raise ValueError
            points[i] = (float(values[0]), float(values[1]))
        except ValueError:
            shown = row[:40].decode("utf-8", "replace")
            raise ImportFormatError(
                f"{path} line {i + 1} is {shown!r}; expected two numbers 'x y' (PFLD landmarks)"
            ) from None
    if not np.isfinite(points).all():
        raise ImportFormatError(f"{path} holds NaN or infinite coordinates; expected pixel positions 'x y'")
    return points


def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a training run left under ``folder`` (any depth): the highest-numbered ``N.pth``
    (SyncTalk_2D saves one per epoch), else the only ``*.pth``; ``None`` when there is none.

    Raises :class:`ImportFormatError` when several unnumbered ``.pth`` files leave the choice open.
    """
    if not folder.is_dir():
        return None
    candidates = sorted(p for p in folder.rglob("*.pth") if p.is_file())
    numbered = [p for p in candidates if p.stem.isdigit()]
    if numbered:
        return max(numbered, key=lambda p: (int(p.stem), str(p)))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(str(p.relative_to(folder)) for p in candidates[:4])
        raise ImportFormatError(
            f"{folder} holds {len(candidates)} checkpoints ({names}{', ...' if len(candidates) > 4 else ''}) "
            "and none is numbered; choose one with --checkpoint"
        )
    return None


def check_counts(counts: Sequence[tuple[int, str]]) -> None:
    """Every ``(count, "what, in which file")`` must equal the first; else one line naming both."""
    expected, what = counts[0]
    for count, other in counts[1:]:
        if count != expected:
            raise ImportFormatError(
                f"frame counts disagree: {what} holds {expected} frames but {other} holds {count}; "
                "every part of the avatar must have one entry per frame"
            )


def check_rects(
    rects: np.ndarray, width: int, height: int, source: str, *, square: bool = True
) -> np.ndarray:
    """``rects`` ``(N, 4)`` x0, y0, x1, y1 must be non-empty, inside the ``width x height`` frame and (with
    ``square``) square: the engine pastes each crop back into its square. Returns them as int32."""
    rects = np.asarray(rects)
    if rects.ndim != 2 or rects.shape[1] != 4:
        raise ImportFormatError(f"{source} holds rectangles of shape {rects.shape}; expected (frames, 4)")
    if not np.isfinite(rects).all() or (np.abs(rects) > 1_000_000).any():
        raise ImportFormatError(f"{source} holds non-numeric or huge rectangle coordinates")
    rounded = np.rint(rects).astype(np.int64)
    x0, y0, x1, y1 = rounded.T
    outside = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
    if outside.any():
        i = int(np.argmax(outside))
        raise ImportFormatError(
            f"{source}: frame {i}'s crop rectangle {rounded[i].tolist()} (x0, y0, x1, y1) is empty or leaves "
            f"the {width}x{height} frame ({int(outside.sum())} such frames)"
        )
    if square:
        skew = (x1 - x0) != (y1 - y0)
        if skew.any():
            i = int(np.argmax(skew))
            raise ImportFormatError(
                f"{source}: frame {i}'s crop rectangle {rounded[i].tolist()} is {int(x1[i] - x0[i])}x"
                f"{int(y1[i] - y0[i])}; packages need square rectangles (the crop is pasted back square)"
            )
    return rounded.astype(np.int32)


def rect_corners(rects: np.ndarray) -> np.ndarray:
    """float32 ``(N, 4, 2)``: each rectangle's corners, clockwise from the top-left (:data:`RECT_CORNERS`)."""
    r = rects.astype(np.float32)
    x0, y0, x1, y1 = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    return np.stack(
        [np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1
    )


def fit_crop(crop: np.ndarray, size: int, source: str) -> np.ndarray:
    """A tool's square crop at ``size`` pixels (INTER_AREA shrinking, INTER_CUBIC enlarging)."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ImportFormatError(
            f"{source} is a {crop.shape[1]}x{crop.shape[0]} image; expected a square face crop"
        )
    if crop.shape[0] == size:
        return crop
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def decode_image_file(path: Path, data: bytes, holds: str) -> np.ndarray:
    """The BGR image in ``data`` (the bytes of ``path``); :class:`ImportFormatError` naming the file."""
    try:
        return decode_image(data)
    except CorruptMediaError:
        raise ImportFormatError(f"{path} is not a readable image; expected {holds}") from None


# -- model family and audio mode ----------------------------------------------------------------------------
FEATURE_FILES: dict[str, str] = {"ave": "aud_ave.npy", "hubert": "aud_hu.npy", "wenet": "aud_wenet.npy"}
"""Per-frame audio feature files of SyncTalk_2D (AVE) and Ultralight (HuBERT, WeNet) datasets."""

HUBERT_WENET_SLACK = 2
"""Ultralight's HuBERT/WeNet extractors give a row count within a frame or two of the video's (the audio and
the video end at slightly different times); AVE arrays are exactly frames + 2 rows."""


def choose_model(
    checkpoint: Path | None,
    family: str | None,
    audio_mode: str | None,
    *,
    fallback_family: str,
    feature_modes: Sequence[str],
    check: bool,
) -> tuple[ModelFamily, AudioMode]:
    """The family and audio mode of an import.

    Family: ``family``, else the checkpoint's (detected from its keys and shapes), else
    ``fallback_family`` (what the folder's layout implies). Audio mode: ``audio_mode``, else the
    checkpoint's when its shapes tell it, else the first of ``feature_modes`` (modes whose feature files the
    folder holds) the family takes, preferring its default, else the family's default. With ``check`` the
    checkpoint must be exactly a known network, of ``family`` and ``audio_mode`` when given.

    Raises :class:`UsageError` (unknown family, mode the family does not take), :class:`CheckpointError`.
    """
    fam = get_family(family) if family is not None else None
    detected_family: str | None = None
    detected_mode: str | None = None
    if checkpoint is not None and (check or family is None):
        # The keys and shapes must be exactly those of one known network: that is the whole strict check
        # (models.checkpoint.detect_network), so the network itself need not be built here.
        from ..models.checkpoint import detect_network, read_state_dict

        kind = detect_network(read_state_dict(checkpoint), label=str(checkpoint))
        detected_family, detected_mode = kind.family, kind.audio_mode
        if family is not None and detected_family != family:
            raise CheckpointError(
                f"{checkpoint} is a {detected_family} checkpoint, not {family}: pass --family "
                f"{detected_family} (or leave --family out to detect it)"
            )
    fam = fam or get_family(detected_family or fallback_family)
    if audio_mode is not None:
        mode = fam.audio_mode(audio_mode)
        if detected_mode is not None and detected_mode != mode.name:
            raise CheckpointError(
                f"{checkpoint} is a {fam.name} checkpoint for {detected_mode} audio, not {mode.name}: pass "
                f"--audio-mode {detected_mode} (or leave --audio-mode out)"
            )
        return fam, mode
    if detected_mode is not None:
        return fam, fam.audio_mode(detected_mode)
    takes = [m.name for m in fam.audio_modes]
    usable = [m for m in feature_modes if m in takes]
    if fam.default_audio_mode in usable or not usable:
        return fam, fam.audio_mode(None)
    return fam, fam.audio_mode(usable[0])


def read_features(
    folder: AvatarFolder, mode: AudioMode, n_frames: int, frames_source: str
) -> tuple[np.ndarray | None, str | None]:
    """The folder's per-frame features for ``mode`` as float32 ``(F, D)`` and their file name, or ``(None,
    None)`` when the folder has none. AVE: ``F = n_frames + 2`` exactly; HuBERT/WeNet: within
    :data:`HUBERT_WENET_SLACK` of ``n_frames``."""
    name = FEATURE_FILES.get(mode.name)
    if name is None or not folder.path(name).is_file():
        return None, None
    row = tuple(mode.row_shape)
    width = int(np.prod(row))
    what = (
        f"{mode.name} features of shape [frames + 2, {width}] (SyncTalk_2D's padded AVE array)"
        if mode.name == "ave"
        else f"{mode.name} features of shape [frames, {', '.join(map(str, row))}]"
    )
    path = folder.path(name)
    array = folder.read_npy(path, what)
    if array.ndim < 2 or int(np.prod(array.shape[1:])) != width:
        raise ImportFormatError(f"{path} has shape {list(array.shape)}; expected {what}")
    rows = array.shape[0]
    if mode.name == "ave":
        if rows != n_frames + 2:
            raise ImportFormatError(
                f"frame counts disagree: {path} holds {rows} rows, i.e. {rows - 2} frames (AVE arrays hold "
                f"frames + 2 rows), but {frames_source} holds {n_frames} frames"
            )
    elif abs(rows - n_frames) > HUBERT_WENET_SLACK:
        raise ImportFormatError(
            f"frame counts disagree: {path} holds {rows} rows but {frames_source} holds {n_frames} frames; "
            f"expected one {mode.name} row per frame (within {HUBERT_WENET_SLACK})"
        )
    return np.ascontiguousarray(array.reshape(rows, width)), name


def feature_modes_present(folder: AvatarFolder) -> list[str]:
    """The audio modes whose feature files the folder holds, in :data:`FEATURE_FILES` order."""
    return [mode for mode, name in FEATURE_FILES.items() if folder.path(name).is_file()]


# -- what a kind hands the writer ------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRecord:
    """One frame as a kind's reader yields it.

    ``image``: BGR uint8 ``(H, W, 3)``. ``file_bytes``/``file_codec``: the frame file's own bytes and codec
    ("jpeg"/"png") when it came from an image file (stored as they are when the codec matches).
    ``crop``: the tool's own crop (square, any size), or ``None`` to cut it from ``image`` by the rectangle.
    """

    image: np.ndarray
    file_bytes: bytes | None = None
    file_codec: str | None = None
    crop: np.ndarray | None = None


@dataclass(kw_only=True)
class AvatarData:
    """Everything a kind's reader learned, checked, ready to write. Shapes: N frames, K landmarks."""

    kind: AvatarKind
    folder: Path
    n_frames: int
    width: int
    height: int
    frame_rate: Fraction
    frames: Callable[[], Iterator[FrameRecord]]  # exactly N records, each checked against width x height
    rects: np.ndarray  # int32 (N, 4), square, inside the frame
    landmarks: np.ndarray | None  # float32 (N, K, 2) in frame pixels, or None (rect corners are stored)
    scheme: LandmarkScheme | None  # the landmarks' scheme (blend masks); None with landmarks None
    box_rule: str  # manifest crop.box_rule: the rule the tool's rectangles follow
    crop_interpolation: str  # "cubic" or "area": how crops are cut when the tool gave none
    audio: Path  # the file whose audio (track) is the package's
    source_audio: SourceFile | None  # None when the audio is the main input's own track
    source_video: SourceFile | None  # None: the digest of the frame files (image folders; see module doc)
    source_name: str  # name recorded for the frame-file digest, e.g. "full_body_img/"
    features: np.ndarray | None  # float32 (F, D) imported audio features, or None
    features_file: str | None
    checkpoint: Path | None
    family: ModelFamily
    audio_mode: AudioMode
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest's build_options


def default_blend_mask(family: ModelFamily, size: int, options: MaskOptions) -> np.ndarray:
    """The blend mask of kinds without landmarks: uint8 ``(size, size)``, the same for every frame.

    A template lower face in crop fractions, drawn by :func:`~lipsync_tools.pipeline.masks.blend_mask`
    (convex hull of the jaw below the nose and the lips, Gaussian feather, 0 at the border):

    * ``synctalk2d`` box rule (the crop's top is the middle of the nose bridge, its width the face at eye
      level, its bottom below the chin): nose tip at 0.22 of the side, jaw a half ellipse from there,
      0.40 of the side to each side of the centre, down to the chin at 0.84; mouth around 0.55.
    * ``padded`` (Wav2Lip: the face's extent plus 10 % each side): nose tip at 0.52, jaw half-width 0.38,
      chin at 0.90, mouth around 0.70.
    """
    if family.box_rule == "synctalk2d":
        nose_y, half_width, chin_y, mouth_y = 0.22, 0.40, 0.84, 0.55
    else:
        nose_y, half_width, chin_y, mouth_y = 0.52, 0.38, 0.90, 0.70
    angles = np.linspace(0.0, np.pi, 17)
    jaw = np.stack([0.5 - half_width * np.cos(angles), nose_y + (chin_y - nose_y) * np.sin(angles)], 1)
    around = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    lips = np.stack([0.5 + 0.16 * np.cos(around), mouth_y + 0.06 * np.sin(around)], 1)
    points = np.concatenate([jaw, lips, [[0.5, nose_y]]]).astype(np.float32) * np.float32(size - 1)
    scheme = LandmarkScheme(
        name="default-lower-face",
        num_points=points.shape[0],
        jaw=tuple(range(17)),
        outer_lips=tuple(range(17, 29)),
        nose_tip=29,
        left_eye=(),
        right_eye=(),
    )
    return blend_mask(points, scheme, size, options)


# -- writing ------------------------------------------------------------------------------------------------
def write_avatar_package(
    data: AvatarData,
    output: Path,
    *,
    audio_encoder: AudioEncoderChoice | None,
    encoder: Any,
    options: ImportOptions,
    force: bool,
    progress: Progress | None = None,
) -> Manifest:
    """Stream ``data`` into a package at ``output`` through :class:`PackageWriter` (nothing is left at
    ``output`` on failure). Computes the mel, its frame index and the PCM from ``data.audio``; with an
    ``encoder`` (``audio_encoder`` loaded) and no imported features, the AVE rows too; ``audio_encoder``'s
    checkpoint is embedded. Returns the committed manifest."""
    progress = progress or NullProgress()
    family, mode = data.family, data.audio_mode
    n, size = data.n_frames, family.crop_size
    fps = float(data.frame_rate)
    progress.start("Reading audio", None)
    pcm = load_audio(data.audio, AUDIO_SAMPLE_RATE)
    features = audio_features(pcm, fps, n, AUDIO_SAMPLE_RATE, MEL_WINDOW)
    model_features = data.features
    if model_features is None and encoder is not None:
        from ..models.audio_features import package_ave_features

        model_features = package_ave_features(encoder, features.mel, features.mel_index)
    progress.finish()

    mask_opts = MaskOptions(feather=options.feather)
    landmarks = data.landmarks if data.landmarks is not None else rect_corners(data.rects)
    scheme_name = data.scheme.name if data.scheme is not None else RECT_CORNERS
    fixed_mask = default_blend_mask(family, size, mask_opts) if data.scheme is None else None
    source_hash = hashlib.sha256()
    source_bytes = 0
    stored_as_is = 0

    with PackageWriter(
        output, n_frames=n, crop_size=size, num_points=int(landmarks.shape[1]), force=force
    ) as writer:
        progress.start("Importing frames", n)
        index = -1
        for index, record in enumerate(data.frames()):
            if index >= n:
                raise ImportFormatError(f"{data.folder}: more than the {n} frames counted were read")
            rect = data.rects[index]
            if record.crop is not None:
                crop = fit_crop(record.crop, size, f"{data.folder}: the crop of frame {index}")
            else:
                crop = crop_face(record.image, rect, size, data.crop_interpolation)
            if fixed_mask is not None:
                mask = fixed_mask
            else:
                assert data.scheme is not None
                mask = blend_mask(
                    to_crop_coordinates(landmarks[index], rect, size), data.scheme, size, mask_opts
                )
            if record.file_bytes is not None:
                source_hash.update(len(record.file_bytes).to_bytes(4, "little"))
                source_hash.update(record.file_bytes)
                source_bytes += len(record.file_bytes)
            if record.file_bytes is not None and record.file_codec == options.frame_codec:
                encoded = record.file_bytes
                stored_as_is += 1
            elif options.frame_codec == "png":
                encoded = encode_image(record.image, "png", png_compression=options.frame_quality)
            else:
                encoded = encode_image(record.image, "jpeg", options.frame_quality)
            writer.write_frame(index, encoded, crop, mask)
            progress.advance()
        if index + 1 != n:
            raise ImportFormatError(
                f"{data.folder}: {n} frames were counted but only {index + 1} could be read"
            )
        progress.finish()

        writer.write_array("rects", data.rects.astype(np.int32))
        writer.write_array(
            "masks/input", family.input_mask() if family.inner_margin else model_input_mask(size)
        )
        writer.write_array("landmarks", np.ascontiguousarray(landmarks, dtype=np.float32))
        writer.write_array("boxes", data.rects.astype(np.float32))
        writer.write_array("filled", np.zeros(n, np.uint8))
        writer.write_array("audio/pcm", features.pcm)
        writer.write_array("audio/mel", features.mel)
        writer.write_array("audio/mel_index", features.mel_index)
        if model_features is not None:
            writer.write_array("audio/features", np.ascontiguousarray(model_features, dtype=np.float32))
        if data.checkpoint is not None:
            writer.write_checkpoint(data.checkpoint.read_bytes())
        encoder_bytes = audio_encoder.checkpoint_bytes() if audio_encoder is not None else None
        if encoder_bytes is not None:
            writer.write_checkpoint(encoder_bytes, "model/audio_encoder")
        source_video = data.source_video or SourceFile(
            name=data.source_name, sha256=source_hash.hexdigest(), size_bytes=source_bytes
        )
        manifest = _manifest(
            data,
            options,
            source_video=source_video,
            features=features,
            scheme_name=scheme_name,
            num_points=int(landmarks.shape[1]),
            model=model_meta(
                family.name, mode.name, audio_encoder, model_features, imported=data.features is not None
            ),
            frames_stored_as_is=stored_as_is,
        )
        return writer.commit(manifest)


def _manifest(
    data: AvatarData,
    options: ImportOptions,
    *,
    source_video: SourceFile,
    features: Any,
    scheme_name: str,
    num_points: int,
    model: Any,
    frames_stored_as_is: int,
) -> Manifest:
    return Manifest(
        tool=ToolMeta(name="lipsync-tools", version=__version__),
        source_video=source_video,
        source_audio=data.source_audio,
        video=VideoMeta(
            fps=float(data.frame_rate),
            fps_num=data.frame_rate.numerator,
            fps_den=data.frame_rate.denominator,
            frame_count=data.n_frames,
            width=data.width,
            height=data.height,
            rotation=0,
        ),
        frames=FramesMeta(codec=options.frame_codec, quality=options.frame_quality),
        audio=audio_meta(features),
        faces=FacesMeta(
            backend=f"import:{data.kind}",
            scheme=scheme_name,
            num_points=num_points,
            filled_frames=0,
            missing_policy="fail",  # nothing is filled: every frame has the tool's own rectangle
        ),
        crop=CropMeta(size=data.family.crop_size, padding=0.0, smooth_window=1, box_rule=data.box_rule),
        model=model,
        build_options={
            "importer": data.kind,
            "source_folder": data.folder.resolve().name,
            "family": data.family.name,
            "audio_mode": data.audio_mode.name,
            "fps": float(data.frame_rate),
            "frame_codec": options.frame_codec,
            "frame_quality": options.frame_quality,
            "frames_stored_as_is": frames_stored_as_is,
            "feather": options.feather,
            "crop_interpolation": data.crop_interpolation,
            "checkpoint": data.checkpoint.name if data.checkpoint is not None else None,
            "features_file": data.features_file,
            **data.notes,
        },
        datasets={},
    )


def frame_rate(fps: float) -> Fraction:
    """A frame rate as the fraction containers use (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


# -- the entry point ---------------------------------------------------------------------------------------
class KindReader(Protocol):
    def __call__(
        self,
        folder: Path,
        *,
        family: str | None,
        audio_mode: str | None,
        checkpoint: Path | None,
        audio: Path | None,
        options: ImportOptions,
    ) -> AvatarData: ...


def kind_reader(kind: AvatarKind) -> KindReader:
    """The reader function of ``kind`` (its module imported now)."""
    spec = next(s for s in KINDS if s.name == kind)
    return cast(KindReader, load_attr(spec.reader, what=f"the reader of {kind} avatar folders"))


def import_avatar(
    folder: str | Path,
    output: str | Path | None = None,
    *,
    family: str | None = None,
    audio_mode: str | None = None,
    checkpoint: str | Path | None = None,
    audio_encoder: AudioEncoderChoice | None = None,
    audio: str | Path | None = None,
    options: ImportOptions | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Turn the avatar folder ``folder`` (its kind detected, see :data:`KINDS`) into a package at ``output``
    (default: ``folder`` + ``.sanders`` beside it), keeping the folder's own rectangles, crops, landmarks
    and audio features.

    ``family``/``audio_mode``: the model family and its audio feature (default: detected from the
    checkpoint, else what the folder implies). ``checkpoint``: the network to embed instead of the one the
    folder holds. ``audio_encoder``: an AVE encoder to embed (its rows are computed when the folder has no
    ``aud_ave.npy``). ``audio``: the speech file, instead of the folder's (required for LiveTalking avatars,
    which hold none).

    Raises :class:`InputNotFoundError` (folder, --checkpoint or --audio path missing),
    :class:`ImportFormatError` (a part of the folder missing or inconsistent, one line naming the file),
    :class:`NoAudioError`, :class:`CheckpointError`, :class:`UsageError`, :class:`OutputExistsError`,
    :class:`OutputNotWritableError`, and the media errors of undecodable files. Nothing is ever left at
    ``output`` unless the import succeeded.
    """
    started = time.perf_counter()
    options = options or ImportOptions()
    folder = Path(folder)
    kind = detect_kind(folder)
    output = Path(output) if output is not None else default_output(folder)
    check_output_path(output, force)
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_path is not None and not checkpoint_path.is_file():
        raise InputNotFoundError(f"checkpoint {checkpoint_path} does not exist; check the --checkpoint path")
    audio_path = Path(audio) if audio is not None else None
    if audio_path is not None and not audio_path.is_file():
        raise InputNotFoundError(f"audio file {audio_path} does not exist; check the --audio path")

    data = kind_reader(kind)(
        folder,
        family=family,
        audio_mode=audio_mode,
        checkpoint=checkpoint_path,
        audio=audio_path,
        options=options,
    )
    encoder = None
    if audio_encoder is not None:
        if data.audio_mode.name != "ave":
            raise UsageError(
                f"--audio-encoder gives AVE features, but the {data.family.name} family with audio mode "
                f"{data.audio_mode.name!r} does not take them; leave --audio-encoder out"
            )
        encoder = audio_encoder.load()  # a bad encoder fails now, before the frames are read
    manifest = write_avatar_package(
        data,
        output,
        audio_encoder=audio_encoder,
        encoder=encoder,
        options=options,
        force=force,
        progress=progress,
    )
    return ImportResult(
        folder=folder,
        output=output,
        kind=kind,
        manifest=manifest,
        total_seconds=time.perf_counter() - started,
    )
