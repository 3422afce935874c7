"""One streaming session: its audio buffer and clock, its state, and the frame loop that asks the engine.

A session (``session_start`` … ``audio_chunk`` … ``session_end``; the connection that runs it is
:mod:`lipsync_tools.server.connection`) feeds its audio into :class:`SessionAudio` (the streaming mel
spectrogram, on ``lipsync render``'s sample grid, and the audio clock); a producer submits each frame to the
engine once its audio is there, at most ``inflight_frames`` at once; a sender writes the replies in order.
The audio buffer is bounded (``audio_buffer_bytes``; the reader waits for room, which stops the connection
reading the socket).

The real-time rule (docs/protocol.md, *Sessions*): a REALTIME frame is sent no earlier than its audio
plays and no later than that plus ``max_lag``; a frame that cannot make it is not rendered, one that became
late on the way is not sent (both are *dropped*). A frame that waits ``slow_client_seconds`` for the socket,
or ``max_skipped_frames`` frames in a row that expire behind earlier ones on the socket, close the session
with ``too_slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from lipsync_tools.audio.mel import MEL_WINDOW_FRAMES
from lipsync_tools.audio.streaming import StreamingMel, frame_audio_offset
from lipsync_tools.engine.batcher import Expired
from lipsync_tools.engine.pacing import is_silent, pingpong_index
from lipsync_tools.engine.requests import AudioKind, EngineRequest, EngineResult, ImageKind, Reason
from lipsync_tools.errors import RequestError
from lipsync_tools.protocol import (
    PCM_WINDOW_BYTES,
    PCM_WINDOW_SAMPLES,
    SAMPLE_RATE,
    FrameReply,
    Message,
    Pacing,
    SessionEnd,
    SessionStart,
)
from lipsync_tools.server.admission import ModelLike
from lipsync_tools.server.config import SessionLimits
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.translate import IMAGE_KINDS, frame_reply, wire_error, wire_errors

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
    """What the server needs from :class:`lipsync_tools.engine.Engine` (a fake implements it in tests).

    It speaks the engine's types (:mod:`lipsync_tools.engine.requests`); the server translates
    (:mod:`.translate`)."""

    post_seconds: float
    """Compositing + encoding seconds per model frame (a moving average)."""

    async def process(
        self, request: EngineRequest, *, stream: Any | None = None, stream_frame: int = 0,
        deadline: float | None = None,
    ) -> EngineResult:
        """The frame (or ``RequestError``); with ``deadline`` (event-loop time) it raises
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
        self, package_id: str, frame_index: int, image_format: ImageKind, jpeg_quality: int
    ) -> EngineResult: ...


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
        image = IMAGE_KINDS[start.image]
        if window is None:
            with wire_errors():
                result = await self.engine.original_frame(start.package_id, index, image, start.jpeg_quality)
        else:
            request = EngineRequest(
                package_id=start.package_id, frame_index=index, audio=AudioKind.MEL, samples=window,
                image=image, jpeg_quality=start.jpeg_quality,
            )
            retry_until = asyncio.get_running_loop().time() + self.limits.slow_client_seconds
            due = self.deadline(k) if self.realtime else None
            while True:
                try:
                    result = await self.engine.process(request, stream=stream, stream_frame=k, deadline=due)
                    break
                except Expired:
                    return "late"
                except RequestError as exc:
                    # The engine's queue is shared by every client: a live session drops this frame, an
                    # offline one waits its turn.
                    if exc.reason != Reason.OVERLOADED or self.realtime:
                        if exc.reason == Reason.OVERLOADED:
                            return "overloaded"
                        raise wire_error(exc) from exc
                    if asyncio.get_running_loop().time() > retry_until:
                        raise wire_error(exc) from exc
                    await asyncio.sleep(OVERLOAD_RETRY_SECONDS)
        return frame_reply(result, 0, session_frame=k, audio_offset=frame_audio_offset(k, self.info.fps))

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
