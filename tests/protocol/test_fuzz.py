"""Fuzz-style malformed input: whatever arrives, decode returns a valid message or raises ProtocolError.

No struct.error, UnicodeDecodeError, MemoryError, RecursionError or huge allocation may escape. Seeded, so a
failure reproduces; bounded to a few thousand cases per codec so the suite stays fast.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc

import pytest

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import CODECS, MAGIC, MAX_REPLY_PAYLOAD, Codec
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
            data = MAGIC + b"\x01" + data  # get past the magic and version checks
        if rng.random() < 0.3 and codec.name == "json":
            data = b'{"v":1,"type":"' + data
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
            MAGIC, 1, rng.randrange(10), rng.choice((0, 1, rng.randrange(65536))), rng.randrange(2**32),
            rng.choice((0, 5, rng.randrange(80), rng.randrange(65536))), rng.randrange(2**32),
            rng.randrange(6), rng.randrange(6), rng.choice((0, 1, 2, 13, 16, rng.randrange(65536))), b"\0\0",
            rng.choice((0, 4, 6400, rng.randrange(2**32))), b"\0\0\0\0",
        ]  # fmt: skip
        tail = rng.randbytes(rng.randrange(0, 200))
        decode_or_protocol_error(codec, HEADER.pack(*fields) + tail)


def test_json_structure_fuzz() -> None:
    """Every field of every JSON message replaced by values of every JSON type."""
    codec = CODECS["json"]
    values: list[object] = [None, True, False, -1, 0, 2**32, 2**70, 1.5, "", "x", "a/b", [], [1, 2, 3, 4], {}]
    for msg in SAMPLES.values():
        obj = json.loads(codec.encode(msg))
        for key in obj:
            for value in values:
                decode_or_protocol_error(codec, json.dumps(obj | {key: value}))
            decode_or_protocol_error(codec, json.dumps({k: v for k, v in obj.items() if k != key}))


def test_lying_length_fails_fast_without_allocating() -> None:
    # a header claiming a 4 GiB payload, then a few bytes
    data = HEADER.pack(MAGIC, 1, 2, 0, 1, 0, 0, 0, 1, 13, b"\0\0", 0xFFFF_FFFF, b"\0\0\0\0") + bytes(13)
    also_in_limit = HEADER.pack(MAGIC, 1, 2, 0, 1, 0, 0, 0, 1, 13, b"\0\0", MAX_REPLY_PAYLOAD, b"\0\0\0\0")
    tracemalloc.start()
    started = time.perf_counter()
    for wire, code in ((data, "oversize"), (also_in_limit + bytes(13), "truncated")):
        for _ in range(1000):
            with pytest.raises(ProtocolError) as info:
                CODECS["binary"].decode(wire)
            assert info.value.code == code
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, f"decoding lying headers allocated {peak} bytes"
    assert elapsed < 2.0, f"2000 lying headers took {elapsed:.2f} s"
