"""One contract suite run over every codec: round trips of every message, and every kind of bad input.

Each codec gets a "forge" that writes wire data *without* validation, so the tests can send exactly the
malformed message a buggy or hostile peer would.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CLOSING_ERROR_CODES,
    CODECS,
    ERROR_REPLY_VERSIONS,
    FLAG_SILENCE,
    FLAG_TIMELINE,
    HTTP_STATUS,
    MAGIC,
    MAX_AUDIO_OFFSET,
    MAX_JSON_MESSAGE_BYTES,
    MAX_REPLY_PAYLOAD,
    MEL_WINDOW_BYTES,
    PCM_WINDOW_BYTES,
    PROTOCOL_VERSION,
    AudioFormat,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    MessageType,
    SessionEnd,
    SessionStarted,
    UnsupportedVersionError,
    codec_for_content_type,
    get_codec,
)
from lipsync_tools.protocol.binary import HEADER
from tests.protocol import sample_messages

SAMPLES = sample_messages()
END_FIELDS = bytes(8)  # a session_end's field block: frames sent, frames dropped


@dataclass
class RequestFields:
    """A FrameRequest's fields, any value allowed (defaults: a valid replay request)."""

    request_id: Any = 7
    package_id: Any = "alice"
    frame_index: Any = 42
    audio: Any = AudioFormat.REPLAY
    image: Any = ImageFormat.JPEG
    jpeg_quality: Any = 85
    payload: bytes = b""


class BinaryForge:
    codec = CODECS["binary"]
    unknown_enum = 9
    truncated_code = ErrorCode.TRUNCATED
    bad_text_code = ErrorCode.BAD_FIELD  # invalid UTF-8 inside a field

    @staticmethod
    def raw(
        msg_type: int,
        *,
        version: int = PROTOCOL_VERSION,
        flags: int = 0,
        request_id: int = 7,
        package_id: bytes = b"",
        frame_index: int = 0,
        audio: int = 0,
        image: int = 0,
        fields: bytes = b"",
        payload: bytes = b"",
        payload_len: int | None = None,
    ) -> bytes:
        header = HEADER.pack(
            MAGIC, version, msg_type, flags, request_id, len(package_id), frame_index, audio, image,
            len(fields), b"\0\0", len(payload) if payload_len is None else payload_len, b"\0\0\0\0",
        )  # fmt: skip
        return header + package_id + fields + payload

    def frame_request(self, f: RequestFields, version: int = PROTOCOL_VERSION, msg_type: int = 1) -> bytes:
        pid = f.package_id.encode("utf-8") if isinstance(f.package_id, str) else f.package_id
        return self.raw(
            msg_type, version=version, request_id=f.request_id, package_id=pid, frame_index=f.frame_index,
            audio=int(f.audio), image=int(f.image), fields=bytes([f.jpeg_quality]), payload=f.payload,
        )  # fmt: skip

    def oversize_reply(self) -> bytes:
        return self.raw(2, image=1, fields=reply_fields(), payload_len=MAX_REPLY_PAYLOAD + 1)

    def error_with_bad_text(self) -> bytes:
        return self.raw(3, fields=b"\x08internal", payload=b"caf\xe9")

    def truncate(self, data: bytes | str) -> bytes | str:
        return data[:-1]

    def append_garbage(self, data: bytes | str) -> bytes | str:
        assert isinstance(data, bytes)
        return data + b"\0"


