"""One WebSocket connection on ``/v1/stream``: accept, read, dispatch, send, close.

:func:`serve_stream` accepts the socket (echoing the ``lipsync`` subprotocol when offered; the bearer token
was checked before, by ``app.BearerAuth``) and hands it to a :class:`StreamConnection`, which reads messages
one at a time (uvicorn stops reading the socket until the app asks for the next message, so a client that
sends faster than we consume is held back by TCP, not by our memory) and answers each in the encoding it
arrived in (binary frame: binary codec, text frame: JSON). Two kinds of work run beside the reader:

* ``frame_request``: processed concurrently, at most ``SessionLimits.max_inflight_requests`` at once, each
  counted until its reply is written to the socket; the reader waits for a slot before reading on, so a
  client that pipelines requests and never reads makes the server hold at most that many replies (issue 11:
  the slot used to be freed before the send, and 400 unread raw 720p replies grew a server by 2.2 GB).
* a session (``session_start`` … ``audio_chunk`` … ``session_end``), admitted first by
  :class:`~lipsync_tools.server.admission.Admission`, then run by
  :class:`~lipsync_tools.server.sessions.Session` (pacing, audio buffer, frame loop); the reader feeds it
  the audio.

Every write waits its turn on the socket and then has ``slow_client_seconds`` to reach it (a reply, an
error, ``session_started``): a client that takes nothing for that long is closed with ``too_slow``. Error
replies with a closing code close the socket with the matching WebSocket close code.

Large JSON messages are encoded and decoded in the server's codec threads (:func:`encode_message`,
:func:`decode_message`, :func:`encode_body` for HTTP bodies), so base64 of a raw frame does not stall every
other connection on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any, Final, Protocol

from starlette.types import Scope
from starlette.websockets import WebSocket

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CLOSING_ERROR_CODES,
    CODECS,
    AudioChunk,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameRequest,
    Message,
    Pacing,
    SessionEnd,
    SessionStart,
    SessionStarted,
    UnsupportedVersionError,
)
from lipsync_tools.server.admission import Admission, Ticket
from lipsync_tools.server.config import MAX_BINARY_REQUEST_BYTES, OFFLOAD_CODEC_BYTES, SessionLimits
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import (
    EngineLike,
    IdleError,
    PackageInfoLike,
    Session,
    TooSlowError,
    look_ahead_seconds,
)
from lipsync_tools.server.translate import engine_request, frame_reply, wire_errors

log = logging.getLogger("lipsync.server")

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # RFC 6455; sent by uvicorn/websockets for messages over ws_max_size
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013  # RFC 6455 registry: a connection refused over --max-connections

_CLOSE_CODE: Final[dict[str, int]] = {
    ErrorCode.BAD_MAGIC: CLOSE_PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_VERSION: CLOSE_PROTOCOL_ERROR,
    ErrorCode.UNAUTHORIZED: CLOSE_POLICY,
    ErrorCode.TOO_SLOW: CLOSE_POLICY,
    ErrorCode.IDLE_TIMEOUT: CLOSE_NORMAL,
}
"""WebSocket close code after an error reply with a closing code (docs/protocol.md, *Errors*)."""


def _offloaded(codec: Codec, size: int) -> bool:
    return codec.name == "json" and size > OFFLOAD_CODEC_BYTES


async def encode_message(codec: Codec, message: Message, pool: Executor | None) -> bytes | str:
    """``codec.encode(message)``; in ``pool`` for a JSON message whose payload is over
    :data:`~lipsync_tools.server.config.OFFLOAD_CODEC_BYTES` (binary encoding is one copy: it stays)."""
    payload = getattr(message, "payload", b"")
    if pool is not None and _offloaded(codec, len(payload)):
        return await asyncio.get_running_loop().run_in_executor(pool, codec.encode, message)
    return codec.encode(message)


def _encode_bytes(codec: Codec, message: Message) -> bytes:
    data = codec.encode(message)
    return data.encode("ascii") if isinstance(data, str) else data  # JSON is ASCII (escapes)


async def encode_body(codec: Codec, message: Message, pool: Executor | None) -> bytes:
    """:func:`encode_message` as the bytes of an HTTP body (a large JSON text is turned into bytes in the
    same worker thread)."""
    payload = getattr(message, "payload", b"")
    if pool is not None and _offloaded(codec, len(payload)):
        return await asyncio.get_running_loop().run_in_executor(pool, _encode_bytes, codec, message)
    return _encode_bytes(codec, message)


async def decode_message(codec: Codec, data: bytes | str, pool: Executor | None) -> Message:
    """``codec.decode(data)``; in ``pool`` for JSON text over ``OFFLOAD_CODEC_BYTES`` (an audio chunk of
    1 MiB is 1.4 MB of base64 and takes about 2 ms to parse and decode). Raises ProtocolError."""
    if pool is not None and _offloaded(codec, len(data)):
        return await asyncio.get_running_loop().run_in_executor(pool, codec.decode, data)
    return codec.decode(data)


WS_SUBPROTOCOL = "lipsync"
"""The WebSocket subprotocol the server accepts (and echoes) when a client offers it (browsers need it)."""


def received_message(event: Mapping[str, Any]) -> tuple[bytes | str, Codec]:
    """A ``websocket.receive`` event's data and the codec it is in: binary frames are the binary codec,
    text frames JSON."""
    if event.get("bytes") is not None:
        return event["bytes"], CODECS["binary"]
    return event.get("text") or "", CODECS["json"]


def check_client_size(codec: Codec, data: bytes | str) -> None:
    """``oversize`` for a binary message over :data:`MAX_BINARY_REQUEST_BYTES` (the transport's cap is the
    JSON one, the larger; binary messages have their own)."""
    if codec.name == "binary" and len(data) > MAX_BINARY_REQUEST_BYTES:
        raise ProtocolError(ErrorCode.OVERSIZE, (
            f"message is {len(data)} bytes; the largest a client may send is {MAX_BINARY_REQUEST_BYTES} "
            "(an audio_chunk of 1 MiB): send audio in smaller chunks"))


def offered_subprotocols(scope: Scope) -> list[str]:
    """The subprotocols a WebSocket client offered (``Sec-WebSocket-Protocol``), in order."""
    return [p for p in (s.strip() for s in scope.get("subprotocols") or []) if p]


def accepted_subprotocol(scope: Scope) -> str | None:
    """``lipsync`` when the client offered it, else None (a ``bearer.`` entry is never echoed)."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered_subprotocols(scope) else None


