"""One WebSocket connection on ``/v1/stream``: request/response frames and streaming sessions.

A connection reads messages one at a time (uvicorn stops reading the socket until the app asks for the next
message, so a client that sends faster than we consume is held back by TCP, not by our memory) and answers
each in the encoding it arrived in. Two kinds of work run beside the reader:

* ``frame_request``: processed concurrently, at most ``SessionLimits.max_inflight_requests`` at once; the
  reader waits for a slot before reading on.
* a session (``session_start`` … ``audio_chunk`` … ``session_end``): a producer turns the audio into frames
  and a sender writes them. Between them sits a bounded queue (``send_queue_frames``); the audio buffer is
  bounded too (``audio_buffer_bytes``; the reader waits for room, which again stops reading the socket).

The slow-client rule (docs/protocol.md, *Sessions*): a REALTIME session skips a frame whose time slot finds
the send queue full and closes with ``too_slow`` after ``max_skipped_frames`` skips in a row; an UNPACED
session waits for room and closes with ``too_slow`` after ``slow_client_seconds`` without progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import numpy as np
from starlette.websockets import WebSocket

from lipsync_tools.engine.pacing import is_silent, pingpong_index
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CLOSING_ERROR_CODES,
    CODECS,
    PCM_WINDOW_BYTES,
    PCM_WINDOW_SAMPLES,
    SAMPLE_RATE,
    AudioChunk,
    AudioFormat,
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
from lipsync_tools.server.config import SessionLimits
from lipsync_tools.server.metrics import Metrics

log = logging.getLogger("lipsync.server")

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # RFC 6455; sent by uvicorn/websockets for messages over ws_max_size
CLOSE_INTERNAL: Final = 1011

_CLOSE_CODE: Final[dict[str, int]] = {
    ErrorCode.BAD_MAGIC: CLOSE_PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_VERSION: CLOSE_PROTOCOL_ERROR,
    ErrorCode.UNAUTHORIZED: CLOSE_POLICY,
    ErrorCode.TOO_SLOW: CLOSE_POLICY,
}
"""WebSocket close code after an error reply with a closing code (docs/protocol.md, *Errors*)."""

OVERLOAD_RETRY_SECONDS: Final = 0.005


class EngineLike(Protocol):
    """What the server needs from :class:`lipsync_tools.engine.Engine` (a fake implements it in tests)."""

    async def process(
        self, request: FrameRequest, *, stream: Any | None = None, stream_frame: int = 0
    ) -> FrameReply: ...

    async def open_stream(self, package_id: str) -> Any | None:
        """Per-session audio state when the package's model hears several frames (``None``: not needed).

        It has ``look_ahead`` (frames of audio needed after the one rendered), ``add(k, window)`` and
        ``end(total)``; the session passes it back to :meth:`process` with each request."""
        ...

    async def original_frame(
        self, package_id: str, frame_index: int, image_format: ImageFormat, jpeg_quality: int
    ) -> FrameReply: ...


class PackageInfoLike(Protocol):
    """The fields of :class:`lipsync_tools.engine.PackageInfo` the server reads."""

    @property
    def id(self) -> str: ...

    @property
    def n_frames(self) -> int: ...

    @property
    def fps(self) -> float: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def load_seconds(self) -> dict[str, float]: ...

    def to_dict(self) -> dict[str, Any]: ...


class TooSlowError(Exception):
    """The client did not read its frames in time (the session closes with ``too_slow``)."""


class AudioBuffer:
    """PCM16 of one session, consumed one frame window at a time; bounded to ``capacity`` bytes.

    Frame ``k`` (0-based) starts at sample ``round(k * 16000 / fps)`` and needs ``PCM_WINDOW_SAMPLES``
    samples from there. After the client's ``session_end`` the session has ``ceil(samples * fps / 16000)``
    frames; windows running past the end are padded with zeros (silence).
    """

    def __init__(self, capacity: int, fps: float) -> None:
        self._capacity = capacity
        self._fps = fps
        self._data = bytearray()
        self._base = 0  # absolute sample index of self._data[0]
        self._received = 0  # samples received so far
        self._ended = False
        self._changed = asyncio.Condition()

    def _start(self, k: int) -> int:
        return round(k * SAMPLE_RATE / self._fps)

    async def feed(self, pcm: bytes | memoryview) -> None:
        """Append ``pcm`` (even length, at most one chunk); waits while the buffer has no room for it."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._data) + len(pcm) <= self._capacity)
            self._data += pcm
            self._received += len(pcm) // 2
            self._changed.notify_all()

    async def end(self) -> None:
        """No more audio will come."""
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    def frame_count(self) -> int | None:
        """Frames this session will have, once the client ended its audio (``None`` before)."""
        if not self._ended:
            return None
        return math.ceil(self._received * self._fps / SAMPLE_RATE)

    async def window(self, k: int) -> np.ndarray | None:
        """Frame ``k``'s int16 ``(PCM_WINDOW_SAMPLES,)`` window (waits for its audio); None past the end."""
        start = self._start(k)
        need = start + PCM_WINDOW_SAMPLES
        async with self._changed:
            await self._changed.wait_for(lambda: self._ended or self._received >= need)
            total = self.frame_count()
            if total is not None and k >= total:
                return None
            lo = (start - self._base) * 2
            chunk = bytes(self._data[lo : lo + PCM_WINDOW_BYTES])
            # Samples before the next frame's start are never needed again.
            drop = max(0, min(len(self._data), (self._start(k + 1) - self._base) * 2))
            del self._data[:drop]
            self._base += drop // 2
            self._changed.notify_all()
        window = np.zeros(PCM_WINDOW_SAMPLES, dtype=np.int16)
        window[: len(chunk) // 2] = np.frombuffer(chunk, dtype="<i2")
        return window


class Session:
    """One streaming session: audio in, frames out at the package fps (REALTIME) or as fast as possible.

    ``send`` writes one message to the socket (serialised by the connection). ``run`` returns when the last
    frame and the closing ``session_end`` were sent; it raises :class:`TooSlowError` per the slow-client rule
    and :class:`ProtocolError` when a frame cannot be made (e.g. the package was unloaded).
    """

    def __init__(
        self,
        start: SessionStart,
        info: PackageInfoLike,
        *,
        engine: EngineLike,
        metrics: Metrics,
        limits: SessionLimits,
        silence_dbfs: float,
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        self.start = start
        self.info = info
        self.engine = engine
        self.metrics = metrics
        self.limits = limits
        self.silence_dbfs = silence_dbfs
        self._send = send
        self.audio = AudioBuffer(limits.audio_buffer_bytes, info.fps)
        self._queue: asyncio.Queue[FrameReply | None] = asyncio.Queue(maxsize=limits.send_queue_frames)
        self.frames_sent = 0
        self.frames_skipped = 0

    async def run(self) -> None:
        """Produce and send every frame, then ``session_end``."""
        sender = asyncio.create_task(self._sender())
        try:
            await self._produce()
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
        await self._send(SessionEnd(request_id=self.start.request_id))

    async def _sender(self) -> None:
        while True:
            reply = await self._queue.get()
            if reply is None:
                return
            await self._send(reply)
            self.frames_sent += 1
            self.metrics.frame_sent("session", reply.silence)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        realtime = self.start.pacing is Pacing.REALTIME
        period = 1.0 / self.info.fps
        t0: float | None = None
        skipped_in_a_row = 0
        # Families whose audio window reaches ahead (AVE: 6 frames) need that audio before a frame renders.
        stream = await self.engine.open_stream(self.start.package_id)
        look_ahead = stream.look_ahead if stream is not None else 0
        windows: dict[int, np.ndarray] = {}
        next_window = 0
        ended = False
        k = 0
        while True:
            while not ended and next_window <= k + look_ahead:
                read = await self.audio.window(next_window)
                if read is None:
                    ended = True
                    if stream is not None:
                        stream.end(next_window)
                    break
                windows[next_window] = read
                if stream is not None:
                    stream.add(next_window, read)
                next_window += 1
            window = windows.pop(k, None)
            if window is None:
                break
            index = pingpong_index(self.start.start_frame + k, self.info.n_frames)
            reply = await self._render(index, window, realtime, stream, k)
            if realtime:
                if t0 is None:
                    t0 = loop.time()
                delay = t0 + k * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if reply is None or self._queue.full():
                    if reply is not None:
                        skipped_in_a_row += 1
                        if skipped_in_a_row > self.limits.max_skipped_frames:
                            raise TooSlowError(
                                f"the client read no frame for {skipped_in_a_row} frame slots "
                                f"({skipped_in_a_row * period:.1f} s); read frames as they come, or use "
                                "unpaced pacing"
                            )
                    self.frames_skipped += 1
                    self.metrics.inc("lipsync_session_frames_skipped_total")
                else:
                    skipped_in_a_row = 0
                    self._queue.put_nowait(reply)
            else:
                assert reply is not None  # unpaced renders retry instead of skipping
                await self._put_unpaced(reply)
            k += 1
        await self._put_unpaced(None)

    async def _put_unpaced(self, item: FrameReply | None) -> None:
        try:
            await asyncio.wait_for(self._queue.put(item), self.limits.slow_client_seconds)
        except TimeoutError:
            raise TooSlowError(
                f"the client read no frame for {self.limits.slow_client_seconds:g} s; read frames as they "
                "come (send audio from another thread or task)"
            ) from None

    async def _render(
        self, index: int, window: np.ndarray, realtime: bool, stream: Any | None = None, k: int = 0
    ) -> FrameReply | None:
        """The frame for avatar ``index`` and audio ``window`` (session frame ``k``); None when REALTIME
        skips it (overloaded)."""
        start = self.start
        deadline = asyncio.get_running_loop().time() + self.limits.slow_client_seconds
        while True:
            try:
                if is_silent(window, self.silence_dbfs):
                    return await self.engine.original_frame(
                        start.package_id, index, start.image, start.jpeg_quality
                    )
                request = FrameRequest(
                    request_id=0, package_id=start.package_id, frame_index=index, audio=AudioFormat.PCM16,
                    image=start.image, jpeg_quality=start.jpeg_quality, payload=window.tobytes(),
                )
                return await self.engine.process(request, stream=stream, stream_frame=k)
            except ProtocolError as exc:
                if exc.code != ErrorCode.OVERLOADED:
                    raise
                # The engine's queue is shared by every client: a live session drops this frame, an
                # offline one waits its turn.
                if realtime or asyncio.get_running_loop().time() > deadline:
                    if realtime:
                        return None
                    raise
                await asyncio.sleep(OVERLOAD_RETRY_SECONDS)


class ServerLike(Protocol):
    """The parts of the server state a connection uses (see :class:`lipsync_tools.server.app.ServerState`)."""

    metrics: Metrics

    @property
    def limits(self) -> SessionLimits: ...

    @property
    def silence_dbfs(self) -> float: ...

    def require_engine(self) -> EngineLike: ...

    def package_info(self, package_id: str) -> PackageInfoLike: ...

    async def ensure_package(self, package_id: str) -> None: ...

    def hold_package(self, package_id: str) -> None: ...

    def release_package(self, package_id: str) -> None: ...


class StreamConnection:
    """Serves one accepted WebSocket until the client leaves, a closing error, or the session's end."""

    def __init__(self, websocket: WebSocket, server: ServerLike) -> None:
        self.ws = websocket
        self.server = server
        self.metrics = server.metrics
        self.limits = server.limits
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.limits.max_inflight_requests)
        self._requests: set[asyncio.Task[None]] = set()
        self._session: Session | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()  # set when the connection must end (closed by us)

    async def serve(self) -> None:
        """Read and answer messages until the connection ends; never raises for client behaviour."""
        reader = asyncio.create_task(self._read_loop())
        done = asyncio.create_task(self._done.wait())
        try:
            await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pending = bool(self._requests) or (
                self._session_task is not None and not self._session_task.done()
            )
            client_left = reader.done() and not self._done.is_set()
            tasks = [reader, done, *self._requests]
            if self._session_task is not None:
                tasks.append(self._session_task)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if client_left:
                # Work still in flight for a client that left is dropped, not answered: count it.
                self.metrics.inc("lipsync_disconnects_total", pending="true" if pending else "false")
            if self._session is not None:
                self.metrics.add_gauge("lipsync_active_sessions", -1)
                self._session = None

    async def _read_loop(self) -> None:
        while True:
            event = await self.ws.receive()
            if event["type"] == "websocket.disconnect":
                if event.get("code") == CLOSE_MESSAGE_TOO_BIG:
                    # uvicorn refuses a message over ws_max_size before this handler sees it; count it
                    # like every other oversize request.
                    self.metrics.error(ErrorCode.OVERSIZE)
                return
            data: bytes | str
            if event.get("bytes") is not None:
                data, codec = event["bytes"], CODECS["binary"]
            else:
                data, codec = event.get("text") or "", CODECS["json"]
            try:
                message = codec.decode(data)
            except ProtocolError as exc:
                await self._fail(exc, codec, 0)
                continue
            self.metrics.inc("lipsync_messages_total", protocol=codec.name, type=message.TYPE.wire_name)
            await self._dispatch(message, codec)

    async def _dispatch(self, message: Message, codec: Codec) -> None:
        match message:
            case FrameRequest():
                await self._slots.acquire()  # backpressure: read nothing more until a slot frees
                task = asyncio.create_task(self._answer(message, codec))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)
            case SessionStart():
                await self._start_session(message, codec)
            case AudioChunk():
                if self._session is None or self._session.audio.ended:
                    await self._fail(self._unexpected("audio_chunk", "before session_start or after "
                                                      "session_end"), codec, message.request_id)
                    return
                await self._session.audio.feed(message.payload)
            case SessionEnd():
                if self._session is None or self._session.audio.ended:
                    await self._fail(self._unexpected("session_end", "without a running session"), codec,
                                     message.request_id)
                    return
                await self._session.audio.end()
            case _:
                await self._fail(
                    self._unexpected(message.TYPE.wire_name, "from a client (it is a server message)"),
                    codec, message.request_id,
                )

    @staticmethod
    def _unexpected(what: str, when: str) -> ProtocolError:
        return ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"got {what} {when}; see the session rules in "
                             "docs/protocol.md")

    async def _answer(self, request: FrameRequest, codec: Codec) -> None:
        try:
            engine = self.server.require_engine()
            await self.server.ensure_package(request.package_id)
            reply = await engine.process(request)
        except ProtocolError as exc:
            await self._fail(exc, codec, request.request_id)
            return
        except Exception as exc:
            log.exception("frame request %d failed", request.request_id)
            await self._fail(ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), codec,
                             request.request_id)
            return
        finally:
            self._slots.release()
        await self.send(reply, codec)
        self.metrics.frame_sent("stream", reply.silence)

    async def _start_session(self, start: SessionStart, codec: Codec) -> None:
        if self._session is not None:
            await self._fail(self._unexpected("session_start", "while a session is running"), codec,
                             start.request_id)
            return
        try:
            engine = self.server.require_engine()
            await self.server.ensure_package(start.package_id)
            info = self.server.package_info(start.package_id)
            if start.start_frame >= info.n_frames:
                raise ProtocolError(
                    ErrorCode.FRAME_OUT_OF_RANGE,
                    f"start_frame {start.start_frame} is beyond package {start.package_id!r}, which has "
                    f"{info.n_frames} frames (0-{info.n_frames - 1})",
                )
        except ProtocolError as exc:
            await self._fail(exc, codec, start.request_id)
            return

        async def send(message: Message) -> None:
            await self.send(message, codec)

        session = Session(start, info, engine=engine, metrics=self.metrics, limits=self.limits,
                          silence_dbfs=self.server.silence_dbfs, send=send)
        started = SessionStarted(request_id=start.request_id, package_id=start.package_id, fps=info.fps,
                                 frame_count=info.n_frames, width=info.width, height=info.height)
        await self.send(started, codec)
        self._session = session
        self.metrics.inc("lipsync_sessions_total")
        self.metrics.add_gauge("lipsync_active_sessions", 1)
        self._session_task = asyncio.create_task(self._run_session(session, codec))

    async def _run_session(self, session: Session, codec: Codec) -> None:
        try:
            self.server.hold_package(session.start.package_id)  # never evicted while the session runs
        except ProtocolError as exc:
            await self._fail(exc, codec, session.start.request_id)
            return
        try:
            await self._run_held_session(session, codec)
        finally:
            self.server.release_package(session.start.package_id)

    async def _run_held_session(self, session: Session, codec: Codec) -> None:
        try:
            await session.run()
        except TooSlowError as exc:
            await self._fail(ProtocolError(ErrorCode.TOO_SLOW, str(exc)), codec, session.start.request_id)
            return
        except ProtocolError as exc:
            await self._fail(exc, codec, session.start.request_id)
            await self._close(CLOSE_NORMAL, f"session ended: {exc.code}")
            return
        except Exception as exc:
            log.exception("session on %s failed", session.start.package_id)
            await self._fail(ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), codec,
                             session.start.request_id)
            await self._close(CLOSE_INTERNAL, "internal error")
            return
        await self._close(CLOSE_NORMAL, "session over")

    async def send(self, message: Message, codec: Codec) -> None:
        """Write ``message`` in ``codec``'s encoding (binary frame or text frame), one writer at a time."""
        data = codec.encode(message)
        async with self._send_lock:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)

    async def _fail(self, error: ProtocolError, codec: Codec, request_id: int) -> None:
        """Send an ErrorReply for ``error``, count it, and close the socket if its code is a closing one."""
        self.metrics.error(error.code)
        reply = ErrorReply.from_error(error, request_id)
        closing = error.code in CLOSING_ERROR_CODES
        try:
            if closing:
                # The client may not be reading (too_slow): try for a bounded time, then drop it.
                await asyncio.wait_for(self.send(reply, codec), self.limits.close_timeout_seconds)
            else:
                await self.send(reply, codec)
        except (TimeoutError, Exception) as exc:  # a gone or stuck client: nothing more to tell it
            log.debug("could not send %s error: %s", error.code, exc)
            closing = True
        if closing:
            await self._close(_CLOSE_CODE.get(error.code, CLOSE_POLICY), error.code)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), self.limits.close_timeout_seconds)
        self._done.set()
