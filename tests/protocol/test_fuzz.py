"""Fuzz-style malformed input: whatever arrives, decode returns a valid message or raises ProtocolError.

No struct.error, UnicodeDecodeError, MemoryError, RecursionError or huge allocation may escape. Two kinds:

- seeded loops (the first half), bounded to a few thousand cases per codec so the suite stays fast;
- Hypothesis properties (the second half): every message type round trips in both codecs over its whole
  documented range, and arbitrary or near-valid input (mutated headers, truncations, JSON with random keys,
  values, huge numbers, NaN, deep nesting, duplicate keys) raises only ``ProtocolError`` with a documented
  ``ErrorCode``, the first check the spec orders deciding the code. ``pytest --fuzz-long`` runs them with
  the ``fuzz-long`` profile of tests/conftest.py; the file prints how many cases ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    ERROR_REPLY_VERSIONS,
    FLAG_SILENCE,
    FLAG_TIMELINE,
    MAGIC,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_AUDIO_OFFSET,
    MAX_BINARY_MESSAGE_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_JSON_MESSAGE_BYTES,
    MAX_REPLY_PAYLOAD,
    MAX_TIMINGS,
    MEL_WINDOW_BYTES,
    PCM_WINDOW_BYTES,
    PROTOCOL_VERSION,
    AudioChunk,
    AudioFormat,
    BinaryCodec,
    Codec,
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
)
from lipsync_tools.protocol.binary import HEADER
from lipsync_tools.protocol.json_codec import FIELDS as JSON_FIELDS
from lipsync_tools.protocol.limits import (
    ERROR_CODE_PATTERN,
    MAX_FPS,
    MAX_JPEG_QUALITY,
    MAX_U16,
    MAX_U32,
    MIN_JPEG_QUALITY,
    PACKAGE_ID_PATTERN,
    STAGE_NAME_PATTERN,
)
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


# === Hypothesis properties ================================================================================
# Strategies build valid messages over each field's whole documented range (docs/protocol.md, limits.py);
# the properties then check round trips, and that every kind of bad input raises only ProtocolError with a
# documented code, decided by the first check in the order the spec gives them.

BINARY = CODECS["binary"]
JSON = CODECS["json"]
ERROR_CODES = frozenset(code.value for code in ErrorCode)
MESSAGE_TYPES = (FrameRequest, FrameReply, ErrorReply, SessionStart, SessionStarted, AudioChunk, SessionEnd)
CASES: Counter[str] = Counter()
"""Cases run per property in this module (the fuzz-long run reports the total)."""


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report_cases(request, CASES)


def report_cases(request: pytest.FixtureRequest, cases: Counter[str]) -> None:
    """Print how many Hypothesis cases the module's properties ran (shown with -q too)."""
    if not cases:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    tests = [
        item
        for item in request.session.items
        if getattr(item, "module", None) is request.module and getattr(item.obj, "is_hypothesis_test", False)
    ]
    line = (
        f"{request.module.__name__}: {sum(cases.values())} Hypothesis cases in {len(tests)} property tests "
        f"(max_examples {settings.default.max_examples})"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)


U16 = st.integers(0, MAX_U16)
U32 = st.integers(0, MAX_U32)
package_ids = st.from_regex(PACKAGE_ID_PATTERN, fullmatch=True)
stage_names = st.from_regex(STAGE_NAME_PATTERN, fullmatch=True)
error_codes = st.one_of(st.sampled_from(list(ErrorCode)), st.from_regex(ERROR_CODE_PATTERN, fullmatch=True))


