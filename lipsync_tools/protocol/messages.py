"""The messages of the wire protocol, independent of how they are encoded.

Every message is a frozen, keyword-only dataclass that validates itself on construction, so an invalid
message can neither be decoded (both codecs build messages through these constructors) nor sent. Each check
raises :class:`~lipsync_tools.errors.ProtocolError` with one of the stable :class:`ErrorCode` values.

Payloads are ``bytes`` or a read-only byte ``memoryview`` (the binary codec hands out views into the received
buffer instead of copying multi-megabyte images); both compare equal to ``bytes`` and feed ``np.frombuffer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import ClassVar, Final, NoReturn

import numpy as np

from lipsync_tools.errors import ProtocolError
from lipsync_tools.ids import package_id_problem
from lipsync_tools.protocol import limits as L

Payload = bytes | memoryview


class ErrorCode(StrEnum):
    """Stable, machine-readable error codes (``ProtocolError.code`` and ``ErrorReply.code``).

    Clients MUST accept codes not listed here (treat them as ``internal``); new codes are no version bump.
    """

    BAD_MAGIC = "bad_magic"  # not a lipsync binary message at all
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version other than PROTOCOL_VERSION
    TRUNCATED = "truncated"  # shorter than its header says
    TRAILING_DATA = "trailing_data"  # longer than its header says
    OVERSIZE = "oversize"  # a length beyond a documented limit
    BAD_TYPE = "bad_type"  # unknown message type
    BAD_FIELD = "bad_field"  # a field is missing, extra, of the wrong type, out of range or badly encoded
    INVALID_JSON = "invalid_json"  # a text message that is not a UTF-8 JSON object
    BAD_AUDIO = "bad_audio"  # audio of the wrong length or format
    UNKNOWN_PACKAGE = "unknown_package"  # well-formed package id that the server has not loaded
    BAD_PACKAGE = "bad_package"  # a package no model can serve, or whose model does not load
    FRAME_OUT_OF_RANGE = "frame_out_of_range"  # frame index >= the package's frame count
    UNEXPECTED_MESSAGE = "unexpected_message"  # valid message at the wrong time (e.g. audio before start)
    UNAUTHORIZED = "unauthorized"  # missing or wrong bearer token
    OVERLOADED = "overloaded"  # queue full: retry later
    TOO_SLOW = "too_slow"  # the client did not read its frames fast enough and was dropped
    IDLE_TIMEOUT = "idle_timeout"  # a session got no audio for the server's idle timeout and was closed
    INTERNAL = "internal"  # a server bug; the message says what to report


CLOSING_ERROR_CODES: Final = frozenset(
    {
        ErrorCode.BAD_MAGIC,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.TOO_SLOW,
        ErrorCode.IDLE_TIMEOUT,
    }
)
"""Codes after which a server closes a WebSocket session (after sending the ErrorReply); others keep it."""

HTTP_STATUS: Final[Mapping[str, int]] = {
    ErrorCode.BAD_MAGIC: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.TRUNCATED: 400,
    ErrorCode.TRAILING_DATA: 400,
    ErrorCode.OVERSIZE: 413,
    ErrorCode.BAD_TYPE: 400,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.BAD_AUDIO: 422,
    ErrorCode.UNKNOWN_PACKAGE: 404,
    ErrorCode.BAD_PACKAGE: 422,
    ErrorCode.FRAME_OUT_OF_RANGE: 422,
    ErrorCode.UNEXPECTED_MESSAGE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.TOO_SLOW: 503,
    ErrorCode.IDLE_TIMEOUT: 408,
    ErrorCode.INTERNAL: 500,
}
"""HTTP status a server answers ``POST /v1/frame`` with, per error code (unknown codes: 500)."""


class MessageType(IntEnum):
    """Message type byte of the binary header; ``wire_name`` is the JSON ``"type"``."""

    FRAME_REQUEST = 1
    FRAME_REPLY = 2
    ERROR_REPLY = 3
    SESSION_START = 4
    SESSION_STARTED = 5
    AUDIO_CHUNK = 6
    SESSION_END = 7

    @property
    def wire_name(self) -> str:
        return self.name.lower()


class AudioFormat(IntEnum):
    """What audio a FrameRequest carries (``0`` on the wire means "no audio field" for other types)."""

    PCM16 = 1  # PCM_WINDOW_SAMPLES int16 LE mono samples at 16 kHz
    MEL = 2  # float32 LE (MEL_BINS, MEL_STEPS) window, already computed by the client
    REPLAY = 3  # no payload: use the package's own pre-extracted features for this frame

    @property
    def wire_name(self) -> str:
        return self.name.lower()


class ImageFormat(IntEnum):
    """How the server encodes the frame it sends back."""

    JPEG = 1  # JFIF bytes, quality from the request
    PNG = 2  # PNG bytes
    RAW_BGR = 3  # uint8 (height, width, 3) C order, no header
    CROP_ONLY = 4  # the generated mouth crop as RAW_BGR (height, width, 3) + where it goes in the frame
    CROP_JPEG = 5  # the generated mouth crop as JPEG bytes (quality from the request) + where it goes

    @property
    def wire_name(self) -> str:
        return self.name.lower()

    @property
    def is_crop(self) -> bool:
        """The reply holds only the generated crop and the rectangle it goes into (the client composites)."""
        return self in (ImageFormat.CROP_ONLY, ImageFormat.CROP_JPEG)


class Pacing(IntEnum):
    """How a session sends frames."""

    REALTIME = 1  # one frame every 1/fps seconds, as a live avatar plays
    UNPACED = 2  # as fast as they are made and read (offline render, benchmarks)

    @property
    def wire_name(self) -> str:
        return self.name.lower()


FLAG_SILENCE: Final = 0x0001
"""FrameReply flag: the original frame, sent without running the model (the audio window was silent)."""

FLAG_TIMELINE: Final = 0x0002
"""FrameReply flag: a session frame; its ``session_frame`` and ``audio_offset`` fields are set."""


class UnsupportedVersionError(ProtocolError):
    """A message of another protocol version than this side's ``PROTOCOL_VERSION`` (``unsupported_version``).

    ``version`` is the version the peer's message had, or ``None`` when it is not known (e.g. the error came
    from the other side as an ``error_reply``). A server answers with ``codec.encode_error(reply, version)``,
    so a peer of an older version can still read why it was refused.
    """

    def __init__(self, version: int | None, message: str | None = None) -> None:
        super().__init__(
            ErrorCode.UNSUPPORTED_VERSION, _version_message(version) if message is None else message
        )
        self.version = version


def _version_message(version: int | None) -> str:
    text = "an unknown protocol version" if version is None else f"protocol version {_short(version)}"
    return (
        f"message has {text}, this side speaks version {L.PROTOCOL_VERSION}; use a client and server of the "
        "same protocol version (upgrade the older side: pip install -U lipsync-tools)"
    )


def _short(number: int) -> str:
    # a JSON "v" may have thousands of digits; the error message names it, it does not echo it
    digits = str(number)
    return digits if len(digits) <= 20 else f"{digits[:20]}..."


def error_reply_version(version: int | None) -> int:
    """The version an error reply to a message of ``version`` is written with (``Codec.encode_error``).

    ``version`` itself when its error_reply layout is this one's (``limits.ERROR_REPLY_VERSIONS``), so the
    peer can read the error; ``PROTOCOL_VERSION`` for ``None`` and every other version.
    """
    # type() and not isinstance: True == 1 would otherwise write a bool as the version
    if type(version) is int and version in L.ERROR_REPLY_VERSIONS:
        return version
    return L.PROTOCOL_VERSION


# --- validation helpers -----------------------------------------------------------------------------------


def _fail(code: ErrorCode, message: str) -> NoReturn:
    raise ProtocolError(code, message)


def _check_uint(name: str, value: object, maximum: int, minimum: int = 0) -> None:
    # bool is an int subclass; True as a frame index is a client bug, not frame 1
    if type(value) is not int:
        _fail(ErrorCode.BAD_FIELD, f"{name} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        _fail(ErrorCode.BAD_FIELD, f"{name} must be in [{minimum}, {maximum}], got {value}")


def _check_enum(name: str, value: object, enum: type[IntEnum]) -> None:
    if not isinstance(value, enum):
        _fail(ErrorCode.BAD_FIELD, f"{name} must be a {enum.__name__}, got {value!r}")


def check_package_id(package_id: object) -> None:
    """Raise ``ProtocolError(bad_field)`` unless ``package_id`` follows :mod:`lipsync_tools.ids`' rule."""
    problem = package_id_problem(package_id)
    if problem is not None:
        _fail(ErrorCode.BAD_FIELD, problem)


