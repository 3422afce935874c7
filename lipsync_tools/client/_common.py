"""The client's protocol logic without I/O (in the style of h11 and wsproto): what to send, what answers mean.

The shells (:mod:`.sync`, :mod:`.aio`) only move bytes: they send what is built here and hand back what
arrives. Every decision (checking settings and audio, session state, mapping answers to errors, chunking,
pacing, timeouts) is made here once, so the two clients cannot drift apart. Nothing here opens a socket,
sleeps or reads the time: times (or a clock) are passed in.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import numpy as np

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CLOSING_ERROR_CODES,
    CODECS,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_BINARY_MESSAGE_BYTES,
    MAX_JSON_MESSAGE_BYTES,
    SAMPLE_RATE,
    AudioChunk,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    Message,
    SessionEnd,
    SessionStart,
    SessionStarted,
    get_codec,
)

T = TypeVar("T")

WS_MAX_SIZE: Final = max(MAX_BINARY_MESSAGE_BYTES, MAX_JSON_MESSAGE_BYTES)
"""Largest WebSocket message a client accepts: the protocol's cap on any reply."""

DEFAULT_CHUNK_SECONDS: Final = 0.1
"""Audio sent per ``audio_chunk``, in seconds."""

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds for an HTTP call or a WebSocket opening."""

REPLY_TIMEOUT: Final = 60.0
"""Seconds to wait for a WebSocket reply or session message."""

READY_INTERVAL: Final = 0.05
"""Seconds between two ``/readyz`` polls."""

# --- settings ---------------------------------------------------------------------------------------------


def http_base(url: str) -> str:
    """``url`` without a trailing slash; must start with ``http://`` or ``https://``."""
    if not url.startswith(("http://", "https://")):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"server URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


def ws_url(base: str) -> str:
    """The ``/v1/stream`` WebSocket URL of the server at ``base`` (``http`` → ``ws``, ``https`` → ``wss``)."""
    return "ws" + base[len("http"):] + "/v1/stream"


def auth_headers(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for bearer ``token`` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class ClientOptions:
    """A client's checked settings: the server's ``url`` (no trailing slash), its ``codec``, the bearer
    ``token`` and ``timeout`` (seconds for HTTP calls and WebSocket opening)."""

    url: str
    codec: Codec
    token: str | None
    timeout: float

    @classmethod
    def parse(cls, url: str, protocol: str, token: str | None, timeout: float) -> ClientOptions:
        """Checked settings: ``url`` http(s), ``protocol`` binary or json; ProtocolError(bad_field) if not."""
        return cls(url=http_base(url), codec=get_codec(protocol), token=token, timeout=timeout)

    @property
    def headers(self) -> dict[str, str]:
        """Headers of every HTTP call."""
        return auth_headers(self.token)

    @property
    def ws_url(self) -> str:
        """The server's ``/v1/stream`` URL."""
        return ws_url(self.url)

    def ws_options(self) -> dict[str, Any]:
        """Keyword arguments of ``websockets``' ``connect``: auth, the reply cap, no compression, timeout."""
        return {"additional_headers": self.headers, "max_size": WS_MAX_SIZE, "compression": None,
                "open_timeout": self.timeout}


# --- HTTP -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCall(Generic[T]):
    """One HTTP exchange without I/O: the request to send (``path`` is relative to the server's URL), and
    ``read``, which turns the answer (status, Content-Type, body) into the result or raises ProtocolError."""

    method: str
    path: str
    read: Callable[[int, str | None, bytes], T]
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


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


def _api_object(status: int, content: bytes) -> dict[str, Any]:
    """:func:`api_json` of an answer that must be a JSON object; ProtocolError(internal) otherwise."""
    body = api_json(status, content)
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INTERNAL, f"HTTP {status}: expected a JSON object: {content[:200]!r}")
    return body


def decode_frame_response(status: int, content_type: str | None, content: bytes) -> FrameReply:
    """The FrameReply of a ``POST /v1/frame`` answer; raises the server's error as ProtocolError."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    codec = next((c for c in CODECS.values() if c.content_type == media), None)
    if codec is None:
        raise ProtocolError(ErrorCode.INTERNAL, f"HTTP {status} with Content-Type {content_type!r}: "
                            f"{content[:200]!r}")
    return expect_frame(codec.decode(content))


def frame_call(codec: Codec, request: FrameRequest) -> HttpCall[FrameReply]:
    """``POST /v1/frame`` with ``request`` in ``codec``; reads the FrameReply."""
    data = codec.encode(request)
    return HttpCall("POST", "/v1/frame", decode_frame_response,
                    content=data.encode("utf-8") if isinstance(data, str) else data,
                    headers={"Content-Type": codec.content_type})


def _read_packages(status: int, content_type: str | None, content: bytes) -> list[dict[str, Any]]:
    packages = _api_object(status, content).get("packages")
    if not isinstance(packages, list):
        raise ProtocolError(ErrorCode.INTERNAL, f"HTTP {status}: no list of packages in {content[:200]!r}")
    return packages


def packages_call() -> HttpCall[list[dict[str, Any]]]:
    """``GET /v1/packages``; reads each loaded package's info."""
    return HttpCall("GET", "/v1/packages", _read_packages)