def sized_bytes(size: int) -> st.SearchStrategy[bytes]:
    """Exactly ``size`` bytes: a short random pattern repeated (cheap to draw for multi-KiB payloads)."""

    def repeat(pattern: bytes) -> bytes:
        return (pattern * (size // len(pattern) + 1))[:size]

    return st.binary(min_size=1, max_size=16).map(repeat)


@st.composite
def frame_requests(draw: st.DrawFn) -> FrameRequest:
    audio = draw(st.sampled_from(AudioFormat))
    size = {AudioFormat.PCM16: PCM_WINDOW_BYTES, AudioFormat.MEL: MEL_WINDOW_BYTES}.get(audio, 0)
    return FrameRequest(
        request_id=draw(U32),
        package_id=draw(package_ids),
        frame_index=draw(U32),
        audio=audio,
        image=draw(st.sampled_from(ImageFormat)),
        jpeg_quality=draw(st.integers(MIN_JPEG_QUALITY, MAX_JPEG_QUALITY)),
        payload=draw(sized_bytes(size)),
    )


@st.composite
def frame_replies(draw: st.DrawFn) -> FrameReply:
    image = draw(st.sampled_from(ImageFormat))
    silence = draw(st.booleans())
    timeline = draw(st.booleans())
    common: dict[str, Any] = {
        "request_id": draw(U32),
        "frame_index": draw(U32),
        "image": image,
        "silence": silence,
        "session_frame": draw(U32) if timeline else None,
        "audio_offset": draw(st.integers(0, MAX_AUDIO_OFFSET)) if timeline else None,
        "timings": draw(st.dictionaries(stage_names, U32, max_size=MAX_TIMINGS)),
    }
    if image.is_crop and silence and draw(st.booleans()):
        return FrameReply(**common, width=0, height=0)  # a silent crop reply: "show your own frame"
    if image in (ImageFormat.RAW_BGR, ImageFormat.CROP_ONLY):
        width, height = draw(
            st.one_of(
                st.tuples(st.integers(1, 16), st.integers(1, 16)),
                st.sampled_from([(MAX_U16, 1), (1, MAX_U16)]),
            )
        )
        payload = draw(sized_bytes(width * height * 3))
    else:
        width, height = draw(st.integers(1, MAX_U16)), draw(st.integers(1, MAX_U16))
        payload = draw(st.binary(min_size=1, max_size=64))
    rect = None
    if image.is_crop:
        x0, y0 = draw(st.integers(0, MAX_U16 - 1)), draw(st.integers(0, MAX_U16 - 1))
        rect = (x0, y0, draw(st.integers(x0 + 1, MAX_U16)), draw(st.integers(y0 + 1, MAX_U16)))
    return FrameReply(**common, width=width, height=height, rect=rect, payload=payload)


error_messages = st.one_of(
    st.text(max_size=64),
    st.text(max_size=MAX_ERROR_MESSAGE_BYTES // 4),  # at most 4 UTF-8 bytes a character: within the limit
    st.sampled_from(["a" * MAX_ERROR_MESSAGE_BYTES, "é" * 2048, "€" * 1365, "😀" * 1024, "\0"]),
)
error_replies = st.builds(ErrorReply, request_id=U32, code=error_codes, message=error_messages)
session_starts = st.builds(
    SessionStart,
    request_id=U32,
    package_id=package_ids,
    start_frame=U32,
    image=st.sampled_from(ImageFormat),
    jpeg_quality=st.integers(MIN_JPEG_QUALITY, MAX_JPEG_QUALITY),
    pacing=st.sampled_from(Pacing),
)
session_starteds = st.builds(
    SessionStarted,
    request_id=U32,
    package_id=package_ids,
    fps=st.one_of(
        st.floats(0.0, MAX_FPS, exclude_min=True),
        st.integers(1, int(MAX_FPS)),
        st.sampled_from([math.nextafter(0.0, 1.0), MAX_FPS, 30000 / 1001]),
    ),
    frame_count=st.integers(1, MAX_U32),
    width=st.integers(1, MAX_U16),
    height=st.integers(1, MAX_U16),
    max_lag_ms=U32,
)
audio_chunks = st.builds(
    AudioChunk,
    request_id=U32,
    # Hypothesis favours small sizes and the bounds: 1 MiB chunks come up now and then
    payload=st.integers(1, MAX_AUDIO_CHUNK_BYTES // 2).flatmap(lambda samples: sized_bytes(2 * samples)),
)
session_ends = st.builds(SessionEnd, request_id=U32, frames_sent=U32, frames_dropped=U32)

MESSAGES: dict[str, st.SearchStrategy[Any]] = {
    "frame_request": frame_requests(),
    "frame_reply": frame_replies(),
    "error_reply": error_replies,
    "session_start": session_starts,
    "session_started": session_starteds,
    "audio_chunk": audio_chunks,
    "session_end": session_ends,
}
assert set(MESSAGES) == {t.wire_name for t in MessageType}  # a new message type needs a strategy here
any_message: st.SearchStrategy[Message] = st.one_of(*MESSAGES.values())


def outcome(codec: Codec, data: bytes | bytearray | memoryview | str) -> Message | str:
    """The decoded message (checked to round trip), or the code of the ProtocolError (a documented one).

    Anything else escaping ``decode`` fails the property. A server answers the error with
    ``ErrorReply.from_error``: that reply must be valid in both codecs too.
    """
    try:
        msg = codec.decode(data)
    except ProtocolError as error:
        assert error.code in ERROR_CODES, f"undocumented error code {error.code!r}: {error}"
        assert str(error), f"{error.code} without a message"
        if error.code == ErrorCode.UNSUPPORTED_VERSION:
            assert isinstance(error, UnsupportedVersionError)
        reply = ErrorReply.from_error(error, request_id=0)
        for each in CODECS.values():
            assert each.decode(each.encode(reply)) == reply
        return str(error.code)
    assert isinstance(msg, MESSAGE_TYPES)
    wire = codec.encode(msg)
    assert codec.decode(wire) == msg
    return msg


def as_bytes(wire: bytes | str) -> bytes:
    return wire.encode("utf-8") if isinstance(wire, str) else wire


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MESSAGES))
@pytest.mark.parametrize("codec_name", list(CODECS))
@given(data=st.data())
def test_every_message_round_trips(codec_name: str, kind: str, data: st.DataObject) -> None:
    CASES["round trip"] += 1
    codec = CODECS[codec_name]
    msg = data.draw(MESSAGES[kind], label="message")
    wire = codec.encode(msg)
    back = codec.decode(wire)
    assert type(back) is type(msg)
    assert back == msg
    assert codec.encode(back) == wire  # one canonical encoding
    if isinstance(codec, BinaryCodec):
        assert isinstance(wire, bytes) and len(wire) <= MAX_BINARY_MESSAGE_BYTES
        head, payload = codec.encode_parts(msg)
        assert head + bytes(payload) == wire
        assert codec.decode(bytearray(wire)) == msg
        assert codec.decode(memoryview(wire)) == msg
    else:
        assert isinstance(wire, str) and wire.isascii() and len(wire) <= MAX_JSON_MESSAGE_BYTES
        assert codec.decode(wire.encode("ascii")) == msg
        assert list(json.loads(wire)) == list(JSON_FIELDS[msg.TYPE])  # every key, in the spec's order


json_whitespace = st.text(alphabet=" \t\n\r", max_size=3)


@given(
    msg=any_message,
    indent=st.one_of(st.none(), st.integers(0, 3), st.just("\t")),
    item_separator=st.builds("{},{}".format, json_whitespace, json_whitespace),
    key_separator=st.builds("{}:{}".format, json_whitespace, json_whitespace),
    ensure_ascii=st.booleans(),
    around=st.tuples(json_whitespace, json_whitespace),
)
def test_json_accepts_any_whitespace_and_escaping(
    msg: Message,
    indent: int | str | None,
    item_separator: str,
    key_separator: str,
    ensure_ascii: bool,
    around: tuple[str, str],
) -> None:
    CASES["json whitespace"] += 1
    obj = json.loads(JSON.encode(msg))
    separators = (item_separator, key_separator)
    text = json.dumps(obj, indent=indent, separators=separators, ensure_ascii=ensure_ascii)
    text = around[0] + text + around[1]
    assert JSON.decode(text) == msg
    assert JSON.decode(text.encode("utf-8")) == msg


# --- arbitrary input --------------------------------------------------------------------------------------

raw_inputs: st.SearchStrategy[bytes | str] = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=256),
    st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=64),  # lone surrogates too
    st.binary(max_size=256).map(lambda tail: MAGIC + bytes([PROTOCOL_VERSION]) + tail),
    st.binary(max_size=256).map(lambda tail: f'{{"v":{PROTOCOL_VERSION},"type":"'.encode() + tail),
    st.text(max_size=256).map(lambda tail: f'{{"v":{PROTOCOL_VERSION},' + tail),
)

