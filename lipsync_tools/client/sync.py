"""Blocking client: httpx for the HTTP endpoints, ``websockets.sync`` for sessions and streamed requests.

>>> with LipsyncClient("http://127.0.0.1:8000", protocol="binary") as client:  # doctest: +SKIP
...     client.ready(wait_seconds=60)
...     reply = client.frame(FrameRequest(request_id=1, package_id="alice", frame_index=0,
...                                       audio=AudioFormat.REPLAY))
...     with client.session("alice", pacing=Pacing.UNPACED) as session:
...         for frame in session.play(pcm):
...             ...

Every error reply from the server is raised as :class:`~lipsync_tools.errors.ProtocolError` with its code.
A thin I/O shell: what to send and what an answer means is decided in :mod:`._common`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lipsync_tools.client._common import (
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_TIMEOUT,
    READY_INTERVAL,
    REPLY_TIMEOUT,
    ClientOptions,
    HttpCall,
    SessionState,
    SessionView,
    decode_wire,
    expect_frame,
    frame_call,
    health_call,
    load_package_call,
    metrics_call,
    paced_chunks,
    packages_call,
    pcm_bytes,
    ready_call,
    ready_delay,
    unload_package_call,
)
from lipsync_tools.protocol import (
    DEFAULT_JPEG_QUALITY,
    Codec,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    Pacing,
    SessionStart,
    SessionStarted,
)

T = TypeVar("T")


class LipsyncClient:
    """A client of one server at ``url`` (``http://host:port``), speaking ``protocol`` (binary or json).

    ``token``: bearer token, when the server has one. ``timeout``: seconds for HTTP calls and WebSocket
    opening. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, protocol: str = "binary", token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._options = options = ClientOptions.parse(url, protocol, token, timeout)
        self.url, self.codec, self.token, self.timeout = options.url, options.codec, token, timeout
        self._http = httpx.Client(base_url=self.url, headers=options.headers, timeout=timeout)

    def __enter__(self) -> LipsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool (sessions close themselves)."""
        self._http.close()

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _call(self, call: HttpCall[T]) -> T:
        r = self._http.request(call.method, call.path, content=call.content, headers=call.headers)
        return call.read(r.status_code, r.headers.get("content-type"), r.content)

    def frame(self, request: FrameRequest) -> FrameReply:
        """``POST /v1/frame``: one frame. Raises ProtocolError with the server's code on an error reply."""
        return self._call(frame_call(self.codec, request))

    def packages(self) -> list[dict[str, Any]]:
        """``GET /v1/packages``: each loaded package's info (id, path, n_frames, fps, size, load times)."""
        return self._call(packages_call())

    def load_package(self, package_id: str, path: str) -> dict[str, Any]:
        """``POST /v1/packages``: load the server-side file ``path`` as ``package_id``; returns its info."""
        return self._call(load_package_call(package_id, path))

    def unload_package(self, package_id: str) -> None:
        """``DELETE /v1/packages/{id}``; ProtocolError(unknown_package) when it is not loaded."""
        self._call(unload_package_call(package_id))

    def health(self) -> bool:
        """True when ``/healthz`` answers 200 (False when the server cannot be reached)."""
        try:
            return self._call(health_call())
        except httpx.TransportError:
            return False

    def ready(self, wait_seconds: float = 0.0, interval: float = READY_INTERVAL) -> bool:
        """True once ``/readyz`` answers 200; polls up to ``wait_seconds`` (0: ask once).

        Raises ProtocolError when the server reports that its startup failed (waiting would not help).
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                if self._call(ready_call()):
                    return True
            except httpx.TransportError:
                pass
            delay = ready_delay(deadline, interval, time.monotonic())
            if delay is None:
                return False
            time.sleep(delay)

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text."""
        return self._call(metrics_call())

    # --- WebSocket ----------------------------------------------------------------------------------------

    def _connect(self) -> ClientConnection:
        options = self._options.ws_options()
        try:
            # websockets >= 17.1 wants legacy=True to hand back the connection outside a `with` block
            return connect(self._options.ws_url, legacy=True, **options)
        except TypeError:  # older websockets: no such flag, and no warning either
            return connect(self._options.ws_url, **options)

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

    def frame(self, request: FrameRequest, timeout: float | None = REPLY_TIMEOUT) -> FrameReply:
        """One round trip: send ``request``, return its reply (ProtocolError for an error reply)."""
        self.send(request)
        return self.recv_frame(timeout)

    def recv_frame(self, timeout: float | None = REPLY_TIMEOUT) -> FrameReply:
        """The next reply; raises the server's ProtocolError for an error reply."""
        return expect_frame(self.recv(timeout))


class Session(SessionView, _Socket):
    """A running session: :meth:`send_audio`, :meth:`end`, and iterate for the frames (or :meth:`play`).

    ``started`` is the server's SessionStarted (fps, frame count, size, ``max_lag_ms``). Iterating yields each
    FrameReply until the server's ``session_end`` (kept as ``summary``: frames sent and dropped); an error
    reply is raised as ProtocolError. Each frame carries its timeline: ``session_frame`` (numbers of dropped
    frames are missing) and ``audio_offset``, the 16 kHz sample of the session's audio at which it is shown
    (:meth:`play_time`).
    """

    def __init__(self, ws: ClientConnection, codec: Codec, start: SessionStart,
                 timeout: float = REPLY_TIMEOUT) -> None:
        super().__init__(ws, codec)
        self._state = SessionState(start, timeout)
        self.send(self._state.start_message())
        self.started: SessionStarted = self._state.receive_started(self.recv(timeout))

    def send_audio(self, pcm: np.ndarray | bytes | memoryview,
                   chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> None:
        """Send PCM16 mono 16 kHz (int16 array or bytes) as ``audio_chunk`` messages of ``chunk_seconds``."""
        for message in self._state.audio_messages(pcm, chunk_seconds, time.monotonic()):
            self.send(message)

    def end(self) -> None:
        """No more audio: the server sends the remaining frames, then ``session_end``, then closes."""
        self.send(self._state.end_message())

    def next_frame(self, timeout: float | None = None) -> FrameReply | None:
        """The next frame, or None after the server's ``session_end`` (or when it closed the socket)."""
        if self._state.finished:
            return None
        try:
            message = self.recv(self._state.frame_timeout(timeout))
        except ConnectionClosed:
            self._state.connection_closed()
            return None
        return self._state.receive_frame(message)

    def __iter__(self) -> Iterator[FrameReply]:
        while (frame := self.next_frame()) is not None:
            yield frame

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
            try:
                for delay, chunk in paced_chunks(data, chunk_seconds, realtime, time.monotonic):
                    if delay > 0:
                        time.sleep(delay)
                    self.send_audio(chunk, chunk_seconds)
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