def _normalize_payload(owner: object, value: object) -> Payload:
    """``value`` as bytes or a flat read-only byte memoryview, stored back on the frozen ``owner``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview):
        if not value.c_contiguous:
            _fail(ErrorCode.BAD_FIELD, "payload memoryview must be C-contiguous")
        if value.nbytes == 0:
            flat = memoryview(b"")  # cast() refuses empty views of some shapes, e.g. (0, 3)
        else:
            flat = value if value.format == "B" and value.ndim == 1 else value.cast("B")
        if not flat.readonly:
            # a writable view could change under a frozen message; copy once instead
            flat = memoryview(flat.tobytes())
    elif isinstance(value, bytearray):
        flat = memoryview(bytes(value))
    else:
        _fail(ErrorCode.BAD_FIELD, f"payload must be bytes or memoryview, got {type(value).__name__}")
    object.__setattr__(owner, "payload", flat)
    return flat


def _check_payload_size(payload: Payload, limit: int) -> None:
    if len(payload) > limit:
        _fail(ErrorCode.OVERSIZE, f"payload is {len(payload)} bytes, the limit is {limit}")


_AUDIO_HINT: Final = {
    AudioFormat.PCM16: f"send {L.PCM_WINDOW_SAMPLES} int16 mono samples at {L.SAMPLE_RATE} Hz",
    AudioFormat.MEL: f"send a float32 mel window of shape ({L.MEL_BINS}, {L.MEL_STEPS})",
    AudioFormat.REPLAY: "replay uses the package's own features; send no payload",
}


# --- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameRequest:
    """Client → server: render frame ``frame_index`` of package ``package_id`` with this audio.

    ``payload`` depends on ``audio``: PCM16 → exactly ``PCM_WINDOW_BYTES`` (int16 LE mono 16 kHz, the 200 ms
    window for this frame); MEL → exactly ``MEL_WINDOW_BYTES`` (float32 LE, shape (80, 16)); REPLAY → empty.
    ``jpeg_quality`` (1-100) is used only when ``image`` is JPEG but is always validated.
    """

    TYPE: ClassVar[MessageType] = MessageType.FRAME_REQUEST
    request_id: int
    package_id: str
    frame_index: int
    audio: AudioFormat
    image: ImageFormat = ImageFormat.JPEG
    jpeg_quality: int = L.DEFAULT_JPEG_QUALITY
    payload: Payload = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        check_package_id(self.package_id)
        _check_uint("frame_index", self.frame_index, L.MAX_U32)
        _check_enum("audio", self.audio, AudioFormat)
        _check_enum("image", self.image, ImageFormat)
        _check_uint("jpeg_quality", self.jpeg_quality, L.MAX_JPEG_QUALITY, L.MIN_JPEG_QUALITY)
        payload = _normalize_payload(self, self.payload)
        _check_payload_size(payload, L.MAX_REQUEST_PAYLOAD)
        expected = {AudioFormat.PCM16: L.PCM_WINDOW_BYTES, AudioFormat.MEL: L.MEL_WINDOW_BYTES}.get(
            self.audio, 0
        )
        if len(payload) != expected:
            _fail(
                ErrorCode.BAD_AUDIO,
                f"{self.audio.wire_name} audio must be {expected} bytes, got {len(payload)}"
                f" ({_AUDIO_HINT[self.audio]})",
            )

    @classmethod
    def from_pcm(
        cls, samples: np.ndarray, *, request_id: int, package_id: str, frame_index: int, **options: object
    ) -> FrameRequest:
        """Build a PCM16 request from ``samples``: int16, shape ``(PCM_WINDOW_SAMPLES,)``.

        ``options`` are the remaining fields (``image``, ``jpeg_quality``). Raises ProtocolError(bad_audio).
        """
        if samples.dtype != np.int16 or samples.shape != (L.PCM_WINDOW_SAMPLES,):
            _fail(
                ErrorCode.BAD_AUDIO,
                f"PCM window must be int16 of shape ({L.PCM_WINDOW_SAMPLES},), "
                f"got {samples.dtype} {samples.shape}",
            )
        data = samples.astype("<i2", copy=False).tobytes()
        return cls(
            request_id=request_id,
            package_id=package_id,
            frame_index=frame_index,
            audio=AudioFormat.PCM16,
            payload=data,
            **options,  # type: ignore[arg-type]
        )

    @classmethod
    def from_mel(
        cls, mel: np.ndarray, *, request_id: int, package_id: str, frame_index: int, **options: object
    ) -> FrameRequest:
        """Build a MEL request from float32 ``mel`` ``(MEL_BINS, MEL_STEPS)``; ProtocolError if not."""
        if mel.dtype != np.float32 or mel.shape != (L.MEL_BINS, L.MEL_STEPS):
            _fail(
                ErrorCode.BAD_AUDIO,
                f"mel window must be float32 of shape ({L.MEL_BINS}, {L.MEL_STEPS}), "
                f"got {mel.dtype} {mel.shape}",
            )
        data = np.ascontiguousarray(mel, dtype="<f4").tobytes()
        return cls(
            request_id=request_id,
            package_id=package_id,
            frame_index=frame_index,
            audio=AudioFormat.MEL,
            payload=data,
            **options,  # type: ignore[arg-type]
        )

    def pcm_window(self) -> np.ndarray:
        """The PCM payload as a read-only int16 array of shape ``(PCM_WINDOW_SAMPLES,)`` (no copy)."""
        if self.audio is not AudioFormat.PCM16:
            _fail(ErrorCode.BAD_AUDIO, f"request carries {self.audio.wire_name} audio, not pcm16")
        return np.frombuffer(self.payload, dtype="<i2")

    def mel_window(self) -> np.ndarray:
        """The MEL payload as a read-only float32 array of shape ``(MEL_BINS, MEL_STEPS)`` (no copy)."""
        if self.audio is not AudioFormat.MEL:
            _fail(ErrorCode.BAD_AUDIO, f"request carries {self.audio.wire_name} audio, not mel")
        return np.frombuffer(self.payload, dtype="<f4").reshape(L.MEL_BINS, L.MEL_STEPS)


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameReply:
    """Server → client: one rendered frame (answer to a FrameRequest, or a session push).

    ``timings`` maps stage name → microseconds, in the order the stages ran (at most ``MAX_TIMINGS``).
    ``width``/``height`` are the image's (for a crop format: the crop's) pixel size. ``rect`` is ``(x0, y0,
    x1, y1)`` in frame pixels (end exclusive) where a CROP_ONLY or CROP_JPEG crop goes, resized; ``None`` for
    other formats. ``silence`` marks an original frame sent without running the model; a silent crop reply
    has no crop: empty payload, zero size, ``rect=None`` ("show your own frame").
    ``session_frame`` (u32, the frame's 0-based number in its session) and ``audio_offset`` (the sample of
    the session's 16 kHz audio at which the frame is shown, at most ``MAX_AUDIO_OFFSET``) are both set on a
    session frame and both ``None`` on the reply to a FrameRequest.
    """

    TYPE: ClassVar[MessageType] = MessageType.FRAME_REPLY
    request_id: int
    frame_index: int
    image: ImageFormat
    width: int
    height: int
    timings: Mapping[str, int] = field(default_factory=dict)
    rect: tuple[int, int, int, int] | None = None
    silence: bool = False
    session_frame: int | None = None
    audio_offset: int | None = None
    payload: Payload = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        _check_uint("frame_index", self.frame_index, L.MAX_U32)
        _check_enum("image", self.image, ImageFormat)
        _check_uint("width", self.width, L.MAX_U16)
        _check_uint("height", self.height, L.MAX_U16)
        if type(self.silence) is not bool:
            _fail(ErrorCode.BAD_FIELD, f"silence must be a bool, got {type(self.silence).__name__}")
        self._check_timeline()
        self._check_timings()
        payload = _normalize_payload(self, self.payload)
        _check_payload_size(payload, L.MAX_REPLY_PAYLOAD)
        empty_crop = self.image.is_crop and self.silence and len(payload) == 0
        if empty_crop:
            if self.width or self.height or self.rect is not None:
                _fail(
                    ErrorCode.BAD_FIELD,
                    f"a silent {self.image.wire_name} reply without a crop must have size 0x0 and no rect",
                )
            return
        if self.width == 0 or self.height == 0:
            _fail(ErrorCode.BAD_FIELD, f"image size must be positive, got {self.width}x{self.height}")
        if self.image.is_crop:
            self._check_rect()
        elif self.rect is not None:
            _fail(
                ErrorCode.BAD_FIELD,
                f"rect is only sent with crop_only and crop_jpeg images, not {self.image.wire_name}",
            )
        if self.image in (ImageFormat.RAW_BGR, ImageFormat.CROP_ONLY):
            expected = self.width * self.height * 3
            if len(payload) != expected:
                _fail(
                    ErrorCode.BAD_FIELD,
                    f"{self.image.wire_name} payload must be width*height*3 = {expected} bytes, "
                    f"got {len(payload)}",
                )
        elif len(payload) == 0:
            _fail(ErrorCode.BAD_FIELD, f"{self.image.wire_name} payload is empty")

    def _check_timeline(self) -> None:
        if (self.session_frame is None) != (self.audio_offset is None):
            _fail(
                ErrorCode.BAD_FIELD,
                "session_frame and audio_offset go together: both None (a reply to a frame_request) or both "
                f"integers (a session frame), got session_frame={str(self.session_frame)[:40]}, "
                f"audio_offset={str(self.audio_offset)[:40]}",
            )
        if self.session_frame is not None:
            _check_uint("session_frame", self.session_frame, L.MAX_U32)
            _check_uint("audio_offset", self.audio_offset, L.MAX_AUDIO_OFFSET)

    def _check_timings(self) -> None:
        if not isinstance(self.timings, Mapping):
            _fail(ErrorCode.BAD_FIELD, f"timings must be a mapping, got {type(self.timings).__name__}")
        if len(self.timings) > L.MAX_TIMINGS:
            _fail(ErrorCode.BAD_FIELD, f"{len(self.timings)} timing entries, the limit is {L.MAX_TIMINGS}")
        for name, value in self.timings.items():
            if not isinstance(name, str) or L.STAGE_NAME_PATTERN.fullmatch(name) is None:
                _fail(
                    ErrorCode.BAD_FIELD, f"stage name {str(name)[:40]!r} is not 1-32 characters of a-z 0-9 _"
                )
            _check_uint(f"timings[{name!r}]", value, L.MAX_U32)
        # a private copy: the caller's dict could change under a frozen message
        object.__setattr__(self, "timings", dict(self.timings))

    def _check_rect(self) -> None:
        rect = self.rect
        if not isinstance(rect, tuple) or len(rect) != 4:
            _fail(ErrorCode.BAD_FIELD, f"{self.image.wire_name} replies need rect=(x0, y0, x1, y1)")
        for name, value in zip(("x0", "y0", "x1", "y1"), rect, strict=True):
            _check_uint(f"rect.{name}", value, L.MAX_U16)
        x0, y0, x1, y1 = rect
        if not (x0 < x1 and y0 < y1):
            _fail(ErrorCode.BAD_FIELD, f"rect {rect} is empty: need x0 < x1 and y0 < y1")

    def image_array(self) -> np.ndarray:
        """A RAW_BGR or CROP_ONLY payload as a read-only uint8 array ``(height, width, 3)`` (no copy)."""
        if self.image not in (ImageFormat.RAW_BGR, ImageFormat.CROP_ONLY):
            _fail(
                ErrorCode.BAD_FIELD,
                f"{self.image.wire_name} payload is encoded; decode it with an image library",
            )
        return np.frombuffer(self.payload, dtype=np.uint8).reshape(self.height, self.width, 3)


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorReply:
    """Server → client: the request ``request_id`` (0 if unknown) failed with ``code``."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR_REPLY
    request_id: int
    code: str
    message: str

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        if not isinstance(self.code, str) or L.ERROR_CODE_PATTERN.fullmatch(self.code) is None:
            _fail(
                ErrorCode.BAD_FIELD, f"error code {str(self.code)[:40]!r} is not 1-32 characters of a-z 0-9 _"
            )
        if isinstance(self.code, ErrorCode):
            object.__setattr__(self, "code", str(self.code))
        if not isinstance(self.message, str):
            _fail(ErrorCode.BAD_FIELD, f"error message must be a string, got {type(self.message).__name__}")
        try:
            size = len(self.message.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates
            _fail(ErrorCode.BAD_FIELD, "error message is not valid Unicode text")
        if size > L.MAX_ERROR_MESSAGE_BYTES:
            _fail(
                ErrorCode.OVERSIZE, f"error message is {size} bytes, the limit is {L.MAX_ERROR_MESSAGE_BYTES}"
            )

    @classmethod
    def from_error(cls, error: ProtocolError, request_id: int = 0) -> ErrorReply:
        """The reply a server sends for ``error``, message cut to fit ``MAX_ERROR_MESSAGE_BYTES``."""
        text = str(error).encode("utf-8", "replace")[: L.MAX_ERROR_MESSAGE_BYTES].decode("utf-8", "ignore")
        return cls(request_id=request_id, code=error.code, message=text)

    def to_error(self) -> ProtocolError:
        """The ProtocolError a client raises for this reply.

        An ``unsupported_version`` reply becomes an :class:`UnsupportedVersionError` whose ``version`` is
        ``None`` (the reply names the versions in its message).
        """
        if self.code == ErrorCode.UNSUPPORTED_VERSION:
            return UnsupportedVersionError(None, self.message)
        return ProtocolError(self.code, self.message)


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionStart:
    """Client → server, first message on ``/v1/stream``: start a session on ``package_id``.

    Frames start at ``start_frame`` and walk forward and back (ping-pong), encoded per ``image``.
    """

    TYPE: ClassVar[MessageType] = MessageType.SESSION_START
    request_id: int
    package_id: str
    start_frame: int = 0
    image: ImageFormat = ImageFormat.JPEG
    jpeg_quality: int = L.DEFAULT_JPEG_QUALITY
    pacing: Pacing = Pacing.REALTIME

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        check_package_id(self.package_id)
        _check_uint("start_frame", self.start_frame, L.MAX_U32)
        _check_enum("image", self.image, ImageFormat)
        _check_uint("jpeg_quality", self.jpeg_quality, L.MAX_JPEG_QUALITY, L.MIN_JPEG_QUALITY)
        _check_enum("pacing", self.pacing, Pacing)


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionStarted:
    """Server → client: the session is running; frames will come at ``fps`` (REALTIME pacing).

    ``max_lag_ms`` (u32) bounds how late, in milliseconds after its audio plays, a delivered frame of this
    session arrives: the server drops frames that would be later. ``0``: no bound (unpaced sessions).
    """

    TYPE: ClassVar[MessageType] = MessageType.SESSION_STARTED
    request_id: int  # echoes SessionStart.request_id
    package_id: str
    fps: float
    frame_count: int
    width: int
    height: int
    max_lag_ms: int = 0

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        check_package_id(self.package_id)
        if type(self.fps) not in (int, float) or not 0 < self.fps <= L.MAX_FPS:
            _fail(ErrorCode.BAD_FIELD, f"fps must be a number in (0, {L.MAX_FPS:g}], got {self.fps!r}")
        object.__setattr__(self, "fps", float(self.fps))
        _check_uint("frame_count", self.frame_count, L.MAX_U32, 1)
        _check_uint("width", self.width, L.MAX_U16, 1)
        _check_uint("height", self.height, L.MAX_U16, 1)
        _check_uint("max_lag_ms", self.max_lag_ms, L.MAX_U32)


@dataclass(frozen=True, kw_only=True, slots=True)
class AudioChunk:
    """Client → server: the next PCM16 LE mono 16 kHz samples of a session's audio (non-empty, even size)."""

    TYPE: ClassVar[MessageType] = MessageType.AUDIO_CHUNK
    request_id: int  # a sequence number chosen by the client; echoed in error replies
    payload: Payload = field(repr=False)

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        payload = _normalize_payload(self, self.payload)
        _check_payload_size(payload, L.MAX_AUDIO_CHUNK_BYTES)
        if len(payload) == 0 or len(payload) % 2:
            _fail(
                ErrorCode.BAD_AUDIO,
                f"audio chunk must be a non-empty whole number of int16 samples, got {len(payload)} bytes",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionEnd:
    """Either side: no more audio (client) / the last frame was sent (server, in answer).

    In the server's SessionEnd, ``frames_sent`` and ``frames_dropped`` (u32) count the session's frames sent
    and dropped (not rendered, or not sent, because their time had passed); a client's carries 0 and 0.
    """

    TYPE: ClassVar[MessageType] = MessageType.SESSION_END
    request_id: int
    frames_sent: int = 0
    frames_dropped: int = 0

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id, L.MAX_U32)
        _check_uint("frames_sent", self.frames_sent, L.MAX_U32)
        _check_uint("frames_dropped", self.frames_dropped, L.MAX_U32)


Message = FrameRequest | FrameReply | ErrorReply | SessionStart | SessionStarted | AudioChunk | SessionEnd
"""Any protocol message."""

MAX_PAYLOAD: Final[Mapping[MessageType, int]] = {
    MessageType.FRAME_REQUEST: L.MAX_REQUEST_PAYLOAD,
    MessageType.FRAME_REPLY: L.MAX_REPLY_PAYLOAD,
    MessageType.ERROR_REPLY: L.MAX_ERROR_MESSAGE_BYTES,
    MessageType.SESSION_START: 0,
    MessageType.SESSION_STARTED: 0,
    MessageType.AUDIO_CHUNK: L.MAX_AUDIO_CHUNK_BYTES,
    MessageType.SESSION_END: 0,
}
"""Largest payload (bytes, before base64) each message type may declare; checked before anything is read."""

MESSAGE_CLASSES: Final[Mapping[MessageType, type[Message]]] = {
    cls.TYPE: cls
    for cls in (FrameRequest, FrameReply, ErrorReply, SessionStart, SessionStarted, AudioChunk, SessionEnd)
}