PAYLOAD_LIMITS = {1: 16 << 20, 2: 64 << 20, 3: 4096, 4: 0, 5: 0, 6: 1 << 20, 7: 0}
"""The spec's payload limit per message type byte (docs/protocol.md, *Binary encoding*)."""


def binary_verdict(wire: bytes) -> str | None:
    """The code of the first header check that ``wire`` fails, in the spec's order; None if all pass.

    Written from docs/protocol.md (not from the codec): magic, version before the header size, header size,
    reserved bytes, type, P, F and N against their limits, total size. Field checks come after.
    """
    if wire[:4] != MAGIC[: min(len(wire), 4)]:
        return "bad_magic"
    if len(wire) < 5:
        return "truncated"
    if wire[4] != PROTOCOL_VERSION:
        return "unsupported_version"
    if len(wire) < 32:
        return "truncated"
    type_byte = wire[5]
    pid_len, fields_len, payload_len = (
        int.from_bytes(wire[start:end], "little") for start, end in ((12, 14), (20, 22), (24, 28))
    )
    if wire[22:24] != bytes(2) or wire[28:32] != bytes(4):
        return "bad_field"
    if type_byte not in PAYLOAD_LIMITS:
        return "bad_type"
    if pid_len > 64:
        return "bad_field"
    if fields_len > 2048 or payload_len > PAYLOAD_LIMITS[type_byte]:
        return "oversize"
    total = 32 + pid_len + fields_len + payload_len
    if len(wire) < total:
        return "truncated"
    if len(wire) > total:
        return "trailing_data"
    return None


