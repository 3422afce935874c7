"""Fuzz-style malformed input: whatever arrives, decode returns a valid message or raises ProtocolError.

No struct.error, UnicodeDecodeError, MemoryError, RecursionError or huge allocation may escape. Seeded, so a
failure reproduces; bounded to a few thousand cases per codec so the suite stays fast.
"""

from __future__ import annotations

import json
import math
import random
import time
import tracemalloc

import pytest

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    FLAG_SILENCE,
    FLAG_TIMELINE,
    MAGIC,
    MAX_AUDIO_OFFSET,
    MAX_REPLY_PAYLOAD,
    PROTOCOL_VERSION,
    Codec,
    FrameReply,
    ImageFormat,
    Message,
    SessionEnd,
    SessionStarted,
)
from lipsync_tools.protocol.binary import HEADER
from tests.protocol import sample_messages

SAMPLES = sample_messages()
CASES_PER_KIND = 1500


def decode_or_protocol_error(codec: Codec, data: bytes | str) -> None:
    """Decode ``data``; a message that decodes must re-encode and decode to itself."""
    try:
        msg = codec.decode(data)
    except ProtocolError as error:
        assert isinstance(error.code, str) and error.code, repr(error)
        return
    assert codec.decode(codec.encode(msg)) == msg


def wire_bytes(codec: Codec, key: str) -> bytes:
    wire = codec.encode(SAMPLES[key])
    return wire.encode() if isinstance(wire, str) else wire


