"""The binary codec: a fixed 32-byte little-endian header, the package id, type-specific fields, the payload.

Layout (``docs/protocol.md`` has the table and worked examples)::

    offset size type  field
         0    4 bytes magic            b"LSYN"
         4    1 u8    version          PROTOCOL_VERSION
         5    1 u8    message type     MessageType
         6    2 u16   flags            FLAG_SILENCE, FLAG_TIMELINE on frame_reply, else 0
         8    4 u32   request id
        12    2 u16   package id length
        14    4 u32   frame index
        18    1 u8    audio format     AudioFormat on frame_request, else 0
        19    1 u8    image format     ImageFormat on frame_request / frame_reply / session_start, else 0
        20    2 u16   fields length    bytes of the type-specific field block
        22    2 -     reserved         zero
        24    4 u32   payload length
        28    4 -     reserved         zero

Decoding checks magic, then version, then every length against its limit, then the total size, and only
then touches the rest, so a lying header costs microseconds and no allocation.

The header and the error_reply are the same in versions 1 and 2 (``limits.ERROR_REPLY_VERSIONS``), so
``encode_error`` can answer a version 1 peer with an error it reads.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final, NoReturn, TypeVar

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import limits as L
from lipsync_tools.protocol.messages import (
    FLAG_SILENCE,
    FLAG_TIMELINE,
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

HEADER: Final = struct.Struct("<4sBBHIHIBBH2sI4s")
assert HEADER.size == L.BINARY_HEADER_SIZE  # import-time guard on the layout, not input validation

_REQUEST_FIELDS: Final = struct.Struct("<B")  # jpeg quality
# width, height, x0, y0, x1, y1, session frame, audio offset, timing count
_REPLY_FIELDS: Final = struct.Struct("<HHHHHHIQB")
_TIMING_VALUE: Final = struct.Struct("<I")
_START_FIELDS: Final = struct.Struct("<BB")  # jpeg quality, pacing
_STARTED_FIELDS: Final = struct.Struct("<dIHHI")  # fps, frame count, width, height, max lag ms
_END_FIELDS: Final = struct.Struct("<II")  # frames sent, frames dropped

_ZERO2: Final = b"\0\0"
_ZERO4: Final = b"\0\0\0\0"

# Header fields that only some types use; the others MUST send zero there.
_HAS_PACKAGE_ID: Final = {MessageType.FRAME_REQUEST, MessageType.SESSION_START, MessageType.SESSION_STARTED}
_HAS_FRAME_INDEX: Final = {MessageType.FRAME_REQUEST, MessageType.FRAME_REPLY, MessageType.SESSION_START}
_HAS_IMAGE: Final = {MessageType.FRAME_REQUEST, MessageType.FRAME_REPLY, MessageType.SESSION_START}
_FIXED_FIELDS_LEN: Final[Mapping[MessageType, int]] = {
    MessageType.FRAME_REQUEST: _REQUEST_FIELDS.size,
    MessageType.SESSION_START: _START_FIELDS.size,
    MessageType.SESSION_STARTED: _STARTED_FIELDS.size,
    MessageType.AUDIO_CHUNK: 0,
    MessageType.SESSION_END: _END_FIELDS.size,
}
_REPLY_FLAGS: Final = FLAG_SILENCE | FLAG_TIMELINE


def _fail(code: ErrorCode, message: str) -> NoReturn:
    raise ProtocolError(code, message)


class BinaryCodec:
    """Binary messages (``application/x-lipsync``; WebSocket binary frames)."""

    name: Final = "binary"
    content_type: Final = L.BINARY_CONTENT_TYPE

    # --- encoding -----------------------------------------------------------------------------------------

    def encode(self, msg: Message) -> bytes:
        """The wire bytes of ``msg``. The payload is copied exactly once (into the joined result)."""
        head, payload = self.encode_parts(msg)
        return b"".join((head, payload))

    def encode_parts(self, msg: Message) -> tuple[bytes, bytes | memoryview]:
        """``msg`` as (header + package id + fields, payload), for writers that send two buffers unjoined."""
        return self._encode_parts(msg, L.PROTOCOL_VERSION)

    def encode_error(self, reply: ErrorReply, version: int | None) -> bytes:
        """``reply`` as a peer speaking ``version`` reads it (the version the refused message had).

        Written with version byte ``version`` when that version's error_reply is laid out like this one's
        (``limits.ERROR_REPLY_VERSIONS``), else with ``PROTOCOL_VERSION``; ``None`` means unknown.
        """
        if not isinstance(reply, ErrorReply):
            raise TypeError(f"encode_error takes an ErrorReply, got {type(reply).__name__}")
        head, payload = self._encode_parts(reply, error_reply_version(version))
        return b"".join((head, payload))

    def _encode_parts(self, msg: Message, version: int) -> tuple[bytes, bytes | memoryview]:
        package_id = b""
        frame_index = audio = image = flags = 0
        fields = b""
        payload: bytes | memoryview = b""
        match msg:
            case FrameRequest():
                package_id = msg.package_id.encode("ascii")
                frame_index, audio, image = msg.frame_index, msg.audio, msg.image
                fields = _REQUEST_FIELDS.pack(msg.jpeg_quality)
                payload = msg.payload
            case FrameReply():
                frame_index, image = msg.frame_index, msg.image
                flags = FLAG_SILENCE if msg.silence else 0
                session_frame, audio_offset = 0, 0
                if msg.session_frame is not None and msg.audio_offset is not None:
                    flags |= FLAG_TIMELINE
                    session_frame, audio_offset = msg.session_frame, msg.audio_offset
                x0, y0, x1, y1 = msg.rect or (0, 0, 0, 0)
                parts = [
                    _REPLY_FIELDS.pack(
                        msg.width, msg.height, x0, y0, x1, y1, session_frame, audio_offset, len(msg.timings)
                    )
                ]
                for stage, micros in msg.timings.items():
                    name = stage.encode("ascii")
                    parts.append(bytes((len(name),)) + name + _TIMING_VALUE.pack(micros))
                fields = b"".join(parts)
                payload = msg.payload
            case ErrorReply():
                code = msg.code.encode("ascii")
                fields = bytes((len(code),)) + code
                payload = msg.message.encode("utf-8")
            case SessionStart():
                package_id = msg.package_id.encode("ascii")
                frame_index, image = msg.start_frame, msg.image
                fields = _START_FIELDS.pack(msg.jpeg_quality, msg.pacing)
            case SessionStarted():
                package_id = msg.package_id.encode("ascii")
                fields = _STARTED_FIELDS.pack(msg.fps, msg.frame_count, msg.width, msg.height, msg.max_lag_ms)
            case AudioChunk():
                payload = msg.payload
            case SessionEnd():
                fields = _END_FIELDS.pack(msg.frames_sent, msg.frames_dropped)
            case _:
                raise TypeError(f"not a protocol message: {type(msg).__name__}")
        header = HEADER.pack(
            L.MAGIC,
            version,
            msg.TYPE,
            flags,
            msg.request_id,
            len(package_id),
            frame_index,
            audio,
            image,
            len(fields),
            _ZERO2,
            len(payload),
            _ZERO4,
        )
        return b"".join((header, package_id, fields)), payload

    # --- decoding -----------------------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview | str) -> Message:
        """The message in ``data``; raises ProtocolError with the code of the first problem found.

        When ``data`` is ``bytes`` the returned payload is a memoryview into it (no copy).
        """
        if isinstance(data, str):
            _fail(ErrorCode.BAD_MAGIC, "binary messages are bytes, got text; send text frames as JSON")
        if not isinstance(data, bytes | bytearray | memoryview):
            _fail(ErrorCode.BAD_MAGIC, f"binary messages are bytes, got {type(data).__name__}")
        view = memoryview(data)
        if not view.c_contiguous or view.nbytes == 0:
            # a strided view is copied flat; so is an empty one, which cast() refuses in some shapes: (0, 3)
            view = memoryview(view.tobytes())
        elif view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = len(view)
        if bytes(view[:4]) != L.MAGIC[: min(size, 4)]:
            _fail(ErrorCode.BAD_MAGIC, f"message starts with {bytes(view[:4])!r}, expected {L.MAGIC!r}")
        if size < 5:
            _fail(
                ErrorCode.TRUNCATED,
                f"message is {size} bytes, shorter than the {L.BINARY_HEADER_SIZE}-byte header",
            )
        # the version byte is read before the header size is required: a future version may change the size
        if view[4] != L.PROTOCOL_VERSION:
            raise UnsupportedVersionError(view[4])
        if size < L.BINARY_HEADER_SIZE:
            _fail(
                ErrorCode.TRUNCATED,
                f"message is {size} bytes, shorter than the {L.BINARY_HEADER_SIZE}-byte header",
            )
        (
            _,
            _,
            type_byte,
            flags,
            request_id,
            pid_len,
            frame_index,
            audio_byte,
            image_byte,
            fields_len,
            reserved1,
            payload_len,
            reserved2,
        ) = HEADER.unpack_from(view)
        if reserved1 != _ZERO2 or reserved2 != _ZERO4:
            _fail(ErrorCode.BAD_FIELD, "reserved header bytes 22-23 and 28-31 must be zero")
        try:
            msg_type = MessageType(type_byte)
        except ValueError:
            _fail(
                ErrorCode.BAD_TYPE, f"unknown message type {type_byte}; known types are 1-{len(MessageType)}"
            )
        if pid_len > L.MAX_PACKAGE_ID_LEN:
            _fail(
                ErrorCode.BAD_FIELD,
                f"package id length {pid_len} exceeds the limit of {L.MAX_PACKAGE_ID_LEN}",
            )
        if fields_len > L.MAX_FIELDS_LEN:
            _fail(
                ErrorCode.OVERSIZE, f"field block length {fields_len} exceeds the limit of {L.MAX_FIELDS_LEN}"
            )
        max_payload = MAX_PAYLOAD[msg_type]
        if payload_len > max_payload:
            _fail(
                ErrorCode.OVERSIZE,
                f"{msg_type.wire_name} payload length {payload_len} exceeds the limit of {max_payload} bytes",
            )
        total = L.BINARY_HEADER_SIZE + pid_len + fields_len + payload_len
        if size < total:
            _fail(
                ErrorCode.TRUNCATED,
                f"message is {size} bytes, its header says {total} ({L.BINARY_HEADER_SIZE} header + "
                f"{pid_len} package id + {fields_len} fields + {payload_len} payload); send messages whole",
            )
        if size > total:
            _fail(
                ErrorCode.TRAILING_DATA,
                f"message is {size} bytes, its header says {total}; send one message per frame",
            )
        self._check_header_use(msg_type, flags, pid_len, frame_index, audio_byte, image_byte, fields_len)

        offset = L.BINARY_HEADER_SIZE
        package_id = _ascii(view[offset : offset + pid_len], "package id")
        offset += pid_len
        fields = view[offset : offset + fields_len]
        payload = view[offset + fields_len : total]
        if not isinstance(data, bytes):
            # the caller may reuse a mutable buffer; only views of immutable bytes are kept
            payload = memoryview(payload.tobytes())

        match msg_type:
            case MessageType.FRAME_REQUEST:
                (quality,) = _REQUEST_FIELDS.unpack(fields)
                return FrameRequest(
                    request_id=request_id,
                    package_id=package_id,
                    frame_index=frame_index,
                    audio=_enum(AudioFormat, audio_byte, "audio format"),
                    image=_enum(ImageFormat, image_byte, "image format"),
                    jpeg_quality=quality,
                    payload=payload,
                )
            case MessageType.FRAME_REPLY:
                return _decode_reply(fields, request_id, frame_index, image_byte, flags, payload)
            case MessageType.ERROR_REPLY:
                if fields_len < 1 or fields[0] != fields_len - 1:
                    _fail(
                        ErrorCode.BAD_FIELD, "error_reply fields must be one length byte and the error code"
                    )
                try:
                    message = payload.tobytes().decode("utf-8")
                except UnicodeDecodeError as error:
                    _fail(
                        ErrorCode.BAD_FIELD,
                        f"error message is not valid UTF-8 ({error.reason} at byte {error.start})",
                    )
                return ErrorReply(
                    request_id=request_id, code=_ascii(fields[1:], "error code"), message=message
                )
            case MessageType.SESSION_START:
                quality, pacing = _START_FIELDS.unpack(fields)
                return SessionStart(
                    request_id=request_id,
                    package_id=package_id,
                    start_frame=frame_index,
                    image=_enum(ImageFormat, image_byte, "image format"),
                    jpeg_quality=quality,
                    pacing=_enum(Pacing, pacing, "pacing"),
                )
            case MessageType.SESSION_STARTED:
                fps, frame_count, width, height, max_lag_ms = _STARTED_FIELDS.unpack(fields)
                return SessionStarted(
                    request_id=request_id,
                    package_id=package_id,
                    fps=fps,
                    frame_count=frame_count,
                    width=width,
                    height=height,
                    max_lag_ms=max_lag_ms,
                )
            case MessageType.AUDIO_CHUNK:
                return AudioChunk(request_id=request_id, payload=payload)
            case MessageType.SESSION_END:
                frames_sent, frames_dropped = _END_FIELDS.unpack(fields)
                return SessionEnd(
                    request_id=request_id, frames_sent=frames_sent, frames_dropped=frames_dropped
                )
        _fail(ErrorCode.BAD_TYPE, f"unknown message type {type_byte}")  # unreachable: every type is matched

    @staticmethod
    def _check_header_use(
        msg_type: MessageType,
        flags: int,
        pid_len: int,
        frame_index: int,
        audio: int,
        image: int,
        fields_len: int,
    ) -> None:
        """Reject non-zero header fields the type does not use, and fixed field blocks of the wrong size."""
        name = msg_type.wire_name
        allowed_flags = _REPLY_FLAGS if msg_type is MessageType.FRAME_REPLY else 0
        if flags & ~allowed_flags:
            _fail(ErrorCode.BAD_FIELD, f"{name} has unknown flags 0x{flags & ~allowed_flags:04x}")
        if pid_len and msg_type not in _HAS_PACKAGE_ID:
            _fail(ErrorCode.BAD_FIELD, f"{name} carries no package id, but the header says {pid_len} bytes")
        if frame_index and msg_type not in _HAS_FRAME_INDEX:
            _fail(ErrorCode.BAD_FIELD, f"{name} carries no frame index, but the header says {frame_index}")
        if audio and msg_type is not MessageType.FRAME_REQUEST:
            _fail(ErrorCode.BAD_FIELD, f"{name} carries no audio format, but the header says {audio}")
        if image and msg_type not in _HAS_IMAGE:
            _fail(ErrorCode.BAD_FIELD, f"{name} carries no image format, but the header says {image}")
        expected = _FIXED_FIELDS_LEN.get(msg_type)
        if expected is not None and fields_len != expected:
            _fail(
                ErrorCode.BAD_FIELD,
                f"{name} field block must be {expected} bytes, the header says {fields_len}",
            )


def _decode_reply(
    fields: memoryview, request_id: int, frame_index: int, image_byte: int, flags: int, payload: memoryview
) -> FrameReply:
    if len(fields) < _REPLY_FIELDS.size:
        _fail(ErrorCode.BAD_FIELD, f"frame_reply field block must be at least {_REPLY_FIELDS.size} bytes")
    width, height, x0, y0, x1, y1, session_frame, audio_offset, count = _REPLY_FIELDS.unpack_from(fields)
    timeline = bool(flags & FLAG_TIMELINE)
    if not timeline and (session_frame or audio_offset):
        _fail(
            ErrorCode.BAD_FIELD,
            f"frame_reply without FLAG_TIMELINE must have session frame and audio offset 0, got "
            f"{session_frame} and {audio_offset}",
        )
    if audio_offset > L.MAX_AUDIO_OFFSET:
        _fail(ErrorCode.BAD_FIELD, f"audio offset {audio_offset} exceeds the limit of {L.MAX_AUDIO_OFFSET}")
    if count > L.MAX_TIMINGS:
        _fail(ErrorCode.BAD_FIELD, f"{count} timing entries, the limit is {L.MAX_TIMINGS}")
    timings: dict[str, int] = {}
    offset = _REPLY_FIELDS.size
    for _ in range(count):
        if offset >= len(fields):
            _fail(ErrorCode.BAD_FIELD, "frame_reply field block ends inside the timings")
        name_len = fields[offset]
        end = offset + 1 + name_len + _TIMING_VALUE.size
        if name_len > L.MAX_STAGE_NAME_LEN or end > len(fields):
            _fail(ErrorCode.BAD_FIELD, f"timing entry at field offset {offset} is too long or cut off")
        name = _ascii(fields[offset + 1 : offset + 1 + name_len], "stage name")
        if name in timings:
            _fail(ErrorCode.BAD_FIELD, f"stage {name!r} appears twice in the timings")
        (timings[name],) = _TIMING_VALUE.unpack_from(fields, end - _TIMING_VALUE.size)
        offset = end
    if offset != len(fields):
        _fail(
            ErrorCode.BAD_FIELD, f"frame_reply field block has {len(fields) - offset} bytes after the timings"
        )
    # an all-zero rect means "none": the FrameReply constructor then checks rect against the image format
    rect = None if (x0, y0, x1, y1) == (0, 0, 0, 0) else (x0, y0, x1, y1)
    return FrameReply(
        request_id=request_id,
        frame_index=frame_index,
        image=_enum(ImageFormat, image_byte, "image format"),
        width=width,
        height=height,
        timings=timings,
        rect=rect,
        silence=bool(flags & FLAG_SILENCE),
        session_frame=session_frame if timeline else None,
        audio_offset=audio_offset if timeline else None,
        payload=payload,
    )


def _ascii(raw: memoryview, what: str) -> str:
    try:
        return raw.tobytes().decode("ascii")
    except UnicodeDecodeError:
        _fail(ErrorCode.BAD_FIELD, f"{what} is not ASCII: {raw.tobytes()[:80]!r}")


_E = TypeVar("_E", AudioFormat, ImageFormat, Pacing)


def _enum(enum: type[_E], value: int, what: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        _fail(ErrorCode.BAD_FIELD, f"unknown {what} {value}; known values are {[int(m) for m in enum]}")