AFTER_HEADER_CODES = frozenset({"bad_field", "bad_audio"})
"""What a binary message that passed every header check can still fail with (its fields)."""


def check_binary(wire: bytes) -> Message | str:
    """``outcome`` for the binary codec, also checking that the header verdict decides the code."""
    result = outcome(BINARY, wire)
    verdict = binary_verdict(wire)
    if verdict is not None:
        assert result == verdict, f"expected {verdict}, got {result!r} for {wire[:48].hex(' ')}"
    else:
        assert not isinstance(result, str) or result in AFTER_HEADER_CODES, result
    return result


@pytest.mark.parametrize("codec_name", list(CODECS))
@given(data=raw_inputs)
def test_arbitrary_input_raises_only_protocol_error(codec_name: str, data: bytes | str) -> None:
    CASES["arbitrary input"] += 1
    if codec_name == "binary":
        if isinstance(data, str):
            assert outcome(BINARY, data) == "bad_magic"  # text is never a binary message
        else:
            check_binary(data)
        return
    result = outcome(JSON, data)
    if isinstance(data, str):
        try:
            encoded = data.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no UTF-8 form to compare with
            return
        assert outcome(JSON, encoded) == result  # text and its UTF-8 bytes decode alike


BUFFER_DTYPES = ["u1", ">u2", "<i4", "<f8", "?", "c16", "V3", [("a", "<u2"), ("b", "u1")]]


