"""Blocking client: httpx for the HTTP endpoints, ``websockets.sync`` for sessions and streamed requests.

>>> with LipsyncClient("http://127.0.0.1:8000", protocol="binary") as client:  # doctest: +SKIP
...     client.ready(wait_seconds=60)
...     reply = client.frame(FrameRequest(request_id=1, package_id="alice", frame_index=0,
...                                       audio=AudioFormat.REPLAY))
...     with client.session("alice", pacing=Pacing.UNPACED) as session:
...         for frame in session.play(pcm):
...             ...

Every error reply from the server is raised as :class:`~lipsync_tools.errors.ProtocolError` with its code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lipsync_tools.client._common import (
    DEFAULT_CHUNK_SECONDS,
    WS_MAX_SIZE,
    api_json,
    audio_chunks,
    auth_headers,
    decode_frame_response,
    decode_wire,
    expect_frame,
    http_base,
    pcm_bytes,
    pick_codec,
    session_play_time,
    ws_url,
)
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    DEFAULT_JPEG_QUALITY,
    SAMPLE_RATE,
    AudioChunk,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    Pacing,
    SessionEnd,
    SessionStart,
    SessionStarted,
)


class LipsyncClient:
    """A client of one server at ``url`` (``http://host:port``), speaking ``protocol`` (binary or json).

    ``token``: bearer token, when the server has one. ``timeout``: seconds for HTTP calls and WebSocket
    opening. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, protocol: str = "binary", token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = http_base(url)
        self.codec: Codec = pick_codec(protocol)
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=auth_headers(token), timeout=timeout)

    def __enter__(self) -> LipsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool (sessions close themselves)."""
        self._http.close()

    # --- HTTP ---------------------------------------------------------------------------------------------

    def frame(self, request: FrameRequest) -> FrameReply:
        """``POST /v1/frame``: one frame. Raises ProtocolError with the server's code on an error reply."""
        data = self.codec.encode(request)
        body = data.encode("ascii") if isinstance(data, str) else data
        r = self._http.post("/v1/frame", content=body, headers={"Content-Type": self.codec.content_type})
        return decode_frame_response(r.status_code, r.headers.get("content-type"), r.content)

    def packages(self) -> list[dict[str, Any]]:
        """``GET /v1/packages``: each loaded package's info (id, path, n_frames, fps, size, load times)."""
        r = self._http.get("/v1/packages")
        packages: list[dict[str, Any]] = api_json(r.status_code, r.content)["packages"]
        return packages

    def load_package(self, package_id: str, path: str) -> dict[str, Any]:
        """``POST /v1/packages``: load the server-side file ``path`` as ``package_id``; returns its info."""
        r = self._http.post("/v1/packages", json={"id": package_id, "path": str(path)})
        info: dict[str, Any] = api_json(r.status_code, r.content)
        return info

    def unload_package(self, package_id: str) -> None:
        """``DELETE /v1/packages/{id}``; ProtocolError(unknown_package) when it is not loaded."""
        r = self._http.delete(f"/v1/packages/{package_id}")
        api_json(r.status_code, r.content)

    def health(self) -> bool:
        """True when ``/healthz`` answers 200 (False when the server cannot be reached)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self, wait_seconds: float = 0.0, interval: float = 0.05) -> bool:
        """True once ``/readyz`` answers 200; polls up to ``wait_seconds`` (0: ask once).

        Raises ProtocolError when the server reports that its startup failed (waiting would not help).
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                r = self._http.get("/readyz")
                if r.status_code == 200:
                    return True
                if r.status_code == 401:
                    api_json(r.status_code, r.content)
                reason = str((api_json(200, r.content) or {}).get("reason", ""))
                if reason.startswith("startup failed"):
                    raise ProtocolError(ErrorCode.INTERNAL, f"server {reason}")
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text."""
        r = self._http.get("/metrics")
        if r.status_code != 200:
            api_json(r.status_code, r.content)
        return r.text

    # --- WebSocket ----------------------------------------------------------------------------------------

    def _connect(self) -> ClientConnection:
        options: dict[str, Any] = {"additional_headers": auth_headers(self.token), "max_size": WS_MAX_SIZE,
                                   "compression": None, "open_timeout": self.timeout}
        try:
            # websockets >= 17.1 wants legacy=True to hand back the connection outside a `with` block
            return connect(ws_url(self.url), legacy=True, **options)
        except TypeError:  # older websockets: no such flag, and no warning either
            return connect(ws_url(self.url), **options)

    def stream(self) -> FrameStream:
        """A persistent WebSocket for ``frame_request`` round trips (no HTTP overhead per frame)."""
        return FrameStream(self._connect(), self.codec)

    def session(self, package_id: str, *, start_frame: int = 0, image: ImageFormat = ImageFormat.JPEG,
                jpeg_quality: int = DEFAULT_JPEG_QUALITY, pacing: Pacing = Pacing.REALTIME,
                request_id: int = 1) -> Session:
        """Open ``/v1/stream`` and start a session; raises the server's ProtocolError if it refuses."""
        start = SessionStart(request_id=request_id, package_id=package_id, start_frame=start_frame,
                             image=image, jpeg_quality=jpeg_quality, pacing=pacing)
        ws = self._connect()
        try:
            return Session(ws, self.codec, start)
        except BaseException:
            ws.close()
            raise


