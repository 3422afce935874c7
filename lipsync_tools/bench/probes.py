"""The malformed (and out-of-turn) messages of ``lipsync bench --soak``, each with the answer it must get.

:func:`probes` makes one round of them. Over ``/v1/stream``: random bytes, another protocol version, declared
lengths beyond their limits (a 4 GiB payload, a 65535-byte field block and package id), an unknown type,
reserved bytes set, truncated and trailing bytes, PCM of the wrong size, messages out of turn (audio and
``session_end`` with no session, a server's own message), a frame past the end, a session on an unknown
package, text that is not JSON, JSON without its fields. Over raw HTTP (so a header can lie): random bytes,
a wrong ``Content-Type``, a ``Content-Length`` of 1 GB, a declared 4 GiB payload, bodies that are not JSON,
a package id that is a path, an unknown path. The expected codes follow docs/protocol.md (*Binary encoding*
gives the order of the checks, *Errors* the codes and which close the socket); a test checks each against
the reference decoder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

PACKAGE_ID = "avatar"


@dataclass(frozen=True)
class Probe:
    """One malformed (or out-of-turn) message and the answer it must get.

    ``transport`` ``ws``: ``data`` is one WebSocket message (bytes: a binary frame, str: a text frame), the
    answer an ``error_reply`` with ``code``, then the socket closes iff ``closes``. ``http``: ``data`` is a
    whole raw HTTP request, the answer ``status`` with an ``error_reply`` body of ``code`` (``None``: any
    body).
    """

    name: str
    transport: Literal["ws", "http"]
    data: bytes | str
    code: str | None
    status: int | None = None
    closes: bool = False


def header(
    *,
    version: int = 2,
    type_: int = 1,
    pid: int = 0,
    frame: int = 0,
    audio: int = 1,
    image: int = 1,
    fields: int = 1,
    payload: int = 0,
    reserved: bytes = b"\0\0",
) -> bytes:
    """A 32-byte binary header (docs/protocol.md, *Binary encoding*) with any field set, right or wrong: by
    default a ``frame_request`` of PCM16 and JPEG with a 1-byte field block, no package id and no payload."""
    from ..protocol.binary import HEADER

    return HEADER.pack(
        b"LSYN", version, type_, 0, 7, pid, frame, audio, image, fields, reserved, payload, b"\0\0\0\0"
    )


def raw_http(
    method: str, path: str, body: bytes, content_type: str | None, content_length: int | None = None
) -> bytes:
    """One HTTP/1.1 request as bytes, ``Content-Length`` as given (it may lie), ``Connection: close``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def probes(rng: random.Random, n_frames: int) -> list[Probe]:
    """One round of malformed messages (random bytes drawn from ``rng``), each with the answer the protocol
    gives it (docs/protocol.md, *Binary encoding* and *Errors*)."""
    from ..protocol import (
        CODECS,
        AudioChunk,
        AudioFormat,
        BinaryCodec,
        FrameRequest,
        SessionEnd,
        SessionStart,
        SessionStarted,
    )

    binary, text = BinaryCodec(), CODECS["json"]
    noise = bytes([rng.randrange(256) for _ in range(64)])
    noise = (b"X" if noise[:1] == b"L" else noise[:1]) + noise[1:]  # never the magic's first byte
    replay = AudioFormat.REPLAY
    valid = binary.encode(FrameRequest(request_id=9, package_id=PACKAGE_ID, frame_index=0, audio=replay))
    pid = PACKAGE_ID.encode("ascii")
    started = SessionStarted(
        request_id=1, package_id=PACKAGE_ID, fps=25.0, frame_count=1, width=8, height=8, max_lag_ms=0
    )
    json_type = "application/json"
    binary_type = "application/x-lipsync"
    return [
        Probe("random bytes", "ws", noise, "bad_magic", closes=True),
        Probe("protocol version 1", "ws", header(version=1), "unsupported_version", closes=True),
        Probe("payload length 4 GiB", "ws", header(payload=0xFFFF_FFFF), "oversize"),
        Probe("field block length 65535", "ws", header(fields=0xFFFF), "oversize"),
        Probe("package id length 65535", "ws", header(pid=0xFFFF), "bad_field"),
        Probe("unknown message type", "ws", header(type_=99), "bad_type"),
        Probe("reserved bytes set", "ws", header(reserved=b"\1\0"), "bad_field"),
        Probe("truncated", "ws", header(payload=3200), "truncated"),
        Probe("trailing bytes", "ws", valid + b"xx", "trailing_data"),
        Probe(
            "PCM of 100 bytes",
            "ws",
            header(pid=len(pid), payload=100) + pid + b"\x5a" + bytes(100),
            "bad_audio",
        ),
        Probe(
            "audio_chunk with no session",
            "ws",
            binary.encode(AudioChunk(request_id=1, payload=bytes(640))),
            "unexpected_message",
        ),
        Probe(
            "session_end with no session", "ws", binary.encode(SessionEnd(request_id=1)), "unexpected_message"
        ),
        Probe("a server message", "ws", binary.encode(started), "unexpected_message"),
        Probe(
            "frame past the end",
            "ws",
            binary.encode(
                FrameRequest(request_id=3, package_id=PACKAGE_ID, frame_index=n_frames, audio=replay)
            ),
            "frame_out_of_range",
        ),
        Probe(
            "session on an unknown package",
            "ws",
            text.encode(SessionStart(request_id=2, package_id="no-such-avatar")),
            "unknown_package",
        ),
        Probe("text that is not JSON", "ws", '{"v": 2, "type": ', "invalid_json"),
        Probe("JSON without its fields", "ws", '{"v": 2, "type": "frame_request"}', "bad_field"),
        Probe(
            "HTTP random bytes", "http", raw_http("POST", "/v1/frame", noise, binary_type), "bad_magic", 400
        ),
        Probe(
            "HTTP wrong Content-Type",
            "http",
            raw_http("POST", "/v1/frame", valid, "text/plain"),
            "bad_field",
            415,
        ),
        Probe(
            "HTTP Content-Length 1 GB",
            "http",
            raw_http("POST", "/v1/frame", valid, binary_type, content_length=10**9),
            "oversize",
            413,
        ),
        Probe(
            "HTTP declared payload 4 GiB",
            "http",
            raw_http("POST", "/v1/frame", header(payload=0xFFFF_FFFF), binary_type),
            "oversize",
            413,
        ),
        Probe(
            "HTTP body not JSON", "http", raw_http("POST", "/v1/frame", b"{", json_type), "invalid_json", 400
        ),
        Probe(
            "package API body not JSON",
            "http",
            raw_http("POST", "/v1/packages", b"[", json_type),
            "invalid_json",
            400,
        ),
        Probe(
            "package API bad id",
            "http",
            raw_http("POST", "/v1/packages", b'{"id": "../../x"}', json_type),
            "bad_field",
            400,
        ),
        Probe("HTTP unknown path", "http", raw_http("GET", "/v1/nothing-here", b"", None), None, 404),
    ]


def as_this_version(data: bytes | str) -> bytes | str:
    """A binary error_reply the server wrote in an older version for a peer of that version (docs/protocol.md,
    *Versioning*), given this version's number so it decodes: the layouts are the same
    (``ERROR_REPLY_VERSIONS``)."""
    from ..protocol import ERROR_REPLY_VERSIONS, MAGIC, PROTOCOL_VERSION

    older = isinstance(data, bytes) and data[:4] == MAGIC and len(data) > 4 and data[4] != PROTOCOL_VERSION
    if isinstance(data, bytes) and older and data[4] in ERROR_REPLY_VERSIONS:
        return data[:4] + bytes((PROTOCOL_VERSION,)) + data[5:]
    return data


__all__ = ["Probe", "as_this_version", "header", "probes", "raw_http"]
