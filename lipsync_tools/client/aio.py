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
from typing import Any, TypeVar

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


class AsyncLipsyncClient:
    """Async client of the server at ``url``; see :class:`lipsync_tools.client.LipsyncClient` for the API."""

    def __init__(self, url: str, protocol: str = "binary", token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._options = options = ClientOptions.parse(url, protocol, token, timeout)
        self.url, self.codec, self.token, self.timeout = options.url, options.codec, token, timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers=options.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncLipsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, call: HttpCall[T]) -> T:
        r = await self._http.request(call.method, call.path, content=call.content, headers=call.headers)
        return call.read(r.status_code, r.headers.get("content-type"), r.content)

    async def frame(self, request: FrameRequest) -> FrameReply:
        """``POST /v1/frame``; raises ProtocolError with the server's code on an error reply."""
        return await self._call(frame_call(self.codec, request))

    async def packages(self) -> list[dict[str, Any]]:
        """``GET /v1/packages``."""
        return await self._call(packages_call())

    async def load_package(self, package_id: str, path: str) -> dict[str, Any]:
        """``POST /v1/packages``; returns the loaded package's info."""
        return await self._call(load_package_call(package_id, path))

    async def unload_package(self, package_id: str) -> None:
        """``DELETE /v1/packages/{id}``."""
        await self._call(unload_package_call(package_id))

    async def health(self) -> bool:
        """True when ``/healthz`` answers 200."""
        try:
            return await self._call(health_call())
        except httpx.TransportError:
            return False

    async def ready(self, wait_seconds: float = 0.0, interval: float = READY_INTERVAL) -> bool:
        """True once ``/readyz`` answers 200, polling up to ``wait_seconds``; raises if startup failed."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                if await self._call(ready_call()):
                    return True
            except httpx.TransportError:
                pass
            delay = ready_delay(deadline, interval, time.monotonic())
            if delay is None:
                return False
            await asyncio.sleep(delay)

    async def metrics(self) -> str:
        """``GET /metrics``."""
        return await self._call(metrics_call())

    async def _connect(self) -> ClientConnection:
        return await connect(self._options.ws_url, **self._options.ws_options())

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

    async def frame(self, request: FrameRequest, timeout: float | None = REPLY_TIMEOUT) -> FrameReply:
        """One round trip; ProtocolError for an error reply."""
        await self.send(request)
        return await self.recv_frame(timeout)

    async def recv_frame(self, timeout: float | None = REPLY_TIMEOUT) -> FrameReply:
        return expect_frame(await self.recv(timeout))


class AsyncSession(SessionView, _AsyncSocket):
    """A running session (see :class:`lipsync_tools.client.sync.Session`); :meth:`begin` starts it."""

    def __init__(self, ws: ClientConnection, codec: Codec, start: SessionStart,
                 timeout: float = REPLY_TIMEOUT) -> None:
        super().__init__(ws, codec)
        self._state = SessionState(start, timeout)

    @property
    def started(self) -> SessionStarted | None:
        """The server's SessionStarted; None before :meth:`begin`."""
        return self._state.started

    async def begin(self) -> SessionStarted:
        """Send ``session_start`` and wait for ``session_started`` (ProtocolError if refused)."""
        await self.send(self._state.start_message())
        return self._state.receive_started(await self.recv(self.timeout))

    async def send_audio(self, pcm: np.ndarray | bytes | memoryview,
                         chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> None:
        """Send PCM16 mono 16 kHz as ``audio_chunk`` messages of ``chunk_seconds``."""
        for message in self._state.audio_messages(pcm, chunk_seconds, time.monotonic()):
            await self.send(message)

    async def end(self) -> None:
        """No more audio."""
        await self.send(self._state.end_message())

    async def next_frame(self, timeout: float | None = None) -> FrameReply | None:
        """The next frame, or None after the server's ``session_end``."""
        if self._state.finished:
            return None
        try:
            message = await self.recv(self._state.frame_timeout(timeout))
        except ConnectionClosed:
            self._state.connection_closed()
            return None
        return self._state.receive_frame(message)

    def __aiter__(self) -> AsyncIterator[FrameReply]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[FrameReply]:
        while (frame := await self.next_frame()) is not None:
            yield frame

    async def play(self, pcm: np.ndarray | bytes | memoryview, *,
                   chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
                   realtime: bool = False) -> AsyncIterator[FrameReply]:
        """Send ``pcm`` (then ``end``) from a task while yielding frames as they come."""
        data = pcm_bytes(pcm)

        async def feed() -> None:
            with contextlib.suppress(ConnectionClosed):
                for delay, chunk in paced_chunks(data, chunk_seconds, realtime, time.monotonic):
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.send_audio(chunk, chunk_seconds)
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