@pytest.fixture(params=list(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    return CODECS[request.param]


def test_truncations(codec: Codec) -> None:
    rng = random.Random(1)
    for key in SAMPLES:
        wire = wire_bytes(codec, key)
        cuts = range(len(wire)) if len(wire) < 200 else rng.sample(range(len(wire)), 150)
        for cut in cuts:
            with pytest.raises(ProtocolError):
                codec.decode(wire[:cut])


def test_byte_flips(codec: Codec) -> None:
    rng = random.Random(2)
    keys = list(SAMPLES)
    for _ in range(CASES_PER_KIND):
        data = bytearray(wire_bytes(codec, rng.choice(keys)))
        # most flips land in the header and fields, where the parsing is
        span = min(len(data), 120)
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            data[rng.randrange(span)] = rng.randrange(256)
        decode_or_protocol_error(codec, bytes(data))


def test_random_garbage(codec: Codec) -> None:
    rng = random.Random(3)
    for _ in range(CASES_PER_KIND):
        size = rng.choice((rng.randrange(0, 40), rng.randrange(0, 300), rng.randrange(0, 5000)))
        data = rng.randbytes(size)
        if rng.random() < 0.5 and codec.name == "binary":
            data = MAGIC + bytes([PROTOCOL_VERSION]) + data  # get past the magic and version checks
        if rng.random() < 0.3 and codec.name == "json":
            data = b'{"v":%d,"type":"' % PROTOCOL_VERSION + data
        decode_or_protocol_error(codec, data)
        try:
            text = data.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            continue
        decode_or_protocol_error(codec, text)


def test_random_headers() -> None:
    """Well-formed magic and version with every other header field random: the interesting binary space."""
    rng = random.Random(4)
    codec = CODECS["binary"]
    for _ in range(CASES_PER_KIND * 2):
        fields = [
            MAGIC, PROTOCOL_VERSION, rng.randrange(10), rng.choice((0, 1, 2, 3, 4, rng.randrange(65536))),
            rng.randrange(2**32), rng.choice((0, 5, rng.randrange(80), rng.randrange(65536))),
            rng.randrange(2**32), rng.randrange(6), rng.randrange(6),
            rng.choice((0, 1, 2, 8, 13, 16, 20, 25, rng.randrange(65536))), b"\0\0",
            rng.choice((0, 4, 6400, rng.randrange(2**32))), b"\0\0\0\0",
        ]  # fmt: skip
        tail = rng.randbytes(rng.randrange(0, 200))
        decode_or_protocol_error(codec, HEADER.pack(*fields) + tail)


def test_json_structure_fuzz() -> None:
    """Every field of every JSON message replaced by values of every JSON type."""
    codec = CODECS["json"]
    values: list[object] = [
        None, True, False, -1, 0, 3, 2**32, 2**53 - 1, 2**53, 2**64, 2**70, 1.5, 1920.0, "", "x", "a/b", [],
        [1, 2, 3, 4], {},
    ]  # fmt: skip
    for msg in SAMPLES.values():
        obj = json.loads(codec.encode(msg))
        for key in obj:
            for value in values:
                decode_or_protocol_error(codec, json.dumps(obj | {key: value}))
            decode_or_protocol_error(codec, json.dumps({k: v for k, v in obj.items() if k != key}))


def test_lying_length_fails_fast_without_allocating() -> None:
    # a header claiming a 4 GiB payload, then a few bytes
    def reply_header(payload_len: int) -> bytes:
        return HEADER.pack(
            MAGIC, PROTOCOL_VERSION, 2, FLAG_TIMELINE, 1, 0, 0, 0, 1, 25, b"\0\0", payload_len, b"\0\0\0\0"
        )

    data = reply_header(0xFFFF_FFFF)
    in_limit = reply_header(MAX_REPLY_PAYLOAD)
    tracemalloc.start()
    started = time.perf_counter()
    for wire, code in ((data + bytes(25), "oversize"), (in_limit + bytes(25), "truncated")):
        for _ in range(1000):
            with pytest.raises(ProtocolError) as info:
                CODECS["binary"].decode(wire)
            assert info.value.code == code
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, f"decoding lying headers allocated {peak} bytes"
    assert elapsed < 2.0, f"2000 lying headers took {elapsed:.2f} s"


# --- random valid messages: the new fields of version 2 over their whole range ---------------------------


def _edge(rng: random.Random, maximum: int) -> int:
    return rng.choice((0, 1, maximum - 1, maximum, rng.randrange(maximum + 1), rng.randrange(1 << 16)))


def random_message(rng: random.Random) -> Message:
    """A valid FrameReply, SessionStarted or SessionEnd with random values, edges favoured."""
    kind = rng.randrange(3)
    if kind == 0:
        image = rng.choice(list(ImageFormat))
        width, height = rng.randrange(1, 5), rng.randrange(1, 5)
        raw = image in (ImageFormat.RAW_BGR, ImageFormat.CROP_ONLY)
        timeline = rng.random() < 0.7
        x0, y0 = rng.randrange(0xFFFF), rng.randrange(0xFFFF)
        return FrameReply(
            request_id=_edge(rng, 0xFFFF_FFFF),
            frame_index=_edge(rng, 0xFFFF_FFFF),
            image=image,
            width=width,
            height=height,
            rect=(x0, y0, rng.randrange(x0 + 1, 0x10000), rng.randrange(y0 + 1, 0x10000))
            if image.is_crop
            else None,
            silence=rng.random() < 0.3,
            session_frame=_edge(rng, 0xFFFF_FFFF) if timeline else None,
            audio_offset=_edge(rng, MAX_AUDIO_OFFSET) if timeline else None,
            timings={f"s{i}": _edge(rng, 0xFFFF_FFFF) for i in range(rng.randrange(4))},
            payload=rng.randbytes(width * height * 3 if raw else rng.randrange(1, 20)),
        )
    if kind == 1:
        return SessionStarted(
            request_id=_edge(rng, 0xFFFF_FFFF),
            package_id="alice",
            fps=rng.choice((25.0, 29.97002997002997, 1000.0, math.nextafter(0.0, 1.0))),
            frame_count=rng.randrange(1, 1 << 32),
            width=rng.randrange(1, 1 << 16),
            height=rng.randrange(1, 1 << 16),
            max_lag_ms=_edge(rng, 0xFFFF_FFFF),
        )
    return SessionEnd(
        request_id=_edge(rng, 0xFFFF_FFFF),
        frames_sent=_edge(rng, 0xFFFF_FFFF),
        frames_dropped=_edge(rng, 0xFFFF_FFFF),
    )


def test_random_messages_round_trip(codec: Codec) -> None:
    rng = random.Random(5)
    for _ in range(CASES_PER_KIND):
        msg = random_message(rng)
        wire = codec.encode(msg)
        assert codec.decode(wire) == msg
        assert codec.encode(codec.decode(wire)) == wire
        if isinstance(msg, FrameReply) and isinstance(wire, bytes):
            flags = int.from_bytes(wire[6:8], "little")
            assert flags == (FLAG_SILENCE if msg.silence else 0) | (
                FLAG_TIMELINE if msg.session_frame is not None else 0
            )