def _read_info(status: int, content_type: str | None, content: bytes) -> dict[str, Any]:
    return _api_object(status, content)


def load_package_call(package_id: str, path: str) -> HttpCall[dict[str, Any]]:
    """``POST /v1/packages``: load the server-side file ``path`` as ``package_id``; reads its info."""
    body = json.dumps({"id": package_id, "path": str(path)}).encode("utf-8")
    return HttpCall("POST", "/v1/packages", _read_info, content=body,
                    headers={"Content-Type": "application/json"})


def _read_no_error(status: int, content_type: str | None, content: bytes) -> None:
    if status >= 400:
        api_json(status, content)


def unload_package_call(package_id: str) -> HttpCall[None]:
    """``DELETE /v1/packages/{id}``; the server's error (unknown_package, ...) is raised."""
    return HttpCall("DELETE", f"/v1/packages/{package_id}", _read_no_error)


def _read_health(status: int, content_type: str | None, content: bytes) -> bool:
    return status == 200


def health_call() -> HttpCall[bool]:
    """``GET /healthz``; reads True for 200."""
    return HttpCall("GET", "/healthz", _read_health)


def _read_ready(status: int, content_type: str | None, content: bytes) -> bool:
    if status == 200:
        return True
    if status == 401:
        api_json(status, content)
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
    if reason.startswith("startup failed"):
        raise ProtocolError(ErrorCode.INTERNAL, f"server {reason}")
    return False


def ready_call() -> HttpCall[bool]:
    """``GET /readyz``; reads True for 200, False while loading. Raises ProtocolError for a wrong token
    (unauthorized) and when the server reports that its startup failed (waiting would not help)."""
    return HttpCall("GET", "/readyz", _read_ready)


def ready_delay(deadline: float, interval: float, now: float) -> float | None:
    """Seconds to wait before polling ``/readyz`` again at ``now``; None once ``deadline`` has passed."""
    return None if now >= deadline else interval


def _read_metrics(status: int, content_type: str | None, content: bytes) -> str:
    _read_no_error(status, content_type, content)
    return content.decode("utf-8", "replace")  # the Prometheus text format is UTF-8


def metrics_call() -> HttpCall[str]:
    """``GET /metrics``; reads the Prometheus text."""
    return HttpCall("GET", "/metrics", _read_metrics)


# --- WebSocket --------------------------------------------------------------------------------------------


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


def paced_chunks(
    pcm: bytes | memoryview, chunk_seconds: float, realtime: bool, clock: Callable[[], float]
) -> Iterator[tuple[float, memoryview]]:
    """``pcm`` in chunks of ``chunk_seconds``, each with the seconds to wait before sending it: none, or
    with ``realtime`` until its first sample's time at the speed of speech (clock: ``clock()`` at the first
    chunk). The wait is computed when the chunk is taken, so time spent sending counts."""
    started = clock()
    sent = 0
    for chunk in audio_chunks(pcm, chunk_seconds):
        yield (max(0.0, started + sent / (2 * SAMPLE_RATE) - clock()) if realtime else 0.0), chunk
        sent += len(chunk)


class SessionPhase(enum.Enum):
    """How far the client has got in its side of a session (docs/protocol.md, *Sessions*)."""

    IDLE = "idle"  # nothing sent yet, or the server refused the start (another attempt may follow)
    STARTING = "starting"  # session_start sent, no answer yet
    STREAMING = "streaming"  # session_started received: audio may be sent
    ENDED = "ended"  # the client's session_end sent: only frames and the server's session_end come


_PHASE_REASONS: Final = {
    SessionPhase.IDLE: "before session_start: start the session first",
    SessionPhase.STARTING: "before session_started: the server has not answered session_start yet",
    SessionPhase.STREAMING: "now: the session is already started",
    SessionPhase.ENDED: "after session_end: the session's audio is over",
}