@st.composite
def buffers(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any shape (empty, 0-d, 2-d, transposed, strided) over valid wire data or random bytes."""
    codec = draw(st.sampled_from(list(CODECS.values())))
    source = draw(st.one_of(any_message.map(lambda msg: as_bytes(codec.encode(msg))), st.binary(max_size=64)))
    dtype = np.dtype(draw(st.sampled_from(BUFFER_DTYPES)))
    usable = len(source) // dtype.itemsize * dtype.itemsize
    flat = np.frombuffer(source[:usable], dtype=dtype)
    shape = draw(st.sampled_from(["flat", "0d", "rows", "empty2d", "transposed", "strided"]))
    if shape == "0d" and flat.size:
        return flat[0:1].reshape(())
    if shape == "empty2d":
        return np.zeros((0, draw(st.integers(1, 4))), dtype=dtype)
    if shape in ("rows", "transposed") and flat.size:
        rows = draw(st.sampled_from([d for d in range(1, 9) if flat.size % d == 0]))
        grid = flat.reshape(rows, -1)
        return grid.T if shape == "transposed" else grid
    if shape == "strided":
        return flat[:: draw(st.integers(1, 3))]
    return flat


@pytest.mark.parametrize("codec_name", list(CODECS))
@given(array=buffers())
def test_any_buffer_decodes_like_its_bytes(codec_name: str, array: np.ndarray) -> None:
    """``decode`` takes bytes, bytearray or any memoryview: the outcome is that of the buffer's bytes."""
    CASES["buffers"] += 1
    codec = CODECS[codec_name]
    expected = outcome(codec, array.tobytes())
    assert outcome(codec, memoryview(array)) == expected
    assert outcome(codec, bytearray(array.tobytes())) == expected


# --- near-valid binary ------------------------------------------------------------------------------------

HEADER_FIELDS = [
    ("magic", 0, 4), ("version", 4, 1), ("type", 5, 1), ("flags", 6, 2), ("request_id", 8, 4),
    ("package_id_len", 12, 2), ("frame_index", 14, 4), ("audio", 18, 1), ("image", 19, 1),
    ("fields_len", 20, 2), ("reserved", 22, 2), ("payload_len", 24, 4), ("reserved", 28, 4),
]  # fmt: skip
"""(name, offset, size) of every binary header field (docs/protocol.md)."""


@st.composite
def mutated_binary(draw: st.DrawFn) -> bytes:
    """A valid binary message with 1-3 header fields overwritten, bytes flipped, and/or cut or extended."""
    wire = bytearray(BINARY.encode(draw(any_message)))
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(["field", "small", "flip", "cut", "extend"]))
        if mutation in ("field", "small"):
            _, offset, size = draw(st.sampled_from(HEADER_FIELDS))
            value = (
                draw(st.binary(min_size=size, max_size=size))
                if mutation == "field"  # any value; "small" stays near the valid ones
                else draw(st.integers(0, 9)).to_bytes(size, "little")
            )
            wire[offset : offset + size] = value
        elif mutation == "flip" and wire:
            index = draw(st.integers(0, len(wire) - 1))
            wire[index] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "cut":
            del wire[draw(st.integers(0, len(wire))) :]
        else:
            wire += draw(st.binary(min_size=1, max_size=32))
    return bytes(wire)


@given(wire=mutated_binary())
def test_binary_near_valid_input_fails_at_the_first_check(wire: bytes) -> None:
    CASES["binary mutations"] += 1
    check_binary(wire)


@given(msg=any_message, data=st.data())
def test_binary_truncated_and_extended_messages(msg: Message, data: st.DataObject) -> None:
    CASES["binary cut/extend"] += 1
    wire = BINARY.encode(msg)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    assert outcome(BINARY, wire[:cut]) == "truncated"
    extra = data.draw(st.one_of(st.binary(min_size=1, max_size=64), any_message.map(BINARY.encode)))
    assert outcome(BINARY, wire + extra) == "trailing_data"


@given(
    msg=any_message,
    version=st.integers(0, 255).filter(lambda v: v != PROTOCOL_VERSION),
    cut=st.integers(5, 10_000),
    tail=st.binary(max_size=64),
)
def test_binary_other_version_is_refused_before_anything_else(
    msg: Message, version: int, cut: int, tail: bytes
) -> None:
    """The version byte is read before the header size is required, so whatever follows it does not matter."""
    CASES["binary version"] += 1
    wire = bytearray(BINARY.encode(msg)[:cut] + tail)
    wire[4] = version
    with pytest.raises(UnsupportedVersionError) as info:
        BINARY.decode(bytes(wire))
    assert info.value.version == version
    assert f"protocol version {version}," in str(info.value)


