"""The JSON codec: the same fields as the binary codec, as one JSON object with a base64 payload.

``{"v": 2, "type": "frame_request", "request_id": 7, ...}``: ``v`` and ``type`` come first, then the fields of
the type in a fixed order (``FIELDS``), ``payload`` (standard base64 with padding) last. Encoding writes every
key. Decoding requires exactly those keys, except that a key of ``OPTIONAL`` may be missing (its default is
used): a missing required, extra, duplicated or wrongly typed key is a ``bad_field`` error.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from typing import Any, Final, NoReturn, TypeVar

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import limits as L
from lipsync_tools.protocol.messages import (
    MAX_PAYLOAD,
    AudioChunk,
    AudioFormat,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    MessageType,
    Pacing,
    SessionEnd,
    SessionStart,
    SessionStarted,
    UnsupportedVersionError,
    error_reply_version,
)

FIELDS: Final[Mapping[MessageType, tuple[str, ...]]] = {
    MessageType.FRAME_REQUEST: (
        "v",
        "type",
        "request_id",
        "package_id",
        "frame_index",
        "audio",
        "image",
        "jpeg_quality",
        "payload",
    ),
    MessageType.FRAME_REPLY: (
        "v",
        "type",
        "request_id",
        "frame_index",
        "image",
        "width",
        "height",
        "rect",
        "silence",
        "session_frame",
        "audio_offset",
        "timings",
        "payload",
    ),
    MessageType.ERROR_REPLY: ("v", "type", "request_id", "code", "message"),
    MessageType.SESSION_START: (
        "v",
        "type",
        "request_id",
        "package_id",
        "start_frame",
        "image",
        "jpeg_quality",
        "pacing",
    ),
    MessageType.SESSION_STARTED: (
        "v",
        "type",
        "request_id",
        "package_id",
        "fps",
        "frame_count",
        "width",
        "height",
        "max_lag_ms",
    ),
    MessageType.AUDIO_CHUNK: ("v", "type", "request_id", "payload"),
    MessageType.SESSION_END: ("v", "type", "request_id", "frames_sent", "frames_dropped"),
}
"""The keys of each message type's JSON object, in the order they are written."""

OPTIONAL: Final[Mapping[MessageType, Mapping[str, object]]] = {
    # a JSON client ending its audio should not have to send the server's counters
    MessageType.SESSION_END: {"frames_sent": 0, "frames_dropped": 0},
}
"""Keys of ``FIELDS`` a decoder accepts missing, with the value it uses then (encoders write them all)."""

_TYPES_BY_NAME: Final = {t.wire_name: t for t in MessageType}
_SEPARATORS: Final = (",", ":")