class SessionState:
    """The client's side of one ``/v1/stream`` session, without I/O.

    A shell sends what :meth:`start_message`, :meth:`audio_messages` and :meth:`end_message` return, and
    hands what it receives to :meth:`receive_started` (the handshake) or :meth:`receive_frame`. A step out
    of order (audio or ``session_end`` before ``session_started`` or after ``session_end``, a second
    ``session_start``) raises ProtocolError(unexpected_message) before anything is sent. ``finished``:
    the server's ``session_end`` came (kept as ``summary``), or a closing error, or the socket closed.
    """

    def __init__(self, start: SessionStart, timeout: float = REPLY_TIMEOUT) -> None:
        self.start = start
        self.timeout = timeout
        self.phase = SessionPhase.IDLE
        self.finished = False
        self.started: SessionStarted | None = None
        self.summary: SessionEnd | None = None  # the server's session_end: frames sent and dropped
        self.audio_started: float | None = None  # clock time when the first audio chunk was sent
        self._sequence = 0

    def _refuse(self, what: str) -> ProtocolError:
        return ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"cannot {what} {_PHASE_REASONS[self.phase]}")

    def start_message(self) -> SessionStart:
        """The ``session_start`` to send; the state now waits for the answer."""
        if self.phase is not SessionPhase.IDLE:
            raise self._refuse("send session_start")
        self.phase = SessionPhase.STARTING
        return self.start

    def receive_started(self, message: Message) -> SessionStarted:
        """The server's answer to ``session_start``: its SessionStarted, or its refusal raised as
        ProtocolError (the state is idle again: the server keeps the socket for another attempt)."""
        if self.phase is not SessionPhase.STARTING:
            raise self._refuse("wait for session_started")
        if isinstance(message, ErrorReply):
            self.phase = SessionPhase.IDLE
            raise message.to_error()
        if not isinstance(message, SessionStarted):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected session_started, got {message.TYPE.wire_name}")
        self.phase = SessionPhase.STREAMING
        self.started = message
        return message

    def audio_messages(self, pcm: np.ndarray | bytes | memoryview, chunk_seconds: float,
                       now: float) -> list[AudioChunk]:
        """``pcm`` (int16 array or PCM16 LE bytes) as ``audio_chunk`` messages of ``chunk_seconds``, numbered
        on from the last; ``now`` (the clock when they are sent) becomes ``audio_started`` if unset. Raises
        ProtocolError(bad_audio) for audio that is not whole int16 samples, before anything is counted."""
        if self.phase is not SessionPhase.STREAMING:
            raise self._refuse("send audio")
        messages = [AudioChunk(request_id=(self._sequence + n) & 0xFFFF_FFFF, payload=chunk)
                    for n, chunk in enumerate(audio_chunks(pcm_bytes(pcm), chunk_seconds), start=1)]
        self._sequence = (self._sequence + len(messages)) & 0xFFFF_FFFF
        if messages and self.audio_started is None:
            self.audio_started = now
        return messages

    def end_message(self) -> SessionEnd:
        """The client's ``session_end`` (no more audio): the server sends the last frames, then its own."""
        if self.phase is not SessionPhase.STREAMING:
            raise self._refuse("send session_end")
        self.phase = SessionPhase.ENDED
        return SessionEnd(request_id=self.start.request_id)

    def frame_timeout(self, timeout: float | None) -> float:
        """Seconds to wait for the next session message: ``timeout``, or the session's when None. Raises
        ProtocolError(unexpected_message) before ``session_started`` (no frame can come)."""
        if self.started is None:
            raise self._refuse("wait for frames")
        return self.timeout if timeout is None else timeout

    def receive_frame(self, message: Message) -> FrameReply | None:
        """A message received during the session: the FrameReply, or None for the server's ``session_end``
        (now ``summary``; ``finished`` is set). An error reply is raised as ProtocolError (one that closes
        the socket also sets ``finished``); anything else is unexpected_message."""
        if self.started is None:
            raise self._refuse("receive frames")
        if self.finished:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"got {message.TYPE.wire_name} after the session finished")
        if isinstance(message, SessionEnd):
            self.finished = True
            self.summary = message
            return None
        if isinstance(message, ErrorReply) and message.code in CLOSING_ERROR_CODES:
            self.finished = True
        return expect_frame(message)

    def connection_closed(self) -> None:
        """The socket closed: no more frames."""
        self.finished = True

    def play_time(self, frame: FrameReply) -> float | None:
        """When ``frame``'s audio plays on the clock of ``audio_started``: ``audio_started +
        frame.audio_offset / 16000``; None before any audio was sent or for a frame without a timeline."""
        if self.audio_started is None or frame.audio_offset is None:
            return None
        return self.audio_started + frame.audio_offset / SAMPLE_RATE


class SessionView:
    """What a session shell shows of its :class:`SessionState` (``_state``), read-only."""

    _state: SessionState

    @property
    def start(self) -> SessionStart:
        """The ``session_start`` of this session."""
        return self._state.start

    @property
    def timeout(self) -> float:
        """Seconds to wait for a session message (``next_frame``'s default)."""
        return self._state.timeout

    @property
    def finished(self) -> bool:
        """True after the server's ``session_end``, a closing error reply, or the socket closing."""
        return self._state.finished

    @property
    def summary(self) -> SessionEnd | None:
        """The server's ``session_end`` (frames sent and dropped); None before it."""
        return self._state.summary

    @property
    def audio_started(self) -> float | None:
        """``time.monotonic()`` when the first audio chunk was sent; None before."""
        return self._state.audio_started

    def play_time(self, frame: FrameReply) -> float | None:
        """When ``frame``'s audio plays on this client's clock (``time.monotonic()`` seconds): sample 0 at
        the moment the first audio chunk was sent, sample ``frame.audio_offset`` that many 16 kHz samples
        later. ``arrival - play_time`` is the frame's lag. None for a frame without a timeline."""
        return self._state.play_time(frame)
