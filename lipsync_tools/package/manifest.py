"""The package manifest: a JSON document stored in the root attribute ``manifest``.

Frozen, keyword-only dataclasses mirror the JSON one to one. :meth:`Manifest.from_dict` checks the version
first, then every field's type, and rejects unknown keys unless the file declares a newer minor version of
the format (whose additions an older reader may ignore by the versioning rule).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar, cast

import numpy as np

from ..errors import PackageFormatError, PackageVersionError
from .spec import (
    FILLED_WARNING_SHARE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    MAX_SEGMENTS,
    format_version_string,
)


def parse_version(text: object) -> tuple[int, int]:
    """Parse ``"MAJOR.MINOR"``; raise :class:`PackageFormatError` on anything else."""
    if isinstance(text, str):
        parts = text.split(".")
        if len(parts) == 2 and all(p.isdigit() and len(p) <= 6 for p in parts):
            return int(parts[0]), int(parts[1])
    raise PackageFormatError(
        f"format_version is {text!r}; expected a string 'MAJOR.MINOR' such as "
        f"'{format_version_string()}'. The file is damaged or was not written by lipsync-tools."
    )


def check_version(version: tuple[int, int]) -> None:
    """Refuse a newer major version with a message that says how to fix it."""
    if version[0] > FORMAT_VERSION[0]:
        raise PackageVersionError(
            f"package format {format_version_string(version)} is newer than this lipsync-tools reads "
            f"(up to {FORMAT_VERSION[0]}.x); upgrade lipsync-tools (pip install -U lipsync-tools) "
            "or rebuild the package with this version"
        )
    if version[0] < 1:
        raise PackageVersionError(
            f"package format {format_version_string(version)} predates 1.0 and was never released; "
            "rebuild the package with `lipsync build-package`"
        )


@dataclass(frozen=True, kw_only=True)
class SourceFile:
    name: str  # file name only, never a path from the building machine
    sha256: str
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class VideoMeta:
    fps: float
    fps_num: int
    fps_den: int
    frame_count: int
    width: int  # of the stored frames, after rotation
    height: int
    rotation: int  # degrees the source's display matrix asked for; already applied to stored frames


@dataclass(frozen=True, kw_only=True)
class FramesMeta:
    codec: str  # "jpeg" or "png"
    quality: int  # JPEG quality, or PNG compression level


@dataclass(frozen=True, kw_only=True)
class AudioMeta:
    sample_rate: int
    samples: int
    mel_bands: int
    mel_columns: int
    mel_window: int
    mel_hop_seconds: float
    mel_params: dict[str, float]  # the Wav2Lip mel hyper-parameters used


@dataclass(frozen=True, kw_only=True)
class FacesMeta:
    backend: str
    scheme: str
    num_points: int
    filled_frames: int
    missing_policy: str  # "interpolate" or "fail"


@dataclass(frozen=True, kw_only=True)
class CropMeta:
    size: int
    padding: float
    smooth_window: int
    coordinate_order: str = "x0,y0,x1,y1"
    box_rule: str = "padded"  # since 1.1: "padded" (Wav2Lip) or "synctalk2d"; 1.0 files are "padded"


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """Since 1.1: the model family the package is for and the audio it takes. Absent (1.0): Wav2Lip."""

    family: str  # a registered model family name, e.g. "wav2lip", "synctalk2d-328"
    audio_mode: str  # "mel", "ave", "hubert", "wenet"
    audio_encoder: str  # where AVE features come from: "none", "embedded" or "random"
    audio_encoder_seed: int | None = None  # the seed when audio_encoder == "random"
    features: str = "none"  # audio/features: "none", "computed" (by the build) or "imported"
    feature_row_shape: list[int] = field(default_factory=list)  # one row of audio/features, e.g. [512]


@dataclass(frozen=True, kw_only=True)
class SegmentMeta:
    """Since 1.2: one stretch of the source video in which one face is continuously present."""

    start: int  # first source frame
    end: int  # one past the last source frame
    start_reason: str  # one of SEGMENT_START_REASONS
    end_reason: str  # one of SEGMENT_END_REASONS
    detected_frames: int  # frames of the segment on which its face was detected

    @property
    def frames(self) -> int:
        return self.end - self.start


SEGMENT_START_REASONS = ("video_start", "range_start", "cut", "face_changed", "face_found")
SEGMENT_END_REASONS = ("video_end", "range_end", "cut", "face_changed", "face_lost")
SELECTIONS = ("longest", "fail")


@dataclass(frozen=True, kw_only=True)
class FootageMeta:
    """Since 1.2: which part of the source video the package holds, and how well its face was found.

    Frame numbers are source frames (0 = the video's first decoded frame); package frame ``i`` is source
    frame ``source_start + i``. ``segments`` lists the segments found in the analysed range, kept or not
    (the longest :data:`~.spec.MAX_SEGMENTS` of them, should a video have more).
    """

    source_frames: int  # frames decoded from the source video
    range_start: int  # the analysed range: --start/--end, or the whole video
    range_end: int
    source_start: int  # the stored range: package frame 0 is this source frame
    source_end: int  # one past the last stored source frame; source_end - source_start = video.frame_count
    selection: str  # the --segment policy: "longest" or "fail"
    max_gap_seconds: float  # longest gap filled inside a segment
    min_segment_seconds: float
    segments_found: int  # segments found in the analysed range
    segments: list[SegmentMeta]  # in source order; the MAX_SEGMENTS longest when more were found
    kept_segment: int  # index in segments of the stored segment
    detected_frames: int  # stored frames with a detected face (= frame_count - faces.filled_frames)
    longest_fill: int  # frames in the longest run of filled frames
    jitter_rms_px: float  # RMS of the crop centre's frame-to-frame motion, in frame pixels


def longest_run(flags: np.ndarray) -> int:
    """The length of the longest run of non-zero values in a 1-D array (how ``longest_fill`` is counted)."""
    padded = np.concatenate([[0], (np.asarray(flags).ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[0::2]).max()) if edges.size else 0


@dataclass(frozen=True, kw_only=True)
class DatasetMeta:
    shape: list[int]
    dtype: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class ToolMeta:
    name: str
    version: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format: str = FORMAT_NAME
    format_version: str = field(default_factory=format_version_string)
    tool: ToolMeta
    source_video: SourceFile
    source_audio: SourceFile | None  # None when the audio came from the video itself
    video: VideoMeta
    frames: FramesMeta
    audio: AudioMeta
    faces: FacesMeta
    crop: CropMeta
    model: ModelMeta | None = None
    footage: FootageMeta | None = None  # since 1.2; absent in older files and in imported packages
    build_options: dict[str, Any]  # every option the build ran with, for reproducibility
    datasets: dict[str, DatasetMeta]

    @property
    def version(self) -> tuple[int, int]:
        return parse_version(self.format_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def filled_share(self) -> float:
        """The fraction of frames whose face was filled in rather than detected."""
        return self.faces.filled_frames / self.video.frame_count if self.video.frame_count else 0.0

    def warnings(self) -> list[str]:
        """What a person should know before using this package, one sentence each (empty when nothing).

        Every summary of a package (the build's, ``inspect``, ``preview``, ``validate``) shows these.
        """
        found: list[str] = []
        if self.filled_share > FILLED_WARNING_SHARE:
            found.append(
                f"{self.faces.filled_frames} of {self.video.frame_count} frames "
                f"({100 * self.filled_share:.0f} %) have no detected face and were filled from their "
                f"neighbours (more than {100 * FILLED_WARNING_SHARE:.0f} %): the mouth may be misplaced on "
                "them; check `lipsync preview` and rebuild from a cleaner range with --start/--end"
            )
        return found

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace) so identical builds give identical bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        if len(text) > MAX_MANIFEST_BYTES:
            raise PackageFormatError(
                f"manifest is {len(text)} bytes; the limit is {MAX_MANIFEST_BYTES}. The file is not a "
                "sanders package or is damaged."
            )
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PackageFormatError(f"manifest is not valid JSON ({exc}); the file is damaged") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        if not isinstance(data, dict):
            raise PackageFormatError(f"manifest is a JSON {type(data).__name__}; expected an object")
        if data.get("format") != FORMAT_NAME:
            raise PackageFormatError(f"manifest format is {data.get('format')!r}; expected {FORMAT_NAME!r}")
        version = parse_version(data.get("format_version"))
        check_version(version)
        # A newer minor version may add keys this reader does not know; ignore them by the spec's rule.
        strict = version[1] <= FORMAT_VERSION[1]
        return _build(cls, data, "manifest", strict)


_T = TypeVar("_T")

_NESTED: dict[str, type] = {
    "tool": ToolMeta,
    "source_video": SourceFile,
    "source_audio": SourceFile,
    "video": VideoMeta,
    "frames": FramesMeta,
    "audio": AudioMeta,
    "faces": FacesMeta,
    "crop": CropMeta,
    "model": ModelMeta,
    "footage": FootageMeta,
}
_LISTS_OF: dict[str, type] = {"segments": SegmentMeta}
_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}


def _build(cls: type[_T], data: dict[str, Any], where: str, strict: bool) -> _T:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown and strict:
        raise PackageFormatError(f"{where} has unknown keys {unknown}; expected only {sorted(known)}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise PackageFormatError(f"{where} lacks the key {name!r}")
        values[name] = _convert(name, str(f.type), data[name], f"{where}.{name}", strict)
    try:
        return cls(**values)
    except TypeError as exc:
        raise PackageFormatError(f"{where} is incomplete: {exc}") from exc


def _convert(name: str, type_text: str, value: Any, where: str, strict: bool) -> Any:
    optional = type_text.endswith("| None")
    if value is None:
        if optional:
            return None
        raise PackageFormatError(f"{where} is null; expected a value")
    if name == "datasets":
        if not isinstance(value, dict):
            raise PackageFormatError(f"{where} is {type(value).__name__}; expected an object")
        return {
            str(k): _build(DatasetMeta, _expect_dict(v, f"{where}.{k}"), f"{where}.{k}", strict)
            for k, v in value.items()
        }
    if name in _LISTS_OF:
        if not isinstance(value, list):
            raise PackageFormatError(f"{where} is {type(value).__name__}; expected a list")
        if len(value) > MAX_SEGMENTS:
            raise PackageFormatError(f"{where} has {len(value)} entries; the limit is {MAX_SEGMENTS}")
        return [
            _build(_LISTS_OF[name], _expect_dict(v, f"{where}[{i}]"), f"{where}[{i}]", strict)
            for i, v in enumerate(value)
        ]
    if name in _NESTED:
        return _build(_NESTED[name], _expect_dict(value, where), where, strict)
    base = type_text.replace(" | None", "")
    if base in _SCALARS:
        if isinstance(value, bool) or not isinstance(value, _SCALARS[base]):
            raise PackageFormatError(f"{where} is {value!r}; expected a {base}")
        return float(cast(float, value)) if base == "float" else value
    if base.startswith("dict"):
        return _expect_dict(value, where)
    if base.startswith("list"):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise PackageFormatError(f"{where} is {value!r}; expected a list of integers")
        return value
    return value


def _expect_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PackageFormatError(f"{where} is {type(value).__name__}; expected an object")
    return value