def _fail(code: ErrorCode, message: str) -> NoReturn:
    raise ProtocolError(code, message)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys silently; two "request_id"s are a client bug worth naming
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class JsonCodec:
    """JSON messages (``application/json``; WebSocket text frames)."""

    name: Final = "json"
    content_type: Final = L.JSON_CONTENT_TYPE

    def encode(self, msg: Message) -> str:
        """The JSON text of ``msg`` (compact, ASCII only)."""
        return self._encode(msg, L.PROTOCOL_VERSION)

    def encode_error(self, reply: ErrorReply, version: int | None) -> str:
        """``reply`` as a peer speaking ``version`` reads it (the version the refused message had).

        Written with ``"v"`` = ``version`` when that version's error_reply has the same keys as this one's
        (``limits.ERROR_REPLY_VERSIONS``), else with ``PROTOCOL_VERSION``; ``None`` means unknown.
        """
        if not isinstance(reply, ErrorReply):
            raise TypeError(f"encode_error takes an ErrorReply, got {type(reply).__name__}")
        return self._encode(reply, error_reply_version(version))

    def _encode(self, msg: Message, version: int) -> str:
        obj: dict[str, object] = {"v": version, "type": msg.TYPE.wire_name}
        payload: bytes | memoryview | None = None
        match msg:
            case FrameRequest():
                obj |= {
                    "request_id": msg.request_id,
                    "package_id": msg.package_id,
                    "frame_index": msg.frame_index,
                    "audio": msg.audio.wire_name,
                    "image": msg.image.wire_name,
                    "jpeg_quality": msg.jpeg_quality,
                }
                payload = msg.payload
            case FrameReply():
                obj |= {
                    "request_id": msg.request_id,
                    "frame_index": msg.frame_index,
                    "image": msg.image.wire_name,
                    "width": msg.width,
                    "height": msg.height,
                    "rect": None if msg.rect is None else list(msg.rect),
                    "silence": msg.silence,
                    "session_frame": msg.session_frame,
                    "audio_offset": msg.audio_offset,
                    "timings": dict(msg.timings),
                }
                payload = msg.payload
            case ErrorReply():
                obj |= {"request_id": msg.request_id, "code": msg.code, "message": msg.message}
            case SessionStart():
                obj |= {
                    "request_id": msg.request_id,
                    "package_id": msg.package_id,
                    "start_frame": msg.start_frame,
                    "image": msg.image.wire_name,
                    "jpeg_quality": msg.jpeg_quality,
                    "pacing": msg.pacing.wire_name,
                }
            case SessionStarted():
                obj |= {
                    "request_id": msg.request_id,
                    "package_id": msg.package_id,
                    "fps": msg.fps,
                    "frame_count": msg.frame_count,
                    "width": msg.width,
                    "height": msg.height,
                    "max_lag_ms": msg.max_lag_ms,
                }
            case AudioChunk():
                obj["request_id"] = msg.request_id
                payload = msg.payload
            case SessionEnd():
                obj |= {
                    "request_id": msg.request_id,
                    "frames_sent": msg.frames_sent,
                    "frames_dropped": msg.frames_dropped,
                }
            case _:
                raise TypeError(f"not a protocol message: {type(msg).__name__}")
        text = json.dumps(obj, separators=_SEPARATORS)
        if payload is None:
            return text
        # base64 needs no JSON escaping: splice it in rather than run it through json.dumps' string scanner
        return f'{text[:-1]},"payload":"{binascii.b2a_base64(payload, newline=False).decode("ascii")}"}}'

    def decode(self, data: bytes | bytearray | memoryview | str) -> Message:
        """The message in ``data`` (JSON text, or its UTF-8 bytes); raises ProtocolError on any problem."""
        if isinstance(data, str):
            text = data
        elif isinstance(data, bytes | bytearray | memoryview):
            try:
                raw = memoryview(data).tobytes() if isinstance(data, memoryview) else data
                if len(raw) > L.MAX_JSON_MESSAGE_BYTES:
                    _fail(
                        ErrorCode.OVERSIZE,
                        f"message is {len(raw)} bytes, the limit is {L.MAX_JSON_MESSAGE_BYTES}",
                    )
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                _fail(ErrorCode.INVALID_JSON, f"message is not UTF-8 ({error.reason} at byte {error.start})")
        else:
            _fail(ErrorCode.INVALID_JSON, f"JSON messages are text, got {type(data).__name__}")
        if len(text) > L.MAX_JSON_MESSAGE_BYTES:
            _fail(
                ErrorCode.OVERSIZE,
                f"message is {len(text)} characters, the limit is {L.MAX_JSON_MESSAGE_BYTES}",
            )
        try:
            obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        except RecursionError:
            _fail(ErrorCode.INVALID_JSON, "message is not valid JSON: nested too deeply")
        except ValueError as error:  # JSONDecodeError, duplicate keys, NaN, ints beyond the digit limit
            _fail(ErrorCode.INVALID_JSON, f"message is not valid JSON: {error}")
        if not isinstance(obj, dict):
            _fail(ErrorCode.INVALID_JSON, f"message must be a JSON object, got {type(obj).__name__}")
        return _from_object(obj)


