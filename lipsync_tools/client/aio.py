"""Asyncio client: the same API as :mod:`lipsync_tools.client.sync`, with ``await`` (httpx.AsyncClient and
``websockets.asyncio``).

>>> async with AsyncLipsyncClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     await client.ready(wait_seconds=60)
...     async with await client.session("alice") as session:
...         async for frame in session.play(pcm):
...             ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


class AsyncLipsyncClient:
    """Async client of the server at ``url``; see :class:`lipsync_tools.client.LipsyncClient` for the API."""

    def __init__(self, url: str, protocol: str = "binary", token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = http_base(url)
        self.codec: Codec = pick_codec(protocol)
        self.token = token
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers=auth_headers(token), timeout=timeout)

    async def __aenter__(self) -> AsyncLipsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def frame(self, request: FrameRequest) -> FrameReply:
        """``POST /v1/frame``; raises ProtocolError with the server's code on an error reply."""
        data = self.codec.encode(request)
        body = data.encode("ascii") if isinstance(data, str) else data
        r = await self._http.post("/v1/frame", content=body,
                                  headers={"Content-Type": self.codec.content_type})
        return decode_frame_response(r.status_code, r.headers.get("content-type"), r.content)

    async def packages(self) -> list[dict[str, Any]]:
        """``GET /v1/packages``."""
        r = await self._http.get("/v1/packages")
        packages: list[dict[str, Any]] = api_json(r.status_code, r.content)["packages"]
        return packages

    async def load_package(self, package_id: str, path: str) -> dict[str, Any]:
        """``POST /v1/packages``; returns the loaded package's info."""
        r = await self._http.post("/v1/packages", json={"id": package_id, "path": str(path)})
        info: dict[str, Any] = api_json(r.status_code, r.content)
        return info

    async def unload_package(self, package_id: str) -> None:
        """``DELETE /v1/packages/{id}``."""
        r = await self._http.delete(f"/v1/packages/{package_id}")
        api_json(r.status_code, r.content)

    async def health(self) -> bool:
        """True when ``/healthz`` answers 200."""
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self, wait_seconds: float = 0.0, interval: float = 0.05) -> bool:
        """True once ``/readyz`` answers 200, polling up to ``wait_seconds``; raises if startup failed."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                r = await self._http.get("/readyz")
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
            await asyncio.sleep(interval)

    async def metrics(self) -> str:
        """``GET /metrics``."""
        r = await self._http.get("/metrics")
        if r.status_code != 200:
            api_json(r.status_code, r.content)
        return r.text

    async def _connect(self) -> ClientConnection:
        return await connect(ws_url(self.url), additional_headers=auth_headers(self.token),
                             max_size=WS_MAX_SIZE, compression=None, open_timeout=self.timeout)

    async def stream(self) -> AsyncFrameStream:
        """A persistent WebSocket for ``frame_request`` round trips."""
        return AsyncFrameStream(await self._connect(), self.codec)

    async def session(self, package_id: str, *, start_frame: int = 0, image: ImageFormat = ImageFormat.JPEG,
                      jpeg_quality: int = DEFAULT_JPEG_QUALITY, pacing: Pacing = Pacing.REALTIME,
                      request_id: int = 1) -> AsyncSession:
        """Open ``/v1/stream`` and start a session; raises the server's ProtocolError if refused."""
        start = SessionStart(request_id=request_id, package_id=package_id, start_frame=start_frame,
                             image=image, jpeg_quality=jpeg_quality, pacing=pacing)
        ws = await self._connect()
        session = AsyncSession(ws, self.codec, start)
        try:
            await session.begin()
        except BaseException:
            await ws.close()
            raise
        return session