class JsonForge:
    codec = CODECS["json"]
    unknown_enum = "wav"
    truncated_code = ErrorCode.INVALID_JSON
    bad_text_code = ErrorCode.INVALID_JSON  # the whole message must be UTF-8

    @staticmethod
    def dump(obj: dict[str, Any]) -> str:
        return json.dumps(obj, separators=(",", ":"))

    def frame_request(self, f: RequestFields, version: int = PROTOCOL_VERSION, msg_type: int = 1) -> str:
        def name(value: Any) -> Any:
            return value.name.lower() if isinstance(value, AudioFormat | ImageFormat) else value

        type_name = MessageType(msg_type).wire_name if msg_type in set(MessageType) else f"type_{msg_type}"
        return self.dump(
            {
                "v": version, "type": type_name, "request_id": f.request_id, "package_id": f.package_id,
                "frame_index": f.frame_index, "audio": name(f.audio), "image": name(f.image),
                "jpeg_quality": f.jpeg_quality, "payload": base64.b64encode(f.payload).decode(),
            }
        )  # fmt: skip

    def oversize_reply(self) -> str:
        obj = json.loads(CODECS["json"].encode(SAMPLES["reply-png-silence-no-timings"]))
        obj["payload"] = "A" * (4 * (MAX_REPLY_PAYLOAD // 3) + 8)
        return self.dump(obj)

    def error_with_bad_text(self) -> bytes:
        return b'{"v":2,"type":"error_reply","request_id":7,"code":"internal","message":"caf\xe9"}'

    def truncate(self, data: bytes | str) -> bytes | str:
        return data[:-1]

    def append_garbage(self, data: bytes | str) -> bytes | str:
        assert isinstance(data, str)
        return data + "{}"


Forge = BinaryForge | JsonForge


@pytest.fixture(params=["binary", "json"])
def forge(request: pytest.FixtureRequest) -> Forge:
    return BinaryForge() if request.param == "binary" else JsonForge()


def decode_error(codec: Codec, data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(data)
    return info.value


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(SAMPLES))
def test_round_trip(forge: Forge, key: str) -> None:
    msg = SAMPLES[key]
    wire = forge.codec.encode(msg)
    decoded = forge.codec.decode(wire)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert forge.codec.encode(decoded) == wire  # re-encoding is byte-identical


@pytest.mark.parametrize("key", list(SAMPLES))
def test_decode_accepts_any_bytes_like(forge: Forge, key: str) -> None:
    wire = forge.codec.encode(SAMPLES[key])
    raw = wire.encode() if isinstance(wire, str) else wire
    for data in (raw, bytearray(raw), memoryview(raw)):
        assert forge.codec.decode(data) == SAMPLES[key]


def test_payload_survives_mutation_of_a_reused_buffer(forge: Forge) -> None:
    wire = forge.codec.encode(SAMPLES["reply-raw"])
    buffer = bytearray(wire.encode() if isinstance(wire, str) else wire)
    decoded = forge.codec.decode(buffer)
    buffer[:] = bytes(len(buffer))
    assert decoded == SAMPLES["reply-raw"]


def test_numpy_views_of_decoded_payloads(forge: Forge) -> None:
    request = forge.codec.decode(forge.codec.encode(SAMPLES["request-pcm"]))
    assert isinstance(request, FrameRequest)
    assert request.pcm_window().dtype == np.int16 and request.pcm_window().shape == (3200,)
    np.testing.assert_array_equal(request.pcm_window(), SAMPLES["request-pcm"].pcm_window())  # type: ignore[union-attr]
    reply = forge.codec.decode(forge.codec.encode(SAMPLES["reply-crop"]))
    assert isinstance(reply, FrameReply)
    assert reply.image_array().shape == (96, 96, 3)
    assert list(reply.timings) == [f"stage_{i}" for i in range(32)]  # order is kept


TIMELINES = [(0, 0), (1, 1), (3, 1920), (4_294_967_295, MAX_AUDIO_OFFSET)]


@pytest.mark.parametrize(("session_frame", "audio_offset"), TIMELINES)
@pytest.mark.parametrize("image", [ImageFormat.JPEG, ImageFormat.CROP_ONLY])
def test_timeline_round_trip(forge: Forge, session_frame: int, audio_offset: int, image: ImageFormat) -> None:
    rect = (10, 20, 12, 21) if image is ImageFormat.CROP_ONLY else None
    msg = FrameReply(
        request_id=0,
        frame_index=session_frame,
        image=image,
        width=2,
        height=1,
        rect=rect,
        session_frame=session_frame,
        audio_offset=audio_offset,
        payload=bytes(6),
    )
    decoded = forge.codec.decode(forge.codec.encode(msg))
    assert decoded == msg
    assert isinstance(decoded, FrameReply)
    assert (decoded.session_frame, decoded.audio_offset) == (session_frame, audio_offset)
    assert type(decoded.audio_offset) is int


@pytest.mark.parametrize(
    "msg",
    [
        SessionStarted(request_id=1, package_id="a", fps=25, frame_count=1, width=1, height=1, max_lag_ms=0),
        SessionStarted(
            request_id=1, package_id="a", fps=25, frame_count=1, width=1, height=1, max_lag_ms=4_294_967_295
        ),
        SessionEnd(request_id=0),
        SessionEnd(request_id=1, frames_sent=240, frames_dropped=12),
        SessionEnd(request_id=1, frames_sent=0, frames_dropped=4_294_967_295),
    ],
    ids=repr,
)
def test_session_counters_round_trip(forge: Forge, msg: SessionStarted | SessionEnd) -> None:
    assert forge.codec.decode(forge.codec.encode(msg)) == msg


def png_reply(**fields: Any) -> FrameReply:
    """A valid 1x1 PNG reply with ``fields`` changed."""
    defaults: dict[str, Any] = {
        "request_id": 0, "frame_index": 0, "image": ImageFormat.PNG, "width": 1, "height": 1, "payload": b"x",
    }  # fmt: skip
    return FrameReply(**(defaults | fields))


BAD_MESSAGES: dict[str, tuple[Callable[[], object], str]] = {
    "session-frame-alone": (lambda: png_reply(session_frame=3), "session_frame and audio_offset go together"),
    "audio-offset-alone": (lambda: png_reply(audio_offset=0), "session_frame and audio_offset go together"),
    "audio-offset-too-big": (
        lambda: png_reply(session_frame=0, audio_offset=MAX_AUDIO_OFFSET + 1),
        f"audio_offset must be in [0, {MAX_AUDIO_OFFSET}]",
    ),
    "audio-offset-negative": (
        lambda: png_reply(session_frame=0, audio_offset=-1),
        f"audio_offset must be in [0, {MAX_AUDIO_OFFSET}]",
    ),
    "session-frame-bool": (
        lambda: png_reply(session_frame=True, audio_offset=0),
        "session_frame must be an integer, got bool",
    ),
    "audio-offset-float": (
        lambda: png_reply(session_frame=0, audio_offset=1920.0),
        "audio_offset must be an integer, got float",
    ),
    "silent-empty-crop-session-frame-alone": (
        lambda: png_reply(image=ImageFormat.CROP_ONLY, width=0, height=0, silence=True, session_frame=1),
        "session_frame and audio_offset go together",
    ),
    "max-lag-negative": (
        lambda: SessionStarted(
            request_id=1, package_id="a", fps=25, frame_count=1, width=1, height=1, max_lag_ms=-1
        ),
        "max_lag_ms must be in [0, 4294967295]",
    ),
    "frames-sent-float": (
        lambda: SessionEnd(request_id=1, frames_sent=1.0),  # type: ignore[arg-type]
        "frames_sent must be an integer, got float",
    ),
    "frames-dropped-u32": (
        lambda: SessionEnd(request_id=1, frames_dropped=2**32),
        "frames_dropped must be in [0, 4294967295]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_new_fields_are_validated_on_construction(case: str) -> None:
    make, text = BAD_MESSAGES[case]
    with pytest.raises(ProtocolError) as info:
        make()
    assert info.value.code == "bad_field"
    assert text in str(info.value)


def test_registry() -> None:
    assert get_codec("binary").content_type == "application/x-lipsync"
    assert codec_for_content_type("application/json; charset=utf-8").name == "json"
    assert codec_for_content_type("Application/X-Lipsync").name == "binary"
    for bad in (lambda: get_codec("xml"), lambda: codec_for_content_type(None)):
        with pytest.raises(ProtocolError) as info:
            bad()
        assert info.value.code == "bad_field"


# --- bad input --------------------------------------------------------------------------------------------

FIELD_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "path-in-package-id": ({"package_id": "../etc/passwd"}, "bad_field"),
    "slash-in-package-id": ({"package_id": "a/b"}, "bad_field"),
    "backslash-in-package-id": ({"package_id": "a\\b"}, "bad_field"),
    "hidden-package-id": ({"package_id": ".alice"}, "bad_field"),
    "empty-package-id": ({"package_id": ""}, "bad_field"),
    "long-package-id": ({"package_id": "a" * 65}, "bad_field"),
    "non-ascii-package-id": ({"package_id": "ålice"}, "bad_field"),
    "nul-in-package-id": ({"package_id": "alice\0"}, "bad_field"),
    "short-pcm": ({"audio": AudioFormat.PCM16, "payload": bytes(PCM_WINDOW_BYTES - 2)}, "bad_audio"),
    "long-pcm": ({"audio": AudioFormat.PCM16, "payload": bytes(PCM_WINDOW_BYTES + 2)}, "bad_audio"),
    "pcm-sized-mel": ({"audio": AudioFormat.MEL, "payload": bytes(PCM_WINDOW_BYTES)}, "bad_audio"),
    "mel-sized-pcm": ({"audio": AudioFormat.PCM16, "payload": bytes(MEL_WINDOW_BYTES)}, "bad_audio"),
    "replay-with-payload": ({"audio": AudioFormat.REPLAY, "payload": b"\0\0"}, "bad_audio"),
    "quality-0": ({"jpeg_quality": 0}, "bad_field"),
    "quality-101": ({"jpeg_quality": 101}, "bad_field"),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_bad_fields(forge: Forge, case: str) -> None:
    overrides, code = FIELD_CASES[case]
    error = decode_error(forge.codec, forge.frame_request(RequestFields(**overrides)))
    assert error.code == code, str(error)


def test_the_valid_forged_request_decodes(forge: Forge) -> None:
    # guards the bad-field tests: they fail for the field changed, not for a broken forge
    assert forge.codec.decode(forge.frame_request(RequestFields())) == FrameRequest(
        request_id=7, package_id="alice", frame_index=42, audio=AudioFormat.REPLAY
    )


@pytest.mark.parametrize("field", ["audio", "image"])
def test_unknown_enum_value(forge: Forge, field: str) -> None:
    overrides: dict[str, Any] = {field: forge.unknown_enum}
    error = decode_error(forge.codec, forge.frame_request(RequestFields(**overrides)))
    assert error.code == "bad_field"
    assert field.replace("_", " ") in str(error)


@pytest.mark.parametrize("version", [1, 3, 255, 0])
def test_other_protocol_version_is_refused_naming_both(forge: Forge, version: int) -> None:
    error = decode_error(forge.codec, forge.frame_request(RequestFields(), version=version))
    assert isinstance(error, UnsupportedVersionError)
    assert error.code == "unsupported_version"
    assert error.version == version
    assert str(error) == (
        f"message has protocol version {version}, this side speaks version 2; use a client and server of the "
        "same protocol version (upgrade the older side: pip install -U lipsync-tools)"
    )


# a version 1 client's messages, as it wrote them (golden bytes of protocol version 1)
V1_MESSAGES: dict[str, bytes | str] = {
    "binary-frame-request": bytes.fromhex(
        "4c 53 59 4e 01 01 00 00 07 00 00 00 05 00 2a 00 00 00 03 01 01 00 00 00 00 00 00 00 00 00 00 00 "
        "61 6c 69 63 65 55"
    ),
    "binary-session-end": bytes.fromhex(
        "4c 53 59 4e 01 07 00 00 06 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    ),
    "json-frame-request": (
        '{"v":1,"type":"frame_request","request_id":7,"package_id":"alice","frame_index":42,'
        '"audio":"replay","image":"jpeg","jpeg_quality":85,"payload":""}'
    ),
    "json-session-end": '{"v":1,"type":"session_end","request_id":6}',
}


@pytest.mark.parametrize("key", list(V1_MESSAGES))
def test_a_v1_message_is_refused_with_its_version(key: str) -> None:
    codec = CODECS[key.split("-", 1)[0]]
    error = decode_error(codec, V1_MESSAGES[key])
    assert type(error) is UnsupportedVersionError
    assert (error.code, error.version) == ("unsupported_version", 1)
    assert "protocol version 1, this side speaks version 2" in str(error)
    assert "pip install -U lipsync-tools" in str(error)


def test_unsupported_version_error() -> None:
    error = UnsupportedVersionError(1)
    assert isinstance(error, ProtocolError)
    assert (error.code, error.version) == (ErrorCode.UNSUPPORTED_VERSION, 1)
    unknown = UnsupportedVersionError(None)
    assert unknown.version is None
    assert str(unknown).startswith("message has an unknown protocol version, this side speaks version 2;")
    huge = UnsupportedVersionError(10**4000)  # a JSON "v" may have thousands of digits
    assert huge.version == 10**4000 and len(str(huge)) < 200


def test_an_unsupported_version_reply_becomes_the_error_on_the_client() -> None:
    reply = ErrorReply.from_error(UnsupportedVersionError(3))
    error = reply.to_error()
    assert type(error) is UnsupportedVersionError
    assert (error.code, error.version, str(error)) == ("unsupported_version", None, reply.message)
    assert type(ErrorReply(request_id=0, code="internal", message="x").to_error()) is ProtocolError


# --- error replies for peers of another version -----------------------------------------------------------

V1_REPLY = ErrorReply.from_error(UnsupportedVersionError(1))


def wire_version(codec: Codec, wire: bytes | str) -> object:
    return wire[4] if isinstance(wire, bytes) else json.loads(wire)["v"]


@pytest.mark.parametrize(
    ("version", "written"),
    [(1, 1), (2, 2), (PROTOCOL_VERSION, PROTOCOL_VERSION), (9, PROTOCOL_VERSION), (0, PROTOCOL_VERSION),
     (None, PROTOCOL_VERSION), (True, PROTOCOL_VERSION), (256, PROTOCOL_VERSION), (-1, PROTOCOL_VERSION)],
)  # fmt: skip
def test_encode_error_writes_a_version_the_peer_reads(forge: Forge, version: Any, written: int) -> None:
    wire = forge.codec.encode_error(V1_REPLY, version)
    assert type(wire_version(forge.codec, wire)) is int and wire_version(forge.codec, wire) == written
    this_version = forge.codec.encode(V1_REPLY)
    if written == PROTOCOL_VERSION:
        assert wire == this_version
    else:  # the same layout: only the version differs
        assert decode_error(forge.codec, wire).code == "unsupported_version"
        if isinstance(wire, bytes):
            assert wire[:4] + bytes([PROTOCOL_VERSION]) + wire[5:] == this_version
        else:
            assert json.loads(wire) | {"v": PROTOCOL_VERSION} == json.loads(this_version)


def test_error_reply_versions() -> None:
    assert sorted(ERROR_REPLY_VERSIONS) == [1, 2]
    assert PROTOCOL_VERSION in ERROR_REPLY_VERSIONS


def test_encode_error_takes_only_error_replies(forge: Forge) -> None:
    with pytest.raises(TypeError):
        forge.codec.encode_error(SAMPLES["session-end"], 1)  # type: ignore[arg-type]


def test_idle_timeout_code() -> None:
    assert ErrorCode.IDLE_TIMEOUT == "idle_timeout"
    assert HTTP_STATUS[ErrorCode.IDLE_TIMEOUT] == 408
    assert ErrorCode.IDLE_TIMEOUT in CLOSING_ERROR_CODES
    assert set(HTTP_STATUS) == set(ErrorCode)


def test_unknown_message_type(forge: Forge) -> None:
    assert decode_error(forge.codec, forge.frame_request(RequestFields(), msg_type=200)).code == "bad_type"


def test_truncated(forge: Forge) -> None:
    wire = forge.codec.encode(SAMPLES["request-pcm"])
    assert decode_error(forge.codec, forge.truncate(wire)).code == forge.truncated_code


def test_trailing_garbage(forge: Forge) -> None:
    wire = forge.codec.encode(SAMPLES["request-pcm"])
    code = decode_error(forge.codec, forge.append_garbage(wire)).code
    assert code == ("trailing_data" if isinstance(forge, BinaryForge) else "invalid_json")


def test_oversize_payload(forge: Forge) -> None:
    assert decode_error(forge.codec, forge.oversize_reply()).code == "oversize"


def test_bad_utf8_text(forge: Forge) -> None:
    assert decode_error(forge.codec, forge.error_with_bad_text()).code == forge.bad_text_code


@pytest.mark.parametrize("data", [b"", b"\0" * 40, "", "null", b"GET / HTTP/1.1\r\n\r\n"])
def test_not_a_message(forge: Forge, data: bytes | str) -> None:
    assert decode_error(forge.codec, data).code in {"truncated", "bad_magic", "invalid_json"}


def test_error_reply_round_trips_a_protocol_error(forge: Forge) -> None:
    error = ProtocolError(ErrorCode.FRAME_OUT_OF_RANGE, "frame 300 is past the last frame 249 of 'alice'")
    reply = ErrorReply.from_error(error, request_id=12)
    decoded = forge.codec.decode(forge.codec.encode(reply))
    assert isinstance(decoded, ErrorReply)
    back = decoded.to_error()
    assert (back.code, str(back)) == ("frame_out_of_range", str(error))


def test_from_error_cuts_long_messages_to_the_limit() -> None:
    reply = ErrorReply.from_error(ProtocolError("internal", "é" * 5000))
    assert len(reply.message.encode()) <= 4096


# --- codec-specific rules ---------------------------------------------------------------------------------


def reply_fields(
    width: int = 1,
    height: int = 1,
    rect: tuple[int, int, int, int] = (0, 0, 0, 0),
    session_frame: int = 0,
    audio_offset: int = 0,
    count: int = 0,
) -> bytes:
    """The fixed part of a frame_reply field block, any values allowed."""
    return struct.pack("<HHHHHHIQB", width, height, *rect, session_frame, audio_offset, count)


def forge_reply_fields(fields: bytes, image: int = 1, payload: bytes = b"x", flags: int = 0) -> bytes:
    return BinaryForge.raw(2, image=image, flags=flags, fields=fields, payload=payload)


BINARY_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "bad-magic": (lambda: b"LSYX" + BinaryForge.raw(7, fields=END_FIELDS)[4:], "bad_magic"),
    "magic-prefix-only": (lambda: b"LS", "truncated"),
    "header-cut": (lambda: BinaryForge.raw(7, fields=END_FIELDS)[:31], "truncated"),
    "reserved-nonzero": (
        lambda: (r := BinaryForge.raw(7, fields=END_FIELDS))[:22] + b"\x01" + r[23:],
        "bad_field",
    ),
    "unknown-flag": (lambda: BinaryForge.raw(7, flags=0x0004, fields=END_FIELDS), "bad_field"),
    "timeline-flag-on-session-end": (
        lambda: BinaryForge.raw(7, flags=FLAG_TIMELINE, fields=END_FIELDS),
        "bad_field",
    ),
    "silence-flag-on-request": (
        lambda: (r := BinaryForge().frame_request(RequestFields()))[:6] + b"\x01\x00" + r[8:],
        "bad_field",
    ),
    "timeline-flag-on-request": (
        lambda: (r := BinaryForge().frame_request(RequestFields()))[:6] + b"\x02\x00" + r[8:],
        "bad_field",
    ),
    "package-id-on-session-end": (
        lambda: BinaryForge.raw(7, package_id=b"alice", fields=END_FIELDS),
        "bad_field",
    ),
    "frame-index-on-error": (lambda: BinaryForge.raw(3, frame_index=1, fields=b"\x01x"), "bad_field"),
    "audio-on-reply": (
        lambda: BinaryForge.raw(2, audio=1, image=1, fields=reply_fields(), payload=b"x"),
        "bad_field",
    ),
    "image-on-session-end": (lambda: BinaryForge.raw(7, image=1, fields=END_FIELDS), "bad_field"),
    "payload-on-session-end": (lambda: BinaryForge.raw(7, fields=END_FIELDS, payload=b"x"), "oversize"),
    "fields-on-session-end-short": (lambda: BinaryForge.raw(7, fields=b"x"), "bad_field"),
    "fields-on-session-end-none": (lambda: BinaryForge.raw(7), "bad_field"),  # the version 1 layout
    "fields-on-session-end-long": (lambda: BinaryForge.raw(7, fields=bytes(9)), "bad_field"),
    "claims-4gib-payload": (lambda: BinaryForge.raw(2, payload_len=0xFFFF_FFFF), "oversize"),
    "claims-huge-fields": (
        lambda: BinaryForge.raw(2)[:20] + b"\xff\xff" + BinaryForge.raw(2)[22:],
        "oversize",
    ),
    "claims-65535-byte-package-id": (
        lambda: BinaryForge.raw(1)[:12] + b"\xff\xff" + BinaryForge.raw(1)[14:],
        "bad_field",
    ),
    "reply-fields-short": (lambda: forge_reply_fields(b"\x01\x00"), "bad_field"),
    "reply-fields-v1-size": (  # version 1's 13-byte block, without the timeline
        lambda: forge_reply_fields(struct.pack("<HHHHHHB", 1, 1, 0, 0, 0, 0, 0)),
        "bad_field",
    ),
    "reply-timings-cut": (lambda: forge_reply_fields(reply_fields(count=1) + b"\x05infer"), "bad_field"),
    "reply-timings-extra-bytes": (lambda: forge_reply_fields(reply_fields() + b"\0"), "bad_field"),
    "reply-too-many-timings": (
        lambda: forge_reply_fields(reply_fields(count=33) + b"\x01a\0\0\0\0" * 33),
        "bad_field",
    ),
    "reply-duplicate-stage": (
        lambda: forge_reply_fields(reply_fields(count=2) + b"\x01a\0\0\0\0" * 2),
        "bad_field",
    ),
    "reply-rect-on-jpeg": (lambda: forge_reply_fields(reply_fields(rect=(0, 0, 2, 2))), "bad_field"),
    "reply-raw-size-mismatch": (
        lambda: forge_reply_fields(reply_fields(2, 2), image=3, payload=bytes(11)),
        "bad_field",
    ),
    "reply-unknown-flag": (lambda: forge_reply_fields(reply_fields(), flags=0x0004), "bad_field"),
    "reply-high-flag": (
        lambda: forge_reply_fields(reply_fields(), flags=0x8000 | FLAG_TIMELINE | FLAG_SILENCE),
        "bad_field",
    ),
    "reply-session-frame-without-flag": (
        lambda: forge_reply_fields(reply_fields(session_frame=3)),
        "bad_field",
    ),
    "reply-audio-offset-without-flag": (
        lambda: forge_reply_fields(reply_fields(audio_offset=1920)),
        "bad_field",
    ),
    "reply-audio-offset-2-53": (
        lambda: forge_reply_fields(reply_fields(audio_offset=MAX_AUDIO_OFFSET + 1), flags=FLAG_TIMELINE),
        "bad_field",
    ),
    "reply-audio-offset-u64-max": (
        lambda: forge_reply_fields(reply_fields(audio_offset=2**64 - 1), flags=FLAG_TIMELINE),
        "bad_field",
    ),
    "error-code-length-lies": (lambda: BinaryForge.raw(3, fields=b"\x09internal"), "bad_field"),
    "error-code-uppercase": (lambda: BinaryForge.raw(3, fields=b"\x08INTERNAL"), "bad_field"),
    "audio-chunk-odd": (lambda: BinaryForge.raw(6, payload=b"\0\0\0"), "bad_audio"),
    "audio-chunk-empty": (lambda: BinaryForge.raw(6), "bad_audio"),
    "audio-chunk-too-big": (lambda: BinaryForge.raw(6, payload_len=(1 << 20) + 2), "oversize"),
    "started-nan-fps": (
        lambda: BinaryForge.raw(5, package_id=b"a", fields=struct.pack("<dIHHI", float("nan"), 1, 1, 1, 0)),
        "bad_field",
    ),
    "started-v1-fields": (  # version 1's 16-byte block, without max_lag_ms
        lambda: BinaryForge.raw(5, package_id=b"a", fields=struct.pack("<dIHH", 25.0, 1, 1, 1)),
        "bad_field",
    ),
    "start-unknown-pacing": (
        lambda: BinaryForge.raw(4, package_id=b"a", image=1, fields=b"\x55\x07"),
        "bad_field",
    ),
}


@pytest.mark.parametrize("case", list(BINARY_CASES))
def test_binary_specific(case: str) -> None:
    make, code = BINARY_CASES[case]
    error = decode_error(CODECS["binary"], make())
    assert error.code == code, str(error)


def test_the_valid_forged_binary_messages_decode() -> None:
    # guards the cases above: they fail for the byte changed, not for a broken forge
    codec = CODECS["binary"]
    assert codec.decode(BinaryForge.raw(7, fields=END_FIELDS)) == SessionEnd(request_id=7)
    plain = codec.decode(forge_reply_fields(reply_fields()))
    assert isinstance(plain, FrameReply) and (plain.session_frame, plain.audio_offset) == (None, None)
    timed = codec.decode(
        forge_reply_fields(reply_fields(session_frame=3, audio_offset=MAX_AUDIO_OFFSET), flags=FLAG_TIMELINE)
    )
    assert isinstance(timed, FrameReply)
    assert (timed.session_frame, timed.audio_offset) == (3, MAX_AUDIO_OFFSET)
    zero = codec.decode(forge_reply_fields(reply_fields(), flags=FLAG_TIMELINE | FLAG_SILENCE))
    assert isinstance(zero, FrameReply)
    assert (zero.session_frame, zero.audio_offset, zero.silence) == (0, 0, True)


def test_binary_timeline_flag_is_set_exactly_for_session_frames() -> None:
    for key, msg in SAMPLES.items():
        if isinstance(msg, FrameReply):
            wire = CODECS["binary"].encode(msg)
            assert isinstance(wire, bytes)
            flags = int.from_bytes(wire[6:8], "little")
            assert bool(flags & FLAG_TIMELINE) == (msg.session_frame is not None), key
            assert bool(flags & FLAG_SILENCE) == msg.silence, key


def test_binary_refuses_text() -> None:
    assert decode_error(CODECS["binary"], '{"v":1}').code == "bad_magic"


def valid_json(key: str = "request-replay-raw") -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(CODECS["json"].encode(SAMPLES[key]))
    return obj


JSON_CASES: dict[str, tuple[Callable[[], str | bytes], str]] = {
    "not-json": (lambda: "{", "invalid_json"),
    "array": (lambda: "[1]", "invalid_json"),
    "nan": (
        lambda: JsonForge.dump(valid_json()).replace('"request_id":4294967295', '"request_id":NaN'),
        "invalid_json",
    ),
    "deep-nesting": (lambda: "[" * 100_000 + "]" * 100_000, "invalid_json"),
    "huge-integer": (lambda: '{"v":' + "9" * 10_000 + "}", "invalid_json"),
    "duplicate-key": (lambda: JsonForge.dump(valid_json())[:-1] + ',"v":1}', "invalid_json"),
    "utf16": (lambda: JsonForge.dump(valid_json()).encode("utf-16"), "invalid_json"),
    "no-version": (lambda: JsonForge.dump({k: v for k, v in valid_json().items() if k != "v"}), "bad_field"),
    "string-version": (lambda: JsonForge.dump(valid_json() | {"v": "1"}), "bad_field"),
    "no-type": (lambda: JsonForge.dump({"v": PROTOCOL_VERSION}), "bad_field"),
    "unknown-type": (lambda: JsonForge.dump(valid_json() | {"type": "frame_requests"}), "bad_type"),
    "missing-field": (
        lambda: JsonForge.dump({k: v for k, v in valid_json().items() if k != "image"}),
        "bad_field",
    ),
    "extra-field": (lambda: JsonForge.dump(valid_json() | {"debug": True}), "bad_field"),
    "bool-as-int": (lambda: JsonForge.dump(valid_json() | {"frame_index": True}), "bad_field"),
    "float-as-int": (lambda: JsonForge.dump(valid_json() | {"frame_index": 1.0}), "bad_field"),
    "negative-int": (lambda: JsonForge.dump(valid_json() | {"request_id": -1}), "bad_field"),
    "u32-overflow": (lambda: JsonForge.dump(valid_json() | {"frame_index": 2**32}), "bad_field"),
    "int-as-enum": (lambda: JsonForge.dump(valid_json() | {"audio": 3}), "bad_field"),
    "payload-not-string": (lambda: JsonForge.dump(valid_json() | {"payload": None}), "bad_field"),
    "base64-bad-char": (lambda: JsonForge.dump(valid_json("audio-chunk") | {"payload": "AA*A"}), "bad_field"),
    "base64-no-padding": (
        lambda: JsonForge.dump(valid_json("audio-chunk") | {"payload": "AAA"}),
        "bad_field",
    ),
    "base64-whitespace": (
        lambda: JsonForge.dump(valid_json("audio-chunk") | {"payload": "AA\nAA"}),
        "bad_field",
    ),
    "base64-non-ascii": (
        lambda: JsonForge.dump(valid_json("audio-chunk") | {"payload": "ÅÅÅÅ"}),
        "bad_field",
    ),
    "rect-not-list": (lambda: JsonForge.dump(valid_json("reply-crop") | {"rect": "1,2,3,4"}), "bad_field"),
    "rect-three": (lambda: JsonForge.dump(valid_json("reply-crop") | {"rect": [1, 2, 3]}), "bad_field"),
    "rect-empty": (lambda: JsonForge.dump(valid_json("reply-crop") | {"rect": [5, 5, 5, 9]}), "bad_field"),
    "rect-on-jpeg": (lambda: JsonForge.dump(valid_json("reply-jpeg") | {"rect": [0, 0, 1, 1]}), "bad_field"),
    "timings-list": (lambda: JsonForge.dump(valid_json("reply-jpeg") | {"timings": [1]}), "bad_field"),
    "timings-bad-name": (
        lambda: JsonForge.dump(valid_json("reply-jpeg") | {"timings": {"In fer": 1}}),
        "bad_field",
    ),
    "timings-float": (
        lambda: JsonForge.dump(valid_json("reply-jpeg") | {"timings": {"infer": 1.5}}),
        "bad_field",
    ),
    "too-many-timings": (
        lambda: JsonForge.dump(valid_json("reply-jpeg") | {"timings": {f"s{i}": i for i in range(33)}}),
        "bad_field",
    ),
    "silence-int": (lambda: JsonForge.dump(valid_json("reply-jpeg") | {"silence": 1}), "bad_field"),
    "fps-zero": (lambda: JsonForge.dump(valid_json("session-started") | {"fps": 0}), "bad_field"),
    "fps-string": (lambda: JsonForge.dump(valid_json("session-started") | {"fps": "25"}), "bad_field"),
    "fps-huge": (lambda: JsonForge.dump(valid_json("session-started") | {"fps": 1e308}), "bad_field"),
    "unknown-pacing": (lambda: JsonForge.dump(valid_json("session-start") | {"pacing": "fast"}), "bad_field"),
    "error-message-too-long": (
        lambda: JsonForge.dump(valid_json("error") | {"message": "x" * 4097}),
        "oversize",
    ),
    "error-message-surrogate": (
        lambda: JsonForge.dump(valid_json("error") | {"message": "\ud800"}),
        "bad_field",
    ),
    "message-too-big": (lambda: " " * (MAX_JSON_MESSAGE_BYTES + 1), "oversize"),
    "session-frame-without-offset": (
        lambda: JsonForge.dump(valid_json("reply-jpeg") | {"session_frame": 3}),
        "bad_field",
    ),
    "offset-without-session-frame": (
        lambda: JsonForge.dump(valid_json("reply-jpeg") | {"audio_offset": 1920}),
        "bad_field",
    ),
    "session-frame-null-in-session": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"session_frame": None}),
        "bad_field",
    ),
    "audio-offset-2-53": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"audio_offset": MAX_AUDIO_OFFSET + 1}),
        "bad_field",
    ),
    "audio-offset-negative": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"audio_offset": -1}),
        "bad_field",
    ),
    "audio-offset-float": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"audio_offset": 1920.0}),
        "bad_field",
    ),
    "audio-offset-string": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"audio_offset": "1920"}),
        "bad_field",
    ),
    "session-frame-bool": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"session_frame": True}),
        "bad_field",
    ),
    "session-frame-u32-overflow": (
        lambda: JsonForge.dump(valid_json("reply-session-jpeg") | {"session_frame": 2**32}),
        "bad_field",
    ),
    "reply-without-timeline-keys": (  # only session_end's counters are optional
        lambda: JsonForge.dump(
            {k: v for k, v in valid_json("reply-jpeg").items() if k not in ("session_frame", "audio_offset")}
        ),
        "bad_field",
    ),
    "started-without-max-lag": (
        lambda: JsonForge.dump({k: v for k, v in valid_json("session-started").items() if k != "max_lag_ms"}),
        "bad_field",
    ),
    "max-lag-negative": (
        lambda: JsonForge.dump(valid_json("session-started") | {"max_lag_ms": -1}),
        "bad_field",
    ),
    "max-lag-u32-overflow": (
        lambda: JsonForge.dump(valid_json("session-started") | {"max_lag_ms": 2**32}),
        "bad_field",
    ),
    "max-lag-null": (
        lambda: JsonForge.dump(valid_json("session-started") | {"max_lag_ms": None}),
        "bad_field",
    ),
    "frames-sent-null": (
        lambda: JsonForge.dump(valid_json("session-end") | {"frames_sent": None}),
        "bad_field",
    ),
    "frames-dropped-float": (
        lambda: JsonForge.dump(valid_json("session-end") | {"frames_dropped": 1.0}),
        "bad_field",
    ),
    "frames-sent-u32-overflow": (
        lambda: JsonForge.dump(valid_json("session-end") | {"frames_sent": 2**32}),
        "bad_field",
    ),
    "session-end-extra-field": (
        lambda: JsonForge.dump(valid_json("session-end") | {"frames": 1}),
        "bad_field",
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_json_specific(case: str) -> None:
    make, code = JSON_CASES[case]
    error = decode_error(CODECS["json"], make())
    assert error.code == code, str(error)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, SessionEnd(request_id=6)),
        ({"frames_sent": 240}, SessionEnd(request_id=6, frames_sent=240)),
        ({"frames_dropped": 12}, SessionEnd(request_id=6, frames_dropped=12)),
        (
            {"frames_sent": 240, "frames_dropped": 12},
            SessionEnd(request_id=6, frames_sent=240, frames_dropped=12),
        ),
    ],
)
def test_json_session_end_counters_are_optional(keys: dict[str, int], expected: SessionEnd) -> None:
    text = JsonForge.dump({"v": PROTOCOL_VERSION, "type": "session_end", "request_id": 6} | keys)
    assert CODECS["json"].decode(text) == expected
    # the encoder always writes both
    assert json.loads(CODECS["json"].encode(expected))["frames_sent"] == expected.frames_sent


def test_json_optional_keys_are_keys_of_their_type() -> None:
    from lipsync_tools.protocol.json_codec import FIELDS, OPTIONAL

    assert {t: set(keys) for t, keys in OPTIONAL.items()} == {
        MessageType.SESSION_END: {"frames_sent", "frames_dropped"}
    }
    for msg_type, defaults in OPTIONAL.items():
        assert set(defaults) <= set(FIELDS[msg_type]) - {"v", "type", "request_id"}


def test_json_field_order_is_fixed() -> None:
    from lipsync_tools.protocol.json_codec import FIELDS

    for msg in SAMPLES.values():
        assert tuple(json.loads(CODECS["json"].encode(msg))) == FIELDS[msg.TYPE]