def _from_object(obj: dict[str, Any]) -> Message:
    if "v" not in obj:
        _fail(ErrorCode.BAD_FIELD, 'message has no "v" (protocol version) field')
    version = obj["v"]
    if type(version) is not int:
        _fail(ErrorCode.BAD_FIELD, f'"v" must be an integer, got {type(version).__name__}')
    if version != L.PROTOCOL_VERSION:
        raise UnsupportedVersionError(version)
    type_name = obj.get("type")
    if not isinstance(type_name, str):
        _fail(ErrorCode.BAD_FIELD, '"type" must be a string naming the message type')
    msg_type = _TYPES_BY_NAME.get(type_name)
    if msg_type is None:
        _fail(
            ErrorCode.BAD_TYPE,
            f"unknown message type {type_name[:40]!r}; known types are {', '.join(_TYPES_BY_NAME)}",
        )
    expected = FIELDS[msg_type]
    for key, default in OPTIONAL.get(msg_type, {}).items():
        obj.setdefault(key, default)
    if len(obj) != len(expected) or not all(key in obj for key in expected):
        missing = [key for key in expected if key not in obj]
        extra = [key[:40] for key in obj if key not in expected]
        _fail(ErrorCode.BAD_FIELD, f"{type_name} fields: missing {missing}, unexpected {extra[:8]}")

    match msg_type:
        case MessageType.FRAME_REQUEST:
            return FrameRequest(
                request_id=obj["request_id"],
                package_id=obj["package_id"],
                frame_index=obj["frame_index"],
                audio=_enum(AudioFormat, obj["audio"], "audio"),
                image=_enum(ImageFormat, obj["image"], "image"),
                jpeg_quality=obj["jpeg_quality"],
                payload=_base64(obj["payload"], msg_type),
            )
        case MessageType.FRAME_REPLY:
            rect = obj["rect"]
            if rect is not None:
                if not isinstance(rect, list) or len(rect) != 4:
                    _fail(ErrorCode.BAD_FIELD, '"rect" must be null or [x0, y0, x1, y1]')
                rect = tuple(rect)
            timings = obj["timings"]
            if not isinstance(timings, dict):
                _fail(ErrorCode.BAD_FIELD, '"timings" must be an object of stage name -> microseconds')
            return FrameReply(
                request_id=obj["request_id"],
                frame_index=obj["frame_index"],
                image=_enum(ImageFormat, obj["image"], "image"),
                width=obj["width"],
                height=obj["height"],
                rect=rect,
                silence=obj["silence"],
                session_frame=obj["session_frame"],
                audio_offset=obj["audio_offset"],
                timings=timings,
                payload=_base64(obj["payload"], msg_type),
            )
        case MessageType.ERROR_REPLY:
            return ErrorReply(request_id=obj["request_id"], code=obj["code"], message=obj["message"])
        case MessageType.SESSION_START:
            return SessionStart(
                request_id=obj["request_id"],
                package_id=obj["package_id"],
                start_frame=obj["start_frame"],
                image=_enum(ImageFormat, obj["image"], "image"),
                jpeg_quality=obj["jpeg_quality"],
                pacing=_enum(Pacing, obj["pacing"], "pacing"),
            )
        case MessageType.SESSION_STARTED:
            return SessionStarted(
                request_id=obj["request_id"],
                package_id=obj["package_id"],
                fps=obj["fps"],
                frame_count=obj["frame_count"],
                width=obj["width"],
                height=obj["height"],
                max_lag_ms=obj["max_lag_ms"],
            )
        case MessageType.AUDIO_CHUNK:
            return AudioChunk(request_id=obj["request_id"], payload=_base64(obj["payload"], msg_type))
        case MessageType.SESSION_END:
            return SessionEnd(
                request_id=obj["request_id"],
                frames_sent=obj["frames_sent"],
                frames_dropped=obj["frames_dropped"],
            )
    _fail(ErrorCode.BAD_TYPE, f"unknown message type {type_name!r}")  # unreachable: every type is matched


_E = TypeVar("_E", AudioFormat, ImageFormat, Pacing)


def _enum(enum: type[_E], value: object, key: str) -> _E:
    if isinstance(value, str):
        for member in enum:
            if member.wire_name == value:
                return member
    _fail(
        ErrorCode.BAD_FIELD,
        f'"{key}" must be one of {", ".join(m.wire_name for m in enum)}, got {str(value)[:40]!r}',
    )


def _base64(value: object, msg_type: MessageType) -> bytes:
    if not isinstance(value, str):
        _fail(ErrorCode.BAD_FIELD, f'"payload" must be a base64 string, got {type(value).__name__}')
    limit = MAX_PAYLOAD[msg_type]
    if len(value) > 4 * ((limit + 2) // 3):  # checked on the text, before decoding allocates anything
        _fail(ErrorCode.OVERSIZE, f"{msg_type.wire_name} payload exceeds the limit of {limit} bytes")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as error:  # ValueError: non-ASCII characters
        _fail(ErrorCode.BAD_FIELD, f'"payload" is not valid base64 (standard alphabet, padded): {error}')