class _AsyncSocket:
    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        self.ws = ws
        self.codec = codec

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: Message) -> None:
        """Send ``message`` in this socket's codec."""
        await self.ws.send(self.codec.encode(message))

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message (TimeoutError after ``timeout`` seconds)."""
        return decode_wire(await asyncio.wait_for(self.ws.recv(), timeout))


class AsyncFrameStream(_AsyncSocket):
    """Request/response frames over one WebSocket."""

    async def frame(self, request: FrameRequest, timeout: float | None = 60.0) -> FrameReply:
        """One round trip; ProtocolError for an error reply."""
        await self.send(request)
        return await self.recv_frame(timeout)

    async def recv_frame(self, timeout: float | None = 60.0) -> FrameReply:
        return expect_frame(await self.recv(timeout))


class AsyncSession(_AsyncSocket):
    """A running session (see :class:`lipsync_tools.client.sync.Session`)."""

    def __init__(self, ws: ClientConnection, codec: Codec, start: SessionStart,
                 timeout: float = 60.0) -> None:
        super().__init__(ws, codec)
        self.start = start
        self.timeout = timeout
        self.finished = False
        self._sequence = 0
        self.summary: SessionEnd | None = None  # the server's session_end: frames sent and dropped
        self.audio_started: float | None = None  # time.monotonic() when the first audio chunk was sent
        self.started: SessionStarted | None = None

    async def begin(self) -> SessionStarted:
        """Send ``session_start`` and wait for ``session_started`` (ProtocolError if refused)."""
        await self.send(self.start)
        answer = await self.recv(self.timeout)
        if isinstance(answer, ErrorReply):
            raise answer.to_error()
        if not isinstance(answer, SessionStarted):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected session_started, got {answer.TYPE.wire_name}")
        self.started = answer
        return answer

    async def send_audio(self, pcm: np.ndarray | bytes | memoryview,
                         chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> None:
        """Send PCM16 mono 16 kHz as ``audio_chunk`` messages of ``chunk_seconds``."""
        for chunk in audio_chunks(pcm_bytes(pcm), chunk_seconds):
            self._sequence = (self._sequence + 1) & 0xFFFF_FFFF
            if self.audio_started is None:
                self.audio_started = time.monotonic()
            await self.send(AudioChunk(request_id=self._sequence, payload=chunk))

    async def end(self) -> None:
        """No more audio."""
        await self.send(SessionEnd(request_id=self.start.request_id))

    async def next_frame(self, timeout: float | None = None) -> FrameReply | None:
        """The next frame, or None after the server's ``session_end``."""
        if self.finished:
            return None
        try:
            message = await self.recv(self.timeout if timeout is None else timeout)
        except ConnectionClosed:
            self.finished = True
            return None
        if isinstance(message, SessionEnd):
            self.finished = True
            self.summary = message
            return None
        return expect_frame(message)

    def __aiter__(self) -> AsyncIterator[FrameReply]:
        return self._frames()

    def play_time(self, frame: FrameReply) -> float | None:
        """See :meth:`lipsync_tools.client.sync.Session.play_time`."""
        return session_play_time(self.audio_started, frame)

    async def _frames(self) -> AsyncIterator[FrameReply]:
        while (frame := await self.next_frame()) is not None:
            yield frame

    async def play(self, pcm: np.ndarray | bytes | memoryview, *,
                   chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
                   realtime: bool = False) -> AsyncIterator[FrameReply]:
        """Send ``pcm`` (then ``end``) from a task while yielding frames as they come."""
        data = pcm_bytes(pcm)

        async def feed() -> None:
            started = time.monotonic()
            sent = 0
            with contextlib.suppress(ConnectionClosed):
                for chunk in audio_chunks(data, chunk_seconds):
                    if realtime:
                        await asyncio.sleep(max(0.0, started + sent / (2 * SAMPLE_RATE) - time.monotonic()))
                    await self.send_audio(chunk, chunk_seconds)
                    sent += len(chunk)
                await self.end()

        sender = asyncio.create_task(feed())
        try:
            async for frame in self:
                yield frame
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