async def serve_stream(websocket: WebSocket, server: ServerLike) -> None:
    """``/v1/stream``: accept the socket, then serve sessions and request/response frames on it until it
    ends (:class:`StreamConnection`)."""
    await websocket.accept(subprotocol=accepted_subprotocol(websocket.scope))
    await StreamConnection(websocket, server).serve()


class ServerLike(Protocol):
    """The parts of the server state a connection uses (see
    :class:`~lipsync_tools.server.state.SharedState`)."""

    metrics: Metrics
    admission: Admission
    codec_pool: Executor | None
    """Threads that encode and decode large JSON messages (None: on the event loop)."""

    @property
    def limits(self) -> SessionLimits: ...

    @property
    def silence_dbfs(self) -> float: ...

    def require_engine(self) -> EngineLike: ...

    def package_info(self, package_id: str) -> PackageInfoLike: ...

    async def ensure_package(self, package_id: str) -> None: ...

    def hold_package(self, package_id: str) -> None: ...

    def release_package(self, package_id: str) -> None: ...

    def claim_client_session(self, host: str) -> None:
        """Count a live session of client address ``host``; ``ProtocolError(overloaded)`` when that address
        already runs ``max_sessions_per_ip``."""
        ...

    def release_client_session(self, host: str) -> None: ...


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
        self._closing = False  # a closing error or close is under way: tell the client nothing more
        client = websocket.scope.get("client")
        self._host = str(client[0]) if client else "unknown"

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
            data, codec = received_message(event)
            try:
                check_client_size(codec, data)
                message = await decode_message(codec, data, self.server.codec_pool)
            except ProtocolError as exc:
                await self._fail(exc, codec, 0)
                continue
            self.metrics.inc("lipsync_messages_total", protocol=codec.name, type=message.TYPE.wire_name)
            try:
                await self._dispatch(message, codec)
            except TooSlowError as exc:  # session_started or an error reply found no room on the socket
                await self._fail(ProtocolError(ErrorCode.TOO_SLOW, str(exc)), codec, message.request_id)
                return

    async def _dispatch(self, message: Message, codec: Codec) -> None:
        match message:
            case FrameRequest():
                await self._slots.acquire()  # backpressure: read nothing more until a slot frees
                if self._closing:  # the slot freed because the connection is being dropped
                    self._slots.release()
                    return
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
        # The slot is held until the reply is on the socket: a reply the client does not read still counts
        # against max_inflight_requests, so the reader stops reading (TCP backpressure) instead of the server
        # rendering and holding every request the client pipelines.
        try:
            try:
                engine = self.server.require_engine()
                await self.server.ensure_package(request.package_id)
                with wire_errors():
                    result = await engine.process(engine_request(request))
                reply = frame_reply(result, request.request_id)
            except ProtocolError as exc:
                await self._fail(exc, codec, request.request_id)
                return
            except Exception as exc:
                log.exception("frame request %d failed", request.request_id)
                await self._fail(ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), codec,
                                 request.request_id)
                return
            await self.send(reply, codec)
            self.metrics.frame_sent("stream", reply.silence)
        except TooSlowError as exc:
            await self._fail(ProtocolError(ErrorCode.TOO_SLOW, str(exc)), codec, request.request_id)
        finally:
            self._slots.release()

    async def _start_session(self, start: SessionStart, codec: Codec) -> None:
        if self._session is not None:
            await self._fail(self._unexpected("session_start", "while a session is running"), codec,
                             start.request_id)
            return
        admission = self.server.admission
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
            with wire_errors():
                model = await engine.model_for(start.package_id)
                stream = await engine.open_stream(start.package_id)
        except ProtocolError as exc:
            await self._fail(exc, codec, start.request_id)
            return
        try:
            self.server.claim_client_session(self._host)
        except ProtocolError as exc:
            self.metrics.inc("lipsync_sessions_refused_total")
            await self._fail(exc, codec, start.request_id)
            return
        try:
            ticket = admission.admit(model, info.fps)
        except ProtocolError as exc:
            self.server.release_client_session(self._host)
            if exc.code == ErrorCode.OVERLOADED:
                self.metrics.inc("lipsync_sessions_refused_total")
            await self._fail(exc, codec, start.request_id)
            return
        look_ahead = stream.look_ahead if stream is not None else 0
        max_lag = 0.0
        if start.pacing is Pacing.REALTIME:
            max_lag = admission.max_lag(model, info.fps, look_ahead_seconds(look_ahead, info.fps))

        async def send(message: Message) -> None:
            await self.send(message, codec)

        session = Session(start, info, engine=engine, metrics=self.metrics, limits=self.limits,
                          silence_dbfs=self.server.silence_dbfs, send=send, max_lag=max_lag, model=model,
                          stream=stream)
        started = SessionStarted(request_id=start.request_id, package_id=start.package_id, fps=info.fps,
                                 frame_count=info.n_frames, width=info.width, height=info.height,
                                 max_lag_ms=math.ceil(max_lag * 1000))
        try:
            await self.send(started, codec)
        except BaseException:
            admission.release(ticket)
            self.server.release_client_session(self._host)
            raise
        self._session = session
        self.metrics.inc("lipsync_sessions_total")
        self.metrics.add_gauge("lipsync_active_sessions", 1)
        self._session_task = asyncio.create_task(self._run_session(session, codec, ticket))

    async def _run_session(self, session: Session, codec: Codec, ticket: Ticket) -> None:
        try:
            try:
                self.server.hold_package(session.start.package_id)  # never evicted while the session runs
            except ProtocolError as exc:
                await self._fail(exc, codec, session.start.request_id)
                return
            try:
                await self._run_held_session(session, codec)
            finally:
                self.server.release_package(session.start.package_id)
        finally:
            self.server.admission.release(ticket)
            self.server.release_client_session(self._host)

    async def _run_held_session(self, session: Session, codec: Codec) -> None:
        try:
            await session.run()
        except TooSlowError as exc:
            await self._fail(ProtocolError(ErrorCode.TOO_SLOW, str(exc)), codec, session.start.request_id)
            return
        except IdleError as exc:
            await self._fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, str(exc)), codec, session.start.request_id)
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
        """Write ``message`` in ``codec``'s encoding (binary frame or text frame), one writer at a time.

        Raises :class:`TooSlowError` when the socket does not take it within ``slow_client_seconds`` of its
        turn (the client is not reading)."""
        await self._write(await encode_message(codec, message, self.server.codec_pool))

    async def _write(self, data: bytes | str, *, bounded: bool = True) -> None:
        """Write ``data`` once the writers before it are done; ``bounded``: it then has
        ``slow_client_seconds`` to reach the socket, else :class:`TooSlowError`.

        The bound starts at the message's turn, not when it was queued: a client reading a long run of big
        replies over a slow link is not too slow as long as the socket keeps taking them."""
        limit = self.limits.slow_client_seconds if bounded else None
        async with self._send_lock:
            try:
                async with asyncio.timeout(limit):
                    if isinstance(data, bytes):
                        await self.ws.send_bytes(data)
                    else:
                        await self.ws.send_text(data)
            except TimeoutError:
                raise TooSlowError(
                    f"the client took no message for {self.limits.slow_client_seconds:g} s; read replies "
                    "as they come (a request counts against the socket's in-flight limit until its reply "
                    "is read)"
                ) from None

    async def _fail(self, error: ProtocolError, codec: Codec, request_id: int) -> None:
        """Send an ErrorReply for ``error``, count it, and close the socket if its code is a closing one.

        Once the connection is closing, later failures (e.g. the other replies of a client that stopped
        reading) are neither sent nor counted: one stuck client is one ``too_slow``."""
        if self._closing:
            return
        closing = error.code in CLOSING_ERROR_CODES
        self._closing = closing
        self.metrics.error(error.code)
        reply = ErrorReply.from_error(error, request_id)
        # A peer of another protocol version gets the error in its own version, so it can read why.
        version = error.version if isinstance(error, UnsupportedVersionError) else None
        data = codec.encode_error(reply, version)
        try:
            if closing:
                # The client may not be reading (too_slow): try for a bounded time, then drop it.
                async with asyncio.timeout(self.limits.close_timeout_seconds):
                    await self._write(data, bounded=False)
            else:
                await self._write(data)
        except TooSlowError as exc:  # not even a small error reply fits: the client stopped reading
            await self._fail(ProtocolError(ErrorCode.TOO_SLOW, str(exc)), codec, request_id)
            return
        except (TimeoutError, Exception) as exc:  # a gone or stuck client: nothing more to tell it
            log.debug("could not send %s error: %s", error.code, exc)
            closing = True
        if closing:
            await self._close(_CLOSE_CODE.get(error.code, CLOSE_POLICY), error.code)

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.limits.close_timeout_seconds):
                await self.ws.close(code, reason)
        self._done.set()
