"""Golden wire data: these exact bytes and texts are the protocol; a change here is a version bump.

The same hex dumps appear as worked examples in docs/protocol.md (fenced ``hex <name>`` blocks); the last
test keeps the spec and these constants identical.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lipsync_tools.protocol import (
    CODECS,
    AudioFormat,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    SessionStart,
)

GOLDEN: dict[str, tuple[Message, str, str]] = {
    # name: (message, binary hex, JSON text)
    "frame-request": (
        FrameRequest(
            request_id=7, package_id="alice", frame_index=42, audio=AudioFormat.REPLAY, jpeg_quality=85
        ),
        """
        4c 53 59 4e 01 01 00 00 07 00 00 00 05 00 2a 00
        00 00 03 01 01 00 00 00 00 00 00 00 00 00 00 00
        61 6c 69 63 65 55
        """,
        '{"v":1,"type":"frame_request","request_id":7,"package_id":"alice","frame_index":42,'
        '"audio":"replay","image":"jpeg","jpeg_quality":85,"payload":""}',
    ),
    "frame-reply": (
        FrameReply(
            request_id=7,
            frame_index=42,
            image=ImageFormat.JPEG,
            width=1280,
            height=720,
            timings={"infer": 3456, "encode": 789},
            payload=b"\xff\xd8\xff\xd9",
        ),
        """
        4c 53 59 4e 01 02 00 00 07 00 00 00 00 00 2a 00
        00 00 00 01 22 00 00 00 04 00 00 00 00 00 00 00
        00 05 d0 02 00 00 00 00 00 00 00 00 02 05 69 6e
        66 65 72 80 0d 00 00 06 65 6e 63 6f 64 65 15 03
        00 00 ff d8 ff d9
        """,
        '{"v":1,"type":"frame_reply","request_id":7,"frame_index":42,"image":"jpeg","width":1280,"height":720,'
        '"rect":null,"silence":false,"timings":{"infer":3456,"encode":789},"payload":"/9j/2Q=="}',
    ),
    "crop-reply": (
        FrameReply(
            request_id=8,
            frame_index=43,
            image=ImageFormat.CROP_ONLY,
            width=2,
            height=1,
            rect=(600, 380, 696, 476),
            timings={"infer": 2500},
            payload=bytes([0, 0, 255, 255, 255, 255]),
        ),
        """
        4c 53 59 4e 01 02 00 00 08 00 00 00 00 00 2b 00
        00 00 00 04 17 00 00 00 06 00 00 00 00 00 00 00
        02 00 01 00 58 02 7c 01 b8 02 dc 01 01 05 69 6e
        66 65 72 c4 09 00 00 00 00 ff ff ff ff
        """,
        '{"v":1,"type":"frame_reply","request_id":8,"frame_index":43,"image":"crop_only","width":2,"height":1,'
        '"rect":[600,380,696,476],"silence":false,"timings":{"infer":2500},"payload":"AAD/////"}',
    ),
    "error-reply": (
        ErrorReply(request_id=7, code=ErrorCode.UNKNOWN_PACKAGE, message="no package 'bob'"),
        """
        4c 53 59 4e 01 03 00 00 07 00 00 00 00 00 00 00
        00 00 00 00 10 00 00 00 10 00 00 00 00 00 00 00
        0f 75 6e 6b 6e 6f 77 6e 5f 70 61 63 6b 61 67 65
        6e 6f 20 70 61 63 6b 61 67 65 20 27 62 6f 62 27
        """,
        '{"v":1,"type":"error_reply","request_id":7,"code":"unknown_package","message":"no package \'bob\'"}',
    ),
    "session-start": (
        SessionStart(request_id=1, package_id="alice"),
        """
        4c 53 59 4e 01 04 00 00 01 00 00 00 05 00 00 00
        00 00 00 01 02 00 00 00 00 00 00 00 00 00 00 00
        61 6c 69 63 65 55 01
        """,
        '{"v":1,"type":"session_start","request_id":1,"package_id":"alice","start_frame":0,"image":"jpeg",'
        '"jpeg_quality":85,"pacing":"realtime"}',
    ),
}


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
        "4c 53 59 4e 01 01 00 00 09 00 00 00 05 00 2c 00 00 00 01 01 01 00 00 00 00 19 00 00 00 00 00 00"
    )
    assert len(wire) == 32 + 5 + 1 + 6400


def test_spec_examples_match_golden_bytes() -> None:
    spec = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"```hex (\S+)\n(.*?)```", spec, flags=re.DOTALL))
    assert set(blocks) == set(GOLDEN)
    for name, block in blocks.items():
        # spec dumps are "offset: bytes" lines; drop the offsets
        dump = " ".join(line.split(":", 1)[1] for line in block.strip().splitlines())
        assert golden_bytes(dump) == golden_bytes(GOLDEN[name][1]), name
    for name, (_, _, text) in GOLDEN.items():
        assert text in spec, f"JSON example {name} missing from docs/protocol.md"
