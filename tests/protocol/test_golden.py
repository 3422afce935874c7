"""Golden wire data: these exact bytes and texts are the protocol; a change here is a version bump.

The same hex dumps appear as worked examples in docs/protocol.md (fenced ``hex <name>`` blocks); the last
test keeps the spec and these constants identical.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from lipsync_tools.protocol import (
    CODECS,
    MAGIC,
    PROTOCOL_VERSION,
    AudioFormat,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    SessionEnd,
    SessionStart,
    SessionStarted,
    UnsupportedVersionError,
)

GOLDEN: dict[str, tuple[Message, str, str]] = {
    # name: (message, binary hex, JSON text)
    "frame-request": (
        FrameRequest(
            request_id=7, package_id="alice", frame_index=42, audio=AudioFormat.REPLAY, jpeg_quality=85
        ),
        """
        4c 53 59 4e 02 01 00 00 07 00 00 00 05 00 2a 00
        00 00 03 01 01 00 00 00 00 00 00 00 00 00 00 00
        61 6c 69 63 65 55
        """,
        '{"v":2,"type":"frame_request","request_id":7,"package_id":"alice","frame_index":42,'
        '"audio":"replay","image":"jpeg","jpeg_quality":85,"payload":""}',
    ),
    "frame-reply": (
        FrameReply(
            request_id=7,
            frame_index=42,
            image=ImageFormat.JPEG,
            width=1280,
            height=720,
            timings={"inference": 3456, "encode": 789},
            payload=b"\xff\xd8\xff\xd9",
        ),
        """
        4c 53 59 4e 02 02 00 00 07 00 00 00 00 00 2a 00
        00 00 00 01 32 00 00 00 04 00 00 00 00 00 00 00
        00 05 d0 02 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 02 09 69 6e 66 65 72 65
        6e 63 65 80 0d 00 00 06 65 6e 63 6f 64 65 15 03
        00 00 ff d8 ff d9
        """,
        '{"v":2,"type":"frame_reply","request_id":7,"frame_index":42,"image":"jpeg","width":1280,"height":720,'
        '"rect":null,"silence":false,"session_frame":null,"audio_offset":null,'
        '"timings":{"inference":3456,"encode":789},"payload":"/9j/2Q=="}',
    ),
    "crop-reply": (
        FrameReply(
            request_id=8,
            frame_index=43,
            image=ImageFormat.CROP_ONLY,
            width=2,
            height=1,
            rect=(600, 380, 696, 476),
            timings={"inference": 2500},
            payload=bytes([0, 0, 255, 255, 255, 255]),
        ),
        """
        4c 53 59 4e 02 02 00 00 08 00 00 00 00 00 2b 00
        00 00 00 04 27 00 00 00 06 00 00 00 00 00 00 00
        02 00 01 00 58 02 7c 01 b8 02 dc 01 00 00 00 00
        00 00 00 00 00 00 00 00 01 09 69 6e 66 65 72 65
        6e 63 65 c4 09 00 00 00 00 ff ff ff ff
        """,
        '{"v":2,"type":"frame_reply","request_id":8,"frame_index":43,"image":"crop_only","width":2,"height":1,'
        '"rect":[600,380,696,476],"silence":false,"session_frame":null,"audio_offset":null,'
        '"timings":{"inference":2500},"payload":"AAD/////"}',
    ),
    "session-frame-reply": (
        FrameReply(
            request_id=0,
            frame_index=45,
            image=ImageFormat.CROP_ONLY,
            width=2,
            height=1,
            rect=(600, 380, 696, 476),
            timings={"inference": 2500},
            session_frame=3,
            audio_offset=1920,
            payload=bytes([0, 0, 255, 255, 255, 255]),
        ),
        """
        4c 53 59 4e 02 02 02 00 00 00 00 00 00 00 2d 00
        00 00 00 04 27 00 00 00 06 00 00 00 00 00 00 00
        02 00 01 00 58 02 7c 01 b8 02 dc 01 03 00 00 00
        80 07 00 00 00 00 00 00 01 09 69 6e 66 65 72 65
        6e 63 65 c4 09 00 00 00 00 ff ff ff ff
        """,
        '{"v":2,"type":"frame_reply","request_id":0,"frame_index":45,"image":"crop_only","width":2,"height":1,'
        '"rect":[600,380,696,476],"silence":false,"session_frame":3,"audio_offset":1920,'
        '"timings":{"inference":2500},"payload":"AAD/////"}',
    ),
    "error-reply": (
        ErrorReply(request_id=7, code=ErrorCode.UNKNOWN_PACKAGE, message="no package 'bob'"),
        """
        4c 53 59 4e 02 03 00 00 07 00 00 00 00 00 00 00
        00 00 00 00 10 00 00 00 10 00 00 00 00 00 00 00
        0f 75 6e 6b 6e 6f 77 6e 5f 70 61 63 6b 61 67 65
        6e 6f 20 70 61 63 6b 61 67 65 20 27 62 6f 62 27
        """,
        '{"v":2,"type":"error_reply","request_id":7,"code":"unknown_package","message":"no package \'bob\'"}',
    ),
    "session-start": (
        SessionStart(request_id=1, package_id="alice"),
        """
        4c 53 59 4e 02 04 00 00 01 00 00 00 05 00 00 00
        00 00 00 01 02 00 00 00 00 00 00 00 00 00 00 00
        61 6c 69 63 65 55 01
        """,
        '{"v":2,"type":"session_start","request_id":1,"package_id":"alice","start_frame":0,"image":"jpeg",'
        '"jpeg_quality":85,"pacing":"realtime"}',
    ),
    "session-started": (
        SessionStarted(
            request_id=1,
            package_id="alice",
            fps=25.0,
            frame_count=250,
            width=1280,
            height=720,
            max_lag_ms=200,
        ),
        """
        4c 53 59 4e 02 05 00 00 01 00 00 00 05 00 00 00
        00 00 00 00 14 00 00 00 00 00 00 00 00 00 00 00
        61 6c 69 63 65 00 00 00 00 00 00 39 40 fa 00 00
        00 00 05 d0 02 c8 00 00 00
        """,
        '{"v":2,"type":"session_started","request_id":1,"package_id":"alice","fps":25.0,"frame_count":250,'
        '"width":1280,"height":720,"max_lag_ms":200}',
    ),
    "session-end": (
        SessionEnd(request_id=1, frames_sent=240, frames_dropped=12),
        """
        4c 53 59 4e 02 07 00 00 01 00 00 00 00 00 00 00
        00 00 00 00 08 00 00 00 00 00 00 00 00 00 00 00
        f0 00 00 00 0c 00 00 00
        """,
        '{"v":2,"type":"session_end","request_id":1,"frames_sent":240,"frames_dropped":12}',
    ),
}

V1_ERROR_MESSAGE = (
    "message has protocol version 1, this side speaks version 2; use a client and server of the same "
    "protocol version (upgrade the older side: pip install -U lipsync-tools)"
)
V1_ERROR: tuple[ErrorReply, str, str] = (
    # what a version 2 server answers a version 1 client with: encode_error(reply, 1)
    ErrorReply(request_id=0, code=ErrorCode.UNSUPPORTED_VERSION, message=V1_ERROR_MESSAGE),
    """
    4c 53 59 4e 01 03 00 00 00 00 00 00 00 00 00 00
    00 00 00 00 14 00 00 00 a7 00 00 00 00 00 00 00
    13 75 6e 73 75 70 70 6f 72 74 65 64 5f 76 65 72
    73 69 6f 6e 6d 65 73 73 61 67 65 20 68 61 73 20
    70 72 6f 74 6f 63 6f 6c 20 76 65 72 73 69 6f 6e
    20 31 2c 20 74 68 69 73 20 73 69 64 65 20 73 70
    65 61 6b 73 20 76 65 72 73 69 6f 6e 20 32 3b 20
    75 73 65 20 61 20 63 6c 69 65 6e 74 20 61 6e 64
    20 73 65 72 76 65 72 20 6f 66 20 74 68 65 20 73
    61 6d 65 20 70 72 6f 74 6f 63 6f 6c 20 76 65 72
    73 69 6f 6e 20 28 75 70 67 72 61 64 65 20 74 68
    65 20 6f 6c 64 65 72 20 73 69 64 65 3a 20 70 69
    70 20 69 6e 73 74 61 6c 6c 20 2d 55 20 6c 69 70
    73 79 6e 63 2d 74 6f 6f 6c 73 29
    """,
    f'{{"v":1,"type":"error_reply","request_id":0,"code":"unsupported_version","message":"{V1_ERROR_MESSAGE}"}}',
)


def golden_bytes(hex_dump: str) -> bytes:
    return bytes.fromhex(" ".join(hex_dump.split()))


@pytest.mark.parametrize("name", list(GOLDEN))
def test_binary_golden(name: str) -> None:
    msg, hex_dump, _ = GOLDEN[name]
    assert CODECS["binary"].encode(msg) == golden_bytes(hex_dump)
    assert CODECS["binary"].decode(golden_bytes(hex_dump)) == msg


@pytest.mark.parametrize("name", list(GOLDEN))
def test_json_golden(name: str) -> None:
    msg, _, text = GOLDEN[name]
    assert CODECS["json"].encode(msg) == text
    assert CODECS["json"].decode(text) == msg


def test_pcm_request_header() -> None:
    msg = FrameRequest(
        request_id=9, package_id="alice", frame_index=44, audio=AudioFormat.PCM16, payload=bytes(6400)
    )
    wire = CODECS["binary"].encode(msg)
    assert wire[:32] == golden_bytes(
        "4c 53 59 4e 02 01 00 00 09 00 00 00 05 00 2c 00 00 00 01 01 01 00 00 00 00 19 00 00 00 00 00 00"
    )
    assert len(wire) == 32 + 5 + 1 + 6400


# --- the error a version 2 side sends a version 1 peer ----------------------------------------------------


def test_v1_error_reply_golden() -> None:
    reply, hex_dump, text = V1_ERROR
    error = UnsupportedVersionError(1)
    assert str(error) == V1_ERROR_MESSAGE
    assert ErrorReply.from_error(error) == reply
    assert CODECS["binary"].encode_error(reply, 1) == golden_bytes(hex_dump)
    assert CODECS["json"].encode_error(reply, 1) == text


def read_v1_error_reply(data: bytes) -> tuple[int, str, str]:
    """(request id, code, message) of a binary error_reply, read the way a version 1 peer reads it."""
    header = struct.Struct("<4sBBHIHIBBH2sI4s")  # the version 1 header, spelt out independently of binary.py
    magic, version, msg_type, flags, request_id, pid_len, _, _, _, fields_len, _, payload_len, _ = (
        header.unpack_from(data)
    )
    assert (magic, version, msg_type, flags, pid_len) == (MAGIC, 1, 3, 0, 0)
    assert len(data) == 32 + fields_len + payload_len
    fields = data[32 : 32 + fields_len]
    assert fields[0] == fields_len - 1
    return request_id, fields[1:].decode("ascii"), data[32 + fields_len :].decode("utf-8")


def test_a_v1_peer_reads_the_error() -> None:
    reply, hex_dump, text = V1_ERROR
    wire = golden_bytes(hex_dump)
    assert read_v1_error_reply(wire) == (0, "unsupported_version", V1_ERROR_MESSAGE)
    # the same layout as this version's error_reply: only the version byte differs
    assert wire[:4] + bytes([PROTOCOL_VERSION]) + wire[5:] == CODECS["binary"].encode(reply)
    obj = json.loads(text)
    assert list(obj) == ["v", "type", "request_id", "code", "message"]
    assert obj | {"v": PROTOCOL_VERSION} == json.loads(CODECS["json"].encode(reply))


def test_spec_examples_match_golden_bytes() -> None:
    spec = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"```hex (\S+)\n(.*?)```", spec, flags=re.DOTALL))
    expected = {name: hex_dump for name, (_, hex_dump, _) in GOLDEN.items()} | {"error-reply-v1": V1_ERROR[1]}
    assert set(blocks) == set(expected)
    for name, block in blocks.items():
        # spec dumps are "offset: bytes" lines; drop the offsets
        dump = " ".join(line.split(":", 1)[1] for line in block.strip().splitlines())
        assert golden_bytes(dump) == golden_bytes(expected[name]), name
    for name, (_, _, text) in [*GOLDEN.items(), ("error-reply-v1", V1_ERROR)]:
        assert text in spec, f"JSON example {name} missing from docs/protocol.md"


def test_the_spec_names_only_timing_stages_the_engines_emit() -> None:
    """docs/protocol.md's worked examples and its list of stage names use the engines' real names."""
    from lipsync_tools.baseline.original import ORIGINAL_STAGES
    from lipsync_tools.engine.engine import SILENT_STAGES, STAGES

    emitted = set(STAGES) | set(SILENT_STAGES) | set(ORIGINAL_STAGES)
    for name, (message, _, _) in GOLDEN.items():
        if isinstance(message, FrameReply):
            assert set(message.timings) <= emitted, name
    spec = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    named = set(re.findall(r'"timings":\{([^}]*)\}', spec))
    for timings in named:
        assert set(json.loads("{" + timings + "}")) <= emitted, timings
