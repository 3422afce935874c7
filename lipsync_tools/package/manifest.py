"""The package manifest: a JSON document stored in the root attribute ``manifest``.

Frozen, keyword-only ``msgspec.Struct`` classes mirror the JSON one to one and are its declared schema: a
key's type is stated once, where the key is, and :func:`msgspec.convert` checks a manifest against them.
:meth:`Manifest.from_dict` checks the format version first (a newer major version is refused before
anything else is read), then converts: each Struct refuses keys it does not declare
(``forbid_unknown_fields``), unless the file declares a newer minor version of the format, whose additions
an older reader must ignore by the versioning rule; those are dropped before the conversion
(:func:`_known_keys_only`). Changed copies are made with :func:`msgspec.structs.replace`.
"""

from __future__ import annotations

import functools
import json
import re
import reprlib
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
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


class SourceFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str  # file name only, never a path from the building machine
    sha256: str
    size_bytes: int


class VideoMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fps: float
    fps_num: int
    fps_den: int
    frame_count: int
    width: int  # of the stored frames, after rotation
    height: int
    rotation: int  # degrees the source's display matrix asked for; already applied to stored frames


class FramesMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    codec: str  # "jpeg" or "png"
    quality: int  # JPEG quality, or PNG compression level


class AudioMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sample_rate: int
    samples: int
    mel_bands: int
    mel_columns: int
    mel_window: int
    mel_hop_seconds: float
    mel_params: dict[str, float]  # the Wav2Lip mel hyper-parameters used


class FacesMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backend: str
    scheme: str
    num_points: int
    filled_frames: int
    missing_policy: str  # "interpolate" or "fail"


class CropMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    size: int
    padding: float
    smooth_window: int
    coordinate_order: str = "x0,y0,x1,y1"
    box_rule: str = "padded"  # since 1.1: "padded" (Wav2Lip) or "synctalk2d"; 1.0 files are "padded"


class ModelMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Since 1.1: the model family the package is for and the audio it takes. Absent (1.0): Wav2Lip."""

    family: str  # a registered model family name, e.g. "wav2lip", "synctalk2d-328"
    audio_mode: str  # "mel", "ave", "hubert", "wenet"
    audio_encoder: str  # where AVE features come from: "none", "embedded" or "random"
    audio_encoder_seed: int | None = None  # the seed when audio_encoder == "random"
    features: str = "none"  # audio/features: "none", "computed" (by the build) or "imported"
    # one row of audio/features, e.g. [512]
    feature_row_shape: list[int] = msgspec.field(default_factory=list)


class SegmentMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


class FootageMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
    # in source order; the MAX_SEGMENTS longest when more were found
    segments: Annotated[list[SegmentMeta], msgspec.Meta(max_length=MAX_SEGMENTS)]
    kept_segment: int  # index in segments of the stored segment
    detected_frames: int  # stored frames with a detected face (= frame_count - faces.filled_frames)
    longest_fill: int  # frames in the longest run of filled frames
    jitter_rms_px: float  # RMS of the crop centre's frame-to-frame motion, in frame pixels


def longest_run(flags: np.ndarray) -> int:
    """The length of the longest run of non-zero values in a 1-D array (how ``longest_fill`` is counted)."""
    padded = np.concatenate([[0], (np.asarray(flags).ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[0::2]).max()) if edges.size else 0


class DatasetMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    shape: list[int]
    dtype: str
    sha256: str


class ToolMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: str = FORMAT_NAME
    format_version: str = msgspec.field(default_factory=format_version_string)
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
        """The manifest as JSON-ready builtins (nested dicts and lists), keys in declaration order."""
        result: dict[str, Any] = msgspec.to_builtins(self, enc_hook=_builtin_subclass)
        return result

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
        """The manifest in ``data`` (parsed JSON), checked in the spec's order: ``format``, then
        ``format_version``, then every key and value against the Structs (:func:`msgspec.convert`), which
        reports the first unknown key, wrong value or missing key it meets.

        Raises :class:`PackageVersionError` for a newer major (or a pre-1.0) version, and
        :class:`PackageFormatError` naming the key (``manifest.video.fps``), what it holds and what was
        expected.
        """
        if not isinstance(data, dict):
            raise PackageFormatError(f"manifest is a JSON {type(data).__name__}; expected an object")
        if data.get("format") != FORMAT_NAME:
            raise PackageFormatError(f"manifest format is {data.get('format')!r}; expected {FORMAT_NAME!r}")
        version = parse_version(data.get("format_version"))
        check_version(version)
        document: dict[str, Any] = data
        if version[1] > FORMAT_VERSION[1]:
            # A newer minor version may add keys this reader does not know: ignore them by the spec's rule.
            # In any other version the Structs refuse them (forbid_unknown_fields): they are mistakes.
            document = _known_keys_only(data, cls)
        try:
            return msgspec.convert(document, cls)
        except msgspec.ValidationError as exc:
            raise _schema_error(exc, document, format_version_string(version)) from None


# -- the schema, read from the Structs' fields --------------------------------------------------------------
def _present(annotation: Any) -> Any:
    """The type a present value must have: ``X`` for ``X | None`` and for ``Annotated[X, constraints]``."""
    if get_origin(annotation) is Annotated:
        return _present(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not NoneType]
        if len(members) == 1:
            return _present(members[0])
    return annotation


@functools.cache
def _keys_of(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """A manifest Struct's keys and the type each one's value must have."""
    return {f.name: _present(f.type) for f in msgspec.structs.fields(cls)}


def _known_keys_only(value: Any, schema: Any) -> Any:
    """``value`` without the keys that ``schema``'s Structs do not declare, at every depth (a copy).

    Values of the wrong type are kept as they are: :func:`msgspec.convert` reports them next.
    """
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct) and isinstance(value, dict):
        known = _keys_of(schema)
        return {key: _known_keys_only(item, known[key]) for key, item in value.items() if key in known}
    if get_origin(schema) is list and isinstance(value, list):
        return [_known_keys_only(item, get_args(schema)[0]) for item in value]
    if get_origin(schema) is dict and isinstance(value, dict):
        return {key: _known_keys_only(item, get_args(schema)[1]) for key, item in value.items()}
    return value


def _builtin_subclass(value: object) -> object:
    """A ``str``, ``int`` or ``float`` subclass (a NumPy float, say) as its base type, which is how
    ``json.dumps`` writes it; msgspec itself takes only the exact types. Raises ``TypeError`` for anything
    else, as ``json.dumps`` does."""
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"manifest value {value!r} of type {type(value).__name__} is not JSON serializable")


# A step of the path in msgspec's messages ("Expected `array`, got `str` - at `$.footage.segments[0]`"): a
# key, a list index, or "[...]", which stands for a dict's key.
_PATH_STEP = re.compile(r"\.(?P<key>\w+)|\[(?P<index>\d+|\.\.\.)\]")
_JSON_TYPES = {
    "object": "an object",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
}
_FIX = (
    "The manifest does not follow docs/package-format.md: the package is damaged or was not written by "
    "lipsync-tools; rebuild it"
)


def _schema_error(exc: msgspec.ValidationError, data: dict[str, Any], version: str) -> PackageFormatError:
    """``exc`` as our message: where (``manifest.video.fps``), what was found, what was expected, the fix."""
    problem, _, path = str(exc).partition(" - at `$")
    where: str = "manifest"
    value: Any = data
    schema: Any = Manifest
    for step in _PATH_STEP.finditer(path.rstrip("`")):
        if step["key"] is not None:
            where, value, schema = f"{where}.{step['key']}", value[step["key"]], _keys_of(schema)[step["key"]]
        elif step["index"] == "...":
            # msgspec does not name a dict's key; it stops at the first entry that fails, so that one is it.
            item = _present(get_args(schema)[1])
            key = next(k for k, v in value.items() if not _fits(v, item))
            where, value, schema = f"{where}[{key!r}]", value[key], item
        else:
            index = int(step["index"])
            where, value, schema = f"{where}[{index}]", value[index], _present(get_args(schema)[0])
    if re.fullmatch(r"Object contains unknown field `.+`", problem):
        # msgspec names the first unknown key; the message names them all, and the keys that may be there
        known = _keys_of(schema)
        unknown = sorted(str(key) for key in value if key not in known)
        return PackageFormatError(
            f"{where} has unknown keys {unknown}; expected only {sorted(known)}. A {version} manifest "
            "cannot hold other keys (only a newer minor version may add some): remove them if the "
            "manifest was edited, or rebuild the package"
        )
    if missing := re.fullmatch(r"Object missing required field `(.+)`", problem):
        return PackageFormatError(f"{where} lacks the key {missing[1]!r}. {_FIX}")
    if limit := re.fullmatch(r"Expected `array` of length <= (\d+)", problem):
        return PackageFormatError(f"{where} has {len(value)} entries; the limit is {limit[1]}. {_FIX}")
    if wrong := re.fullmatch(r"Expected `(.+)`, got `(.+)`", problem):
        names = wrong[1].split(" | ")
        expected = " or ".join(_JSON_TYPES.get(name, name) for name in names)
        if value is None:
            found = "null"
        elif isinstance(value, dict | list) or {"object", "array"} & set(names):
            found = type(value).__name__
        else:
            found = reprlib.repr(value)
        return PackageFormatError(f"{where} is {found}; expected {expected}. {_FIX}")
    return PackageFormatError(f"{where}: {problem}. {_FIX}")


def _fits(value: object, schema: Any) -> bool:
    try:
        msgspec.convert(value, schema)
    except msgspec.ValidationError:
        return False
    return True