# --- near-valid JSON --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawJson:
    """JSON text written as is: huge numbers, NaN, deep nesting, whatever json.dumps would not write."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object as a list of pairs, so it can hold duplicate keys."""

    items: tuple[tuple[str, Any], ...]


def dump(value: Any) -> str:
    """JSON text of ``value``, with RawJson spliced in and Pairs written in order (duplicates kept).

    For the shallow values the strategies build: it recurses once per level of nesting.
    """
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(json.dumps(k) + ":" + dump(v) for k, v in value.items) + "}"
    if isinstance(value, dict):
        return dump(Pairs(tuple(value.items())))
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # allow_nan: NaN and Infinity are written as such, which decoders must refuse


def nested(depth: int, inner: str = "0") -> RawJson:
    return RawJson("[" * depth + inner + "]" * depth)


FIELD_NAMES = sorted({key for keys in JSON_FIELDS.values() for key in keys})
json_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))
raw_numbers = st.one_of(
    st.integers(1, 6000).map(lambda n: RawJson("9" * n)),  # beyond 4300 digits Python refuses to parse
    st.integers(1, 400).map(lambda n: RawJson(f"-{'1' * n}")),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E-999", "-0", "0.0"]).map(RawJson),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-1, MAX_U32 + 1),
    st.integers(-1, MAX_AUDIO_OFFSET + 1),
    st.floats(),
    st.text(max_size=16),
    st.sampled_from(
        [m.wire_name for e in (AudioFormat, ImageFormat, Pacing, MessageType) for m in e]
        + ["", "AA==", "AAA", "A===", "QUJD", " AA==", "AA==\n", "ü", "alice", "a" * 65, "../x"]
    ),
    raw_numbers,
    st.integers(1, 3000).map(nested),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(json_keys, children, max_size=5),
        st.lists(st.tuples(json_keys, children), max_size=4).map(lambda p: Pairs(tuple(p))),
    ),
    max_leaves=12,
)


@st.composite
def mutated_json(draw: st.DrawFn) -> str:
    """A valid JSON message with keys set to random values, added, deleted, renamed or duplicated."""
    pairs = list(json.loads(JSON.encode(draw(any_message))).items())
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(["set", "add", "delete", "rename", "duplicate"]))
        where = draw(st.integers(0, max(len(pairs) - 1, 0)))
        if mutation == "add" or not pairs:
            pairs.insert(draw(st.integers(0, len(pairs))), (draw(json_keys), draw(json_values)))
        elif mutation == "set":
            pairs[where] = (pairs[where][0], draw(json_values))
        elif mutation == "delete":
            del pairs[where]
        elif mutation == "rename":
            pairs[where] = (draw(json_keys), pairs[where][1])
        else:
            value = draw(st.one_of(st.just(pairs[where][1]), json_values))
            pairs.insert(draw(st.integers(0, len(pairs))), (pairs[where][0], value))
    return dump(Pairs(tuple(pairs)))


def _strict_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as the spec reads JSON (no NaN/Infinity, no duplicate keys), or None if it is not."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    def constant(name: str) -> None:
        raise ValueError(name)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=constant)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def json_verdict(text: str) -> str | None:
    """The code of the first JSON check ``text`` fails, in the spec's order; None when only fields remain."""
    obj = _strict_object(text)
    if obj is None:
        return "invalid_json"
    if type(obj.get("v", None)) is not int:
        return "bad_field"
    if obj["v"] != PROTOCOL_VERSION:
        return "unsupported_version"
    if not isinstance(obj.get("type"), str):
        return "bad_field"
    if obj["type"] not in {t.wire_name for t in MessageType}:
        return "bad_type"
    return None


AFTER_TYPE_CODES = frozenset({"bad_field", "bad_audio", "oversize"})
"""What a JSON message with a valid "v" and "type" can still fail with (its keys and fields)."""


