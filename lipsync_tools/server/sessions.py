"""One WebSocket connection on ``/v1/stream``: request/response frames and streaming sessions.

A connection reads messages one at a time (uvicorn stops reading the socket until the app asks for the next
message, so a client that sends faster than we consume is held back by TCP, not by our memory) and answers
each in the encoding it arrived in. Two kinds of work run beside the reader:

* ``frame_request``: processed concurrently, at most ``SessionLimits.max_inflight_requests`` at once, each
  counted until its reply is written to the socket; the reader waits for a slot before reading on, so a
  client that pipelines requests and never reads makes the server hold at most that many replies (issue 11:
  the slot used to be freed before the send, and 400 unread raw 720p replies grew a server by 2.2 GB).
* a session (``session_start`` … ``audio_chunk`` … ``session_end``), admitted first by
  :class:`~lipsync_tools.server.admission.Admission`: the reader feeds its audio into
  :class:`SessionAudio` (the streaming mel spectrogram, on ``lipsync render``'s sample grid, and the audio
  clock); a producer submits each frame to the engine once its audio is there, at most
  ``inflight_frames`` at once; a sender writes the replies in order. The audio buffer is bounded
  (``audio_buffer_bytes``; the reader waits for room, which again stops reading the socket).

The real-time rule (docs/protocol.md, *Sessions*): a REALTIME frame is sent no earlier than its audio
plays and no later than that plus ``max_lag``; a frame that cannot make it is not rendered, one that became
late on the way is not sent (both are *dropped*). A frame that waits ``slow_client_seconds`` for the socket,
or ``max_skipped_frames`` frames in a row that expire behind earlier ones on the socket, close the session
with ``too_slow``. Every other write has the same bound once it is its turn on the socket (a reply, an
error, ``session_started``): a client that takes nothing for ``slow_client_seconds`` is closed with
``too_slow``.

Large JSON messages are encoded and decoded in the server's codec threads (:func:`encode_message`,
:func:`decode_message`), so base64 of a raw frame does not stall every other connection on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
from starlette.websockets import WebSocket

from lipsync_tools.audio.mel import MEL_WINDOW_FRAMES
from lipsync_tools.audio.streaming import StreamingMel, frame_audio_offset
from lipsync_tools.engine.batcher import Expired
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
    UnsupportedVersionError,
)
from lipsync_tools.server.admission import Admission, ModelLike, Ticket
from lipsync_tools.server.config import MAX_BINARY_REQUEST_BYTES, OFFLOAD_CODEC_BYTES, SessionLimits
from lipsync_tools.server.metrics import Metrics

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

OVERLOAD_RETRY_SECONDS: Final = 0.005

SEND_MARGIN_SECONDS: Final = 0.005
"""What a REALTIME session keeps of each frame's bound for writing it and the client reading it: a frame is
sent only while it can still arrive within ``max_lag_ms`` (measured: about 1 ms on one machine)."""

LOOK_AHEAD_SAMPLES: Final = (MEL_WINDOW_FRAMES - 1) * 200 + 400
"""Samples of audio after a frame's own time that its mel window needs: the window's last mel frame is
centred 15 hops (of 200 samples) after its first and reaches half an FFT (400 samples) beyond: 0.2125 s."""


def look_ahead_seconds(look_ahead_frames: int, fps: float) -> float:
    """How much audio after a frame's time its model input needs: its own mel window, plus
    ``look_ahead_frames`` frames for models that hear ahead (SyncTalk_2D's AVE: 6)."""
    return LOOK_AHEAD_SAMPLES / SAMPLE_RATE + look_ahead_frames / fps


class EngineLike(Protocol):
    """What the server needs from :class:`lipsync_tools.engine.Engine` (a fake implements it in tests)."""

    post_seconds: float
    """Compositing + encoding seconds per model frame (a moving average)."""

    async def process(
        self, request: FrameRequest, *, stream: Any | None = None, stream_frame: int = 0,
        deadline: float | None = None,
    ) -> FrameReply:
        """The frame; with ``deadline`` (event-loop time) it raises
        :class:`~lipsync_tools.engine.batcher.Expired` instead of rendering a frame that would be late."""
        ...

    async def open_stream(self, package_id: str) -> Any | None:
        """Per-session audio state when the package's model hears several frames (``None``: not needed).

        It has ``look_ahead`` (frames of audio needed after the one rendered), ``add(k, window)`` and
        ``end(total)``; the session passes it back to :meth:`process` with each request."""
        ...

    async def model_for(self, package_id: str) -> ModelLike: ...

    def expected_latency(self, model: Any) -> float:
        """Seconds a frame submitted now for ``model`` is expected to take until its reply is ready."""
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


class TooSlowError(Exception):
    """The client did not read its frames in time (the session closes with ``too_slow``)."""


class IdleError(Exception):
    """The client sent no audio for the idle timeout without ending its session (``idle_timeout``)."""


class SessionAudio:
    """One session's audio: the streaming mel spectrogram, the PCM for silence checks, and the audio clock.

    Frame ``k`` (0-based) is shown at sample ``round(k * 16000 / fps)``; its model input is the mel window
    :class:`~lipsync_tools.audio.streaming.StreamingMel` gives it, on the sample grid of ``lipsync render``.
    After the client's ``session_end`` the session has as many frames as a render of the same audio.

    The audio clock: sample ``s`` plays at ``t0 + s / 16000`` (event-loop seconds), where ``t0`` is when the
    first chunk arrived. A chunk that arrives more than ``resync_seconds`` after its own first sample should
    have played means the client paused: the clock restarts from it (``t0 = arrival - s / 16000``).

    PCM is bounded to ``capacity`` bytes: :meth:`feed` waits for room, which stops the connection reading the
    socket (TCP backpressure); frames the session is done with are released by :meth:`discard_before`.
    """

    def __init__(self, capacity: int, fps: float, *, resync_seconds: float = 0.5) -> None:
        self._capacity = capacity
        self.fps = fps
        self.resync_seconds = resync_seconds
        # Room for every mel frame of a full PCM buffer, so a client that sends ahead loses none.
        self.mel = StreamingMel(fps, keep_frames=capacity // (2 * 200) + 64)
        self._pcm = bytearray()
        self._base = 0  # absolute sample index of self._pcm[0]
        self.t0: float | None = None
        self.last_audio: float | None = None  # loop time the last chunk arrived
        self._opened: float | None = None  # loop time the session first waited for audio
        self.resyncs = 0
        self._changed = asyncio.Condition()

    @property
    def ended(self) -> bool:
        return self.mel.ended

    @property
    def samples(self) -> int:
        return self.mel.samples

    async def feed(self, pcm: bytes | memoryview) -> None:
        """Append ``pcm`` (PCM16 LE, at most one chunk); waits while the buffer has no room for it."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._pcm) + len(pcm) <= self._capacity)
            now = asyncio.get_running_loop().time()
            first = self.mel.samples
            if self.t0 is None:
                self.t0 = now
            elif now > self.t0 + first / SAMPLE_RATE + self.resync_seconds:
                self.t0 = now - first / SAMPLE_RATE  # the client paused: its audio clock restarts here
                self.resyncs += 1
            self.last_audio = now
            self._pcm += pcm
            self.mel.feed(np.frombuffer(pcm, dtype="<i2"))
            self._changed.notify_all()

    async def end(self) -> None:
        """No more audio will come."""
        async with self._changed:
            if not self.mel.ended:
                self.mel.end()
            self._changed.notify_all()

    def frame_count(self) -> int | None:
        """Frames this session will have, once the client ended its audio (``None`` before)."""
        return self.mel.video_frames()

    def ready(self, k: int) -> bool:
        """Whether frame ``k``'s audio is all there (always after the end: later frames are silence)."""
        return self.mel.ended or self.mel.ready(k)

    async def wait_ready(self, k: int, idle_seconds: float) -> None:
        """Wait until :meth:`ready` (``k``); :class:`IdleError` after ``idle_seconds`` without new audio."""
        loop = asyncio.get_running_loop()
        if self._opened is None:
            self._opened = loop.time()  # before any audio, the idle clock runs from the first wait
        async with self._changed:
            while not self.ready(k):
                last = self.last_audio if self.last_audio is not None else self._opened
                remaining = last + idle_seconds - loop.time()
                if remaining <= 0:
                    raise IdleError(
                        f"no audio for {idle_seconds:g} s and no session_end; send audio (silence keeps an "
                        "avatar idling) or end the session"
                    )
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when its awaitable
                # completes in the tick the task is cancelled (CPython gh-86296), losing the cancellation; a
                # cancelled producer then blocked forever and its session hung (found by `bench --soak`).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()

    def play_time(self, k: int) -> float:
        """Event-loop time at which frame ``k``'s audio plays (the clock must have started)."""
        assert self.t0 is not None
        return self.t0 + k / self.fps

    def mel_window(self, k: int) -> np.ndarray:
        """Frame ``k``'s float32 ``(80, 16)`` mel window (``ready(k)`` must hold)."""
        return self.mel.window(k)

    def pcm_window(self, k: int) -> np.ndarray:
        """Frame ``k``'s int16 ``(PCM_WINDOW_SAMPLES,)`` samples from its start (zeros past the end)."""
        lo = (frame_audio_offset(k, self.fps) - self._base) * 2
        chunk = bytes(self._pcm[max(0, lo) : max(0, lo) + PCM_WINDOW_BYTES])
        window = np.zeros(PCM_WINDOW_SAMPLES, dtype=np.int16)
        window[: len(chunk) // 2] = np.frombuffer(chunk, dtype="<i2")
        return window

    async def discard_before(self, k: int) -> None:
        """The session will not look at frames ``< k`` again: free their audio (and wake a waiting feed)."""
        drop = max(0, min(len(self._pcm), (frame_audio_offset(k, self.fps) - self._base) * 2))
        if drop:
            async with self._changed:
                del self._pcm[:drop]
                self._base += drop // 2
                self._changed.notify_all()
        self.mel.discard_before(k)


@dataclass(eq=False)
class _Slot:
    """One frame on its way to the client: its number, the task rendering it, and when that finished."""

    k: int
    task: asyncio.Task[FrameReply | str]
    done_at: float | None = None

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.task.add_done_callback(lambda _: setattr(self, "done_at", loop.time()))


class Session:
    """One streaming session: audio in, frames out on the audio's clock (REALTIME) or as fast as possible.

    ``send`` writes one message to the socket (serialised by the connection). ``run`` returns when the last
    frame and the closing ``session_end`` were sent; it raises :class:`TooSlowError` per the slow-client
    rule, :class:`IdleError` after ``limits.idle_timeout_seconds`` without audio, and
    :class:`ProtocolError` when a frame cannot be made (e.g. the package was unloaded).

    REALTIME (docs/protocol.md, *Sessions*): frame ``k`` plays at ``t0 + k / fps`` and must reach the client
    by that time plus ``max_lag`` seconds (its audio look-ahead, one model call, compositing and encoding, one
    frame interval). A frame that cannot make it is not rendered, or not sent if it became late on the way;
    the client keeps showing the previous one. Up to ``limits.inflight_frames`` frames are rendered at once,
    so concurrent sessions share batched model calls.
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
        max_lag: float = 0.0,
        model: ModelLike | None = None,
        stream: Any | None = None,
    ) -> None:
        self.start = start
        self.info = info
        self.engine = engine
        self.metrics = metrics
        self.limits = limits
        self.silence_dbfs = silence_dbfs
        self.max_lag = max_lag
        self.model = model
        self.stream = stream  # engine.open_stream(...) for models that hear several frames (AVE)
        self._send = send
        self.audio = SessionAudio(limits.audio_buffer_bytes, info.fps)
        self._slots = asyncio.Semaphore(limits.inflight_frames)
        self._pending: asyncio.Queue[_Slot | None] = asyncio.Queue()  # bounded by the slots
        self.frames_sent = 0
        self.frames_dropped = 0
        self._socket_drops = 0  # frames dropped in a row because the socket had not taken earlier ones

    @property
    def realtime(self) -> bool:
        return self.start.pacing is Pacing.REALTIME

    async def run(self) -> None:
        """Produce and send every frame (or drop it, REALTIME), then ``session_end`` with the counts."""
        sender = asyncio.create_task(self._sender())
        producer = asyncio.create_task(self._produce())
        try:
            done, _ = await asyncio.wait({sender, producer}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the first failure
            await producer
            await sender
        finally:
            pending = [task for task in (producer, sender) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                # bounded: a task that ignored its cancellation must not hang the session's end with it
                await asyncio.wait(pending, timeout=self.limits.close_timeout_seconds)
                for task in pending:
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: the session's own error is the one that counts
            await self._cancel_pending()
        await self._send(SessionEnd(request_id=self.start.request_id, frames_sent=self.frames_sent,
                                    frames_dropped=self.frames_dropped))

    async def _cancel_pending(self) -> None:
        while not self._pending.empty():
            slot = self._pending.get_nowait()
            if slot is not None:
                slot.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await slot.task

    def _drop(self, reason: str) -> None:
        self.frames_dropped += 1
        self.metrics.inc("lipsync_session_frames_dropped_total", reason=reason)

    def deadline(self, k: int) -> float:
        """Event-loop time by which frame ``k`` must be sent (REALTIME): its bound, less the time a frame
        takes to reach a client (:data:`SEND_MARGIN_SECONDS`), so it arrives within ``max_lag``."""
        return self.audio.play_time(k) + self.max_lag - SEND_MARGIN_SECONDS

    async def _produce(self) -> None:
        stream = self.stream
        look_ahead = stream.look_ahead if stream is not None else 0
        loop = asyncio.get_running_loop()
        added = 0  # frames whose window went into `stream`
        k = 0
        while True:
            await self.audio.wait_ready(k + look_ahead, self.limits.idle_timeout_seconds)
            total = self.audio.frame_count()
            if stream is not None:
                while added <= k + look_ahead and (total is None or added < total):
                    stream.add(added, self.audio.mel_window(added))
                    added += 1
                if total is not None:
                    stream.end(total)
            if total is not None and k >= total:
                break
            await self._slots.acquire()
            silent = is_silent(self.audio.pcm_window(k), self.silence_dbfs)
            # REALTIME: not rendered at all when it cannot be on time (by the engine's own estimate; a
            # silent frame is the package's stored image, ready at once).
            if self.realtime and self.model is not None:
                expected = 0.0 if silent else self.engine.expected_latency(self.model)
                if loop.time() + expected > self.deadline(k):
                    self._slots.release()
                    self._drop("late")
                    await self.audio.discard_before(k + 1)
                    k += 1
                    continue
            window = None if silent else self.audio.mel_window(k)
            task = asyncio.create_task(self._render(k, window, stream))
            await self._pending.put(_Slot(k, task))
            await self.audio.discard_before(k + 1)
            k += 1
        await self._pending.put(None)

    async def _render(self, k: int, window: np.ndarray | None, stream: Any | None) -> FrameReply | str:
        """Frame ``k``'s reply from its mel ``window`` (None: silent, the avatar's own frame), or why REALTIME
        drops it: ``"late"`` (no batch could finish it in time) or ``"overloaded"`` (the queue was full)."""
        start = self.start
        index = pingpong_index(start.start_frame + k, self.info.n_frames)
        if window is None:
            reply = await self.engine.original_frame(start.package_id, index, start.image, start.jpeg_quality)
        else:
            request = FrameRequest(
                request_id=0, package_id=start.package_id, frame_index=index, audio=AudioFormat.MEL,
                image=start.image, jpeg_quality=start.jpeg_quality, payload=window.tobytes(),
            )
            retry_until = asyncio.get_running_loop().time() + self.limits.slow_client_seconds
            due = self.deadline(k) if self.realtime else None
            while True:
                try:
                    reply = await self.engine.process(request, stream=stream, stream_frame=k, deadline=due)
                    break
                except Expired:
                    return "late"
                except ProtocolError as exc:
                    # The engine's queue is shared by every client: a live session drops this frame, an
                    # offline one waits its turn.
                    if exc.code != ErrorCode.OVERLOADED or self.realtime:
                        if exc.code == ErrorCode.OVERLOADED:
                            return "overloaded"
                        raise
                    if asyncio.get_running_loop().time() > retry_until:
                        raise
                    await asyncio.sleep(OVERLOAD_RETRY_SECONDS)
        return dataclasses.replace(reply, session_frame=k, audio_offset=frame_audio_offset(k, self.info.fps))

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            slot = await self._pending.get()
            if slot is None:
                return
            try:
                reply = await slot.task
                if isinstance(reply, str):
                    self._drop(reply)
                    continue
                if self.realtime:
                    wait = self.audio.play_time(slot.k) - loop.time()
                    if wait > 0:  # never ahead of the audio (a client that sends faster than real time)
                        await asyncio.sleep(wait)
                    if loop.time() > self.deadline(slot.k):
                        self._late_at_send(slot)
                        continue
                await self._send_frame(reply)
            finally:
                self._slots.release()

    def _late_at_send(self, slot: _Slot) -> None:
        if slot.done_at is None or slot.done_at > self.deadline(slot.k):
            self._drop("late")  # the engine was slower than estimated
            return
        self._drop("socket")  # it was ready in time, but the socket had not taken the frames before it
        self._socket_drops += 1
        if self._socket_drops > self.limits.max_skipped_frames:
            raise TooSlowError(
                f"{self._socket_drops} frames in a row expired waiting for the socket "
                f"({self._socket_drops / self.info.fps:.1f} s); read frames as they come, or use unpaced "
                "pacing"
            )

    async def _send_frame(self, reply: FrameReply) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.slow_client_seconds):  # not wait_for: see wait_ready
                await self._send(reply)
        except TimeoutError:
            raise TooSlowError(
                f"the client read no frame for {self.limits.slow_client_seconds:g} s; read frames as they "
                "come (send audio from another thread or task)"
            ) from None
        self._socket_drops = 0
        self.frames_sent += 1
        self.metrics.frame_sent("session", reply.silence)
        if self.realtime and reply.session_frame is not None:
            self.metrics.observe("lipsync_session_lag_seconds",
                                 max(0.0, loop.time() - self.audio.play_time(reply.session_frame)))


class ServerLike(Protocol):
    """The parts of the server state a connection uses (see :class:`lipsync_tools.server.app.ServerState`)."""

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
            if event.get("bytes") is not None:
                data, codec = event["bytes"], CODECS["binary"]
            else:
                data, codec = event.get("text") or "", CODECS["json"]
            try:
                if codec.name == "binary" and len(data) > MAX_BINARY_REQUEST_BYTES:
                    # The transport's cap is the JSON one (it is the larger); binary messages have their own.
                    raise ProtocolError(ErrorCode.OVERSIZE, (
                        f"message is {len(data)} bytes; the largest a client may send is "
                        f"{MAX_BINARY_REQUEST_BYTES} (an audio_chunk of 1 MiB): send audio in smaller "
                        "chunks"))
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
                reply = await engine.process(request)
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