class _Socket:
    """A WebSocket speaking one codec, closed by the context manager."""

    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        self.ws = ws
        self.codec = codec

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.ws.close()

    def send(self, message: Message) -> None:
        """Send ``message`` in this socket's codec."""
        self.ws.send(self.codec.encode(message))

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; TimeoutError after ``timeout`` s, ConnectionClosed when the server left."""
        return decode_wire(self.ws.recv(timeout=timeout))


class FrameStream(_Socket):
    """Request/response frames over one WebSocket; :meth:`send` several, then :meth:`recv` to pipeline."""

    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        super().__init__(ws, codec)

    def frame(self, request: FrameRequest, timeout: float | None = 60.0) -> FrameReply:
        """One round trip: send ``request``, return its reply (ProtocolError for an error reply)."""
        self.send(request)
        return self.recv_frame(timeout)

    def recv_frame(self, timeout: float | None = 60.0) -> FrameReply:
        """The next reply; raises the server's ProtocolError for an error reply."""
        return expect_frame(self.recv(timeout))


class Session(_Socket):
    """A running session: :meth:`send_audio`, :meth:`end`, and iterate for the frames (or :meth:`play`).

    ``started`` is the server's SessionStarted (fps, frame count, size, ``max_lag_ms``). Iterating yields each
    FrameReply until the server's ``session_end`` (kept as ``summary``: frames sent and dropped); an error
    reply is raised as ProtocolError. Each frame carries its timeline: ``session_frame`` (numbers of dropped
    frames are missing) and ``audio_offset``, the 16 kHz sample of the session's audio at which it is shown
    (:meth:`play_time`).
    """

    def __init__(self, ws: ClientConnection, codec: Codec, start: SessionStart,
                 timeout: float = 60.0) -> None:
        super().__init__(ws, codec)
        self.start = start
        self.timeout = timeout
        self.finished = False
        self._sequence = 0
        self.summary: SessionEnd | None = None  # the server's session_end: frames sent and dropped
        self.audio_started: float | None = None  # time.monotonic() when the first audio chunk was sent
        self.send(start)
        answer = self.recv(timeout)
        if isinstance(answer, ErrorReply):
            raise answer.to_error()
        if not isinstance(answer, SessionStarted):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected session_started, got {answer.TYPE.wire_name}")
        self.started: SessionStarted = answer

    def send_audio(self, pcm: np.ndarray | bytes | memoryview,
                   chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> None:
        """Send PCM16 mono 16 kHz (int16 array or bytes) as ``audio_chunk`` messages of ``chunk_seconds``."""
        for chunk in audio_chunks(pcm_bytes(pcm), chunk_seconds):
            self._sequence = (self._sequence + 1) & 0xFFFF_FFFF
            if self.audio_started is None:
                self.audio_started = time.monotonic()
            self.send(AudioChunk(request_id=self._sequence, payload=chunk))

    def end(self) -> None:
        """No more audio: the server sends the remaining frames, then ``session_end``, then closes."""
        self.send(SessionEnd(request_id=self.start.request_id))

    def next_frame(self, timeout: float | None = None) -> FrameReply | None:
        """The next frame, or None after the server's ``session_end`` (or when it closed the socket)."""
        if self.finished:
            return None
        try:
            message = self.recv(self.timeout if timeout is None else timeout)
        except ConnectionClosed:
            self.finished = True
            return None
        if isinstance(message, SessionEnd):
            self.finished = True
            self.summary = message
            return None
        return expect_frame(message)

    def __iter__(self) -> Iterator[FrameReply]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def play_time(self, frame: FrameReply) -> float | None:
        """When ``frame``'s audio plays on this client's clock (``time.monotonic()`` seconds): sample 0 at
        the moment the first audio chunk was sent, sample ``frame.audio_offset`` that many 16 kHz samples
        later. ``arrival - play_time`` is the frame's lag. None for a frame without a timeline."""
        return session_play_time(self.audio_started, frame)

    def play(self, pcm: np.ndarray | bytes | memoryview, *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
             realtime: bool = False) -> Iterator[FrameReply]:
        """Send all of ``pcm`` (then ``end``) from a helper thread while yielding the frames as they come.

        Sending from another thread matters: a client that sends a long file before reading would stall
        the server's bounded queues and be dropped as ``too_slow``. ``realtime`` paces the chunks at the
        speed of speech (a live microphone).
        """
        data = pcm_bytes(pcm)
        failure: list[BaseException] = []

        def feed() -> None:
            started = time.monotonic()
            sent = 0
            try:
                for chunk in audio_chunks(data, chunk_seconds):
                    if realtime:
                        delay = started + sent / (2 * SAMPLE_RATE) - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    self.send_audio(chunk, chunk_seconds)
                    sent += len(chunk)
                self.end()
            except ConnectionClosed:
                pass  # the reader sees why
            except BaseException as exc:
                failure.append(exc)

        sender = threading.Thread(target=feed, name="lipsync-audio", daemon=True)
        sender.start()
        try:
            yield from self
        finally:
            sender.join(timeout=self.timeout)
        if failure:
            raise failure[0]