@given(text=mutated_json())
def test_json_near_valid_input_fails_at_the_first_check(text: str) -> None:
    CASES["json mutations"] += 1
    result = outcome(JSON, text)
    verdict = json_verdict(text)
    if verdict is not None:
        assert result == verdict, f"expected {verdict}, got {result!r} for {text[:300]}"
    else:
        assert not isinstance(result, str) or result in AFTER_TYPE_CODES, result
    assert outcome(JSON, text.encode("utf-8")) == result


@given(msg=any_message, data=st.data())
def test_json_duplicates_nonfinite_numbers_and_truncations_are_invalid_json(
    msg: Message, data: st.DataObject
) -> None:
    CASES["json invalid"] += 1
    text = JSON.encode(msg)
    pairs = list(json.loads(text).items())
    key, value = data.draw(st.sampled_from(pairs), label="duplicated")
    again = data.draw(st.one_of(st.just(value), json_values), label="second value")
    at = data.draw(st.integers(0, len(pairs)), label="at")
    assert outcome(JSON, dump(Pairs((*pairs[:at], (key, again), *pairs[at:])))) == "invalid_json"
    where = data.draw(st.integers(0, len(pairs) - 1), label="non-finite key")
    constant = RawJson(data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])))
    pairs[where] = (pairs[where][0], data.draw(st.sampled_from([constant, [constant], {"x": constant}])))
    assert outcome(JSON, dump(Pairs(tuple(pairs)))) == "invalid_json"
    assert outcome(JSON, text[: data.draw(st.integers(0, len(text) - 1), label="cut")]) == "invalid_json"


@given(
    text=st.one_of(mutated_json(), any_message.map(JSON.encode)),
    version=st.one_of(st.integers(), st.integers(-(10**4000), 10**4000), st.sampled_from([0, 1, 3, 2**64])),
)
def test_json_other_version_is_refused_before_anything_but_the_syntax(text: str, version: int) -> None:
    CASES["json version"] += 1
    obj = _strict_object(text)
    assume(obj is not None and version != PROTOCOL_VERSION)
    assert obj is not None
    obj["v"] = version
    try:
        # json.dumps, not dump(): the object may hold lists nested 900 deep, which dump()'s recursion through
        # str.join overflows the C stack on (a segfault, not a RecursionError)
        text = json.dumps(obj)
    except RecursionError:
        assume(False)
    assume(_strict_object(text) is not None)  # a float that parsed as inf is written back as Infinity
    with pytest.raises(UnsupportedVersionError) as info:
        JSON.decode(text)
    assert info.value.version == version
    assert len(str(info.value)) < 400  # names the version, does not echo 4000 digits


MINIMAL_STARTED = {
    "v": 2, "type": "session_started", "request_id": 0, "package_id": "a", "fps": 25.0, "frame_count": 1,
    "width": 1, "height": 1, "max_lag_ms": 0,
}  # fmt: skip


@given(depth=st.integers(1, 5000), where=st.sampled_from(["top", "value", "timings", "rect", "fps", "image"]))
def test_json_deep_nesting(depth: int, where: str) -> None:
    CASES["json nesting"] += 1
    deep = nested(depth)
    reply = {
        "v": 2, "type": "frame_reply", "request_id": 0, "frame_index": 0, "image": "jpeg", "width": 1,
        "height": 1, "rect": None, "silence": False, "session_frame": None, "audio_offset": None,
        "timings": {}, "payload": "AA==",
    }  # fmt: skip
    text = {
        "top": nested(depth, "{}").text,
        "value": dump({"v": 2, "type": "session_end", "request_id": deep}),
        "timings": dump({**reply, "timings": {"a": deep}}),
        "rect": dump({**reply, "rect": nested(depth, "1,2,3")}),
        "fps": dump({**MINIMAL_STARTED, "fps": deep}),  # its error message shows the value: repr recursion
        "image": dump({**reply, "image": deep}),
    }[where]
    result = outcome(JSON, text)
    assert result in ({"invalid_json"} if where == "top" else {"invalid_json", "bad_field"}), result


# --- error replies to other versions, and the messages' own validation ------------------------------------


