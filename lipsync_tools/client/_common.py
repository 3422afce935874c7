"""What the sync and async clients share: URLs, headers, decoding answers, splitting audio into chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_BINARY_MESSAGE_BYTES,
    MAX_JSON_MESSAGE_BYTES,
    SAMPLE_RATE,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameReply,
    Message,
    get_codec,
)

WS_MAX_SIZE: Final = max(MAX_BINARY_MESSAGE_BYTES, MAX_JSON_MESSAGE_BYTES)
"""Largest WebSocket message a client accepts: the protocol's cap on any reply."""

DEFAULT_CHUNK_SECONDS: Final = 0.1


def pick_codec(protocol: str) -> Codec:
    """The codec called ``protocol`` (``"binary"`` or ``"json"``); ProtocolError(bad_field) otherwise."""
    return get_codec(protocol)


def http_base(url: str) -> str:
    """``url`` without a trailing slash; must start with ``http://`` or ``https://``."""
    if not url.startswith(("http://", "https://")):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"server URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


def ws_url(base: str) -> str:
    """The ``/v1/stream`` WebSocket URL of the server at ``base`` (``http`` → ``ws``, ``https`` → ``wss``)."""
    return "ws" + base[len("http"):] + "/v1/stream"


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def decode_wire(data: bytes | str) -> Message:
    """A WebSocket message: binary frames are the binary codec, text frames JSON."""
    return CODECS["binary" if isinstance(data, bytes | bytearray | memoryview) else "json"].decode(data)


def expect_frame(message: Message) -> FrameReply:
    """``message`` if it is a FrameReply; the ProtocolError of an ErrorReply; else unexpected_message."""
    if isinstance(message, FrameReply):
        return message
    if isinstance(message, ErrorReply):
        raise message.to_error()
    raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected frame_reply, got {message.TYPE.wire_name}")


def decode_frame_response(status: int, content_type: str | None, content: bytes) -> FrameReply:
    """The FrameReply of a ``POST /v1/frame`` answer; raises the server's error as ProtocolError."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    codec = next((c for c in CODECS.values() if c.content_type == media), None)
    if codec is None:
        raise ProtocolError(ErrorCode.INTERNAL, f"HTTP {status} with Content-Type {content_type!r}: "
                            f"{content[:200]!r}")
    return expect_frame(codec.decode(content))


def api_json(status: int, content: bytes) -> Any:
    """The JSON body of an API answer; for status >= 400 its error_reply is raised as ProtocolError."""
    try:
        body = json.loads(content) if content else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if status >= 400:
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            raise ProtocolError(body["code"], str(body.get("message", "")))
        raise ProtocolError(ErrorCode.INTERNAL, f"HTTP {status}: {content[:200]!r}")
    return body


def pcm_bytes(pcm: np.ndarray | bytes | bytearray | memoryview) -> bytes | memoryview:
    """PCM16 LE mono 16 kHz as bytes: int16 arrays are converted; float arrays are refused."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"audio must be 1-D int16 PCM at {SAMPLE_RATE} Hz mono, "
                                f"got {pcm.dtype} with shape {pcm.shape}")
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    if isinstance(pcm, bytearray):
        return bytes(pcm)
    return pcm


def audio_chunks(
    pcm: bytes | memoryview, chunk_seconds: float = DEFAULT_CHUNK_SECONDS
) -> Iterator[memoryview]:
    """``pcm`` cut into chunks of ``chunk_seconds`` (whole samples, at most ``MAX_AUDIO_CHUNK_BYTES``)."""
    size = max(2, min(MAX_AUDIO_CHUNK_BYTES, int(chunk_seconds * SAMPLE_RATE) * 2))
    view = memoryview(pcm)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def session_play_time(audio_started: float | None, frame: FrameReply) -> float | None:
    """When ``frame``'s audio plays on a client clock that started at ``audio_started`` (the first chunk
    sent): ``audio_started + frame.audio_offset / 16000``; None without a start or a timeline."""
    if audio_started is None or frame.audio_offset is None:
        return None
    return audio_started + frame.audio_offset / SAMPLE_RATE