@pytest.mark.parametrize("codec_name", list(CODECS))
@given(
    reply=error_replies,
    version=st.one_of(
        st.none(), st.booleans(), st.integers(), st.sampled_from([0, 1, 2, 3, 255, 256, -1]), st.floats()
    ),
)
def test_encode_error_writes_a_version_the_peer_reads(
    codec_name: str, reply: ErrorReply, version: Any
) -> None:
    CASES["encode_error"] += 1
    codec = CODECS[codec_name]
    written = version if type(version) is int and version in ERROR_REPLY_VERSIONS else PROTOCOL_VERSION
    wire = codec.encode_error(reply, version)
    if isinstance(wire, bytes):
        assert wire[4] == written
        as_current = wire[:4] + bytes([PROTOCOL_VERSION]) + wire[5:]
    else:
        obj = json.loads(wire)
        assert type(obj["v"]) is int and obj["v"] == written
        as_current = json.dumps({**obj, "v": PROTOCOL_VERSION}, separators=(",", ":"))
    assert as_current == codec.encode(reply)  # only the version differs
    assert codec.decode(as_current) == reply
    if written != PROTOCOL_VERSION:
        assert outcome(codec, wire) == "unsupported_version"


@pytest.mark.parametrize("codec_name", list(CODECS))
@given(msg=any_message, old=st.sampled_from(sorted(ERROR_REPLY_VERSIONS - {PROTOCOL_VERSION})))
def test_an_old_version_message_gets_an_error_in_its_version(codec_name: str, msg: Message, old: int) -> None:
    CASES["old version"] += 1
    codec = CODECS[codec_name]
    wire = codec.encode(msg)
    if isinstance(wire, bytes):
        old_wire: bytes | str = wire[:4] + bytes([old]) + wire[5:]
    else:
        old_wire = dump({**json.loads(wire), "v": old})
    with pytest.raises(UnsupportedVersionError) as info:
        codec.decode(old_wire)
    assert info.value.version == old
    answer = codec.encode_error(ErrorReply.from_error(info.value), info.value.version)
    if isinstance(answer, bytes):
        assert answer[4] == old
        reply = codec.decode(answer[:4] + bytes([PROTOCOL_VERSION]) + answer[5:])
    else:
        assert json.loads(answer)["v"] == old
        reply = codec.decode(dump({**json.loads(answer), "v": PROTOCOL_VERSION}))
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNSUPPORTED_VERSION
    assert f"protocol version {old}," in reply.message and f"version {PROTOCOL_VERSION};" in reply.message


anything: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(memoryview),
    st.binary(max_size=8).map(lambda b: memoryview(bytearray(b))),
    st.sampled_from([(0, 3), (2, 3), (0,), (2, 0), ()]).map(lambda shape: memoryview(np.zeros(shape, "u1"))),
    st.sampled_from(["<u2", "f8", "V3"]).map(lambda dtype: memoryview(np.zeros(2, dtype))),
    st.integers(2, 3).map(lambda step: memoryview(np.zeros(6, np.uint8))[::step]),
    st.lists(st.integers(-1, 70000), max_size=5),
    st.tuples(*[st.integers(-1, 70000)] * 4),
    st.dictionaries(st.text(max_size=5), st.integers(-1, 2**33), max_size=3),
    st.sampled_from([*AudioFormat, *ImageFormat, *Pacing, *ErrorCode, 1.0, -0.0, math.nan, math.inf]),
)


@pytest.mark.parametrize("kind", list(MESSAGES))
@given(data=st.data())
def test_messages_validate_any_field_values(kind: str, data: st.DataObject) -> None:
    """Built with arbitrary field values, a message is refused with ProtocolError or valid in both codecs."""
    CASES["constructors"] += 1
    msg = data.draw(MESSAGES[kind], label="valid")
    values = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    for name in data.draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=3), label="fields"):
        values[name] = data.draw(anything, label=name)
    try:
        built = type(msg)(**values)
    except ProtocolError as error:
        assert error.code in ERROR_CODES, error.code
        return
    for codec in CODECS.values():
        assert codec.decode(codec.encode(built)) == built
