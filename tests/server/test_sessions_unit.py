"""Session mechanics without a socket: the audio clock, timeline, deadlines, drops, and slow clients.

A fake engine answers after a delay the test chooses, so the pacing rules are tested exactly; the same rules
run over a real socket in test_sessions.py. Timing checks are of order and counts, not tight windows: the
machines are shared.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from lipsync_tools.audio.mel import mel_window, mel_window_starts, wav2lip_mel
from lipsync_tools.audio.streaming import frame_audio_offset
from lipsync_tools.engine.capacity import Capacity
from lipsync_tools.engine.requests import EngineRequest, EngineResult, ImageKind, Reason
from lipsync_tools.errors import RequestError
from lipsync_tools.protocol import (
    PCM_WINDOW_SAMPLES,
    FrameReply,
    ImageFormat,
    Message,
    Pacing,
    SessionEnd,
    SessionStart,
)
from lipsync_tools.server.config import SessionLimits
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import IdleError, Session, SessionAudio, TooSlowError, look_ahead_seconds

pytestmark = pytest.mark.timeout(60)


@dataclass
class FakeInfo:
    id: str = "fake"
    n_frames: int = 5
    fps: float = 100.0
    width: int = 4
    height: int = 2
    load_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id}


@dataclass
class FakeModel:
    key: str = "fake-model"
    capacity: Capacity = field(default_factory=lambda: Capacity({1: 0.001}))


class FakeEngine:
    """Replies after ``delay`` seconds; records the frames that ran the model and their mel windows."""

    def __init__(self, delay: float = 0.0, overloaded_first: int = 0, estimate: float | None = None) -> None:
        self.delay = delay
        self.estimate = delay if estimate is None else estimate
        self.model_frames: list[int] = []
        self.windows: list[np.ndarray] = []
        self.overloaded_left = overloaded_first
        self.post_seconds = 0.0

    def _reply(self, index: int, silence: bool) -> EngineResult:
        return EngineResult(frame_index=index, image=ImageKind.RAW_BGR, width=4, height=2, silence=silence,
                            payload=bytes(24))

    async def open_stream(self, package_id: str) -> None:
        return None

    async def model_for(self, package_id: str) -> FakeModel:
        return FakeModel()

    def expected_latency(self, model: Any) -> float:
        return self.estimate

    async def process(
        self, request: EngineRequest, *, stream: object = None, stream_frame: int = 0,
        deadline: float | None = None,
    ) -> EngineResult:
        if self.overloaded_left:
            self.overloaded_left -= 1
            raise RequestError(Reason.OVERLOADED, "queue full")
        if self.delay:
            await asyncio.sleep(self.delay)
        self.model_frames.append(request.frame_index)
        self.windows.append(request.mel.copy())
        return self._reply(request.frame_index, False)

    async def original_frame(self, package_id: str, frame_index: int, image_format: ImageKind,
                             jpeg_quality: int) -> EngineResult:
        return self._reply(frame_index, True)


def make_session(pacing: Pacing, send: Any, engine: FakeEngine | None = None, start_frame: int = 0,
                 fps: float = 100.0, max_lag: float = 0.5, **limits: Any) -> Session:
    return Session(
        SessionStart(request_id=9, package_id="fake", start_frame=start_frame, pacing=pacing,
                     image=ImageFormat.RAW_BGR),
        FakeInfo(fps=fps), engine=engine or FakeEngine(), metrics=Metrics(),
        limits=SessionLimits(**{"inflight_frames": 2, "max_skipped_frames": 3, "slow_client_seconds": 0.3,
                                **limits}),
        silence_dbfs=-50.0, send=send, max_lag=max_lag, model=FakeModel(),
    )


def loud(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, int(seconds * 16000), dtype=np.int16)


async def _run(session: Session, audio: np.ndarray, end: bool = True, chunk: int | None = None) -> None:
    task = asyncio.create_task(session.run())
    step = chunk or max(1, len(audio))
    for lo in range(0, len(audio), step):
        await session.audio.feed(audio[lo : lo + step].tobytes())
    if end:
        await session.audio.end()
    await task


# --- the session's audio ------------------------------------------------------------------------------------


def test_session_audio_gives_render_s_mel_windows_and_frame_count() -> None:
    pcm = loud(1.03)

    async def scenario() -> tuple[list[np.ndarray], int | None, np.ndarray]:
        audio = SessionAudio(capacity=(1 << 20) + 6400, fps=25.0)
        windows = []
        for lo in range(0, len(pcm), 640):
            await audio.feed(pcm[lo : lo + 640].tobytes())
        await audio.end()
        total = audio.frame_count()
        assert total is not None
        for k in range(total):
            assert audio.ready(k)
            windows.append(audio.mel_window(k))
        return windows, total, audio.pcm_window(1)

    windows, total, second = asyncio.run(scenario())
    mel = wav2lip_mel(pcm.astype(np.float32) / 32768.0)
    starts = mel_window_starts(total, 25.0, mel.shape[1])
    assert total == 26  # ceil(1.03 s * 25 fps), as render makes
    for k, window in enumerate(windows):  # the same model input as an offline render, frame by frame
        np.testing.assert_allclose(window, mel_window(mel, int(starts[k])), atol=1e-4)
    assert second.shape == (PCM_WINDOW_SAMPLES,) and second[0] == pcm[640]  # frame 1 starts 640 samples in


def test_session_audio_feed_waits_for_room() -> None:
    async def scenario() -> bool:
        audio = SessionAudio(capacity=(1 << 20) + 6400, fps=25.0)
        await audio.feed(bytes(1 << 20))
        blocked = asyncio.create_task(audio.feed(bytes(1 << 20)))
        await asyncio.sleep(0.05)
        was_blocked = not blocked.done()
        await audio.discard_before(900)  # the session is done with the first 36 s
        await asyncio.wait_for(blocked, 1)
        return was_blocked

    assert asyncio.run(scenario())


def test_audio_clock_starts_with_the_first_chunk_and_restarts_after_a_pause() -> None:
    async def scenario() -> tuple[float, float, float, int]:
        audio = SessionAudio(capacity=(1 << 20) + 6400, fps=25.0, resync_seconds=0.05)
        await audio.feed(bytes(3200))  # 1600 samples = 0.1 s
        t0 = audio.t0
        assert t0 is not None
        await audio.feed(bytes(320))  # on time: the clock keeps running
        same = audio.t0
        await asyncio.sleep(0.3)  # the client paused
        await audio.feed(bytes(320))
        assert same is not None and audio.t0 is not None and audio.last_audio is not None
        return t0, same, audio.t0 - (audio.last_audio - 1760 / 16000), audio.resyncs

    t0, same, restarted_error, resyncs = asyncio.run(scenario())
    assert same == t0 and resyncs == 1 and abs(restarted_error) < 1e-9


def test_look_ahead_is_the_window_s_reach() -> None:
    assert look_ahead_seconds(0, 25.0) == pytest.approx(0.2125)  # 3400 samples after the frame's time
    assert look_ahead_seconds(6, 25.0) == pytest.approx(0.2125 + 0.24)  # AVE hears 6 frames further


# --- pacing -------------------------------------------------------------------------------------------------


def test_unpaced_session_walks_ping_pong_with_a_timeline_and_skips_the_model_in_silence() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    engine = FakeEngine()
    session = make_session(Pacing.UNPACED, send, engine, start_frame=3)
    # 100 fps: one frame per 160 samples; loud samples 1600..1760 reach the windows of frames -9..10
    audio = np.zeros(3200, np.int16)
    audio[1600:1760] = 10000
    asyncio.run(_run(session, audio))
    frames = [m for m in sent if isinstance(m, FrameReply)]
    assert sent[-1] == SessionEnd(request_id=9, frames_sent=20, frames_dropped=0)
    assert [f.frame_index for f in frames] == [3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert [f.silence for f in frames] == [False] * 11 + [True] * 9
    assert [f.session_frame for f in frames] == list(range(20))
    assert [f.audio_offset for f in frames] == [frame_audio_offset(k, 100.0) for k in range(20)]
    assert engine.model_frames == [f.frame_index for f in frames[:11]]


def test_realtime_frames_follow_the_audio_clock() -> None:
    stamps: list[tuple[float, Message]] = []

    async def send(message: Message) -> None:
        stamps.append((asyncio.get_running_loop().time(), message))

    async def scenario() -> Session:
        session = make_session(Pacing.REALTIME, send, fps=25.0)
        await _run(session, loud(0.4))  # sent at once, faster than real time
        return session

    session = asyncio.run(scenario())
    frames = [(t, m) for t, m in stamps if isinstance(m, FrameReply)]
    assert session.audio.t0 is not None
    assert len(frames) == 10 and session.frames_dropped == 0
    for t, frame in frames:  # never before its audio plays (the client sent it early), never late
        assert frame.session_frame is not None
        assert t >= session.audio.play_time(frame.session_frame) - 1e-3
        assert t <= session.deadline(frame.session_frame)
    assert isinstance(stamps[-1][1], SessionEnd) and stamps[-1][1].frames_sent == 10


def test_realtime_session_drops_frames_it_cannot_deliver_on_time_evenly() -> None:
    """An engine that needs 3 frame intervals per frame: a session gets about a third of its frames, each
    on time, spread evenly; the rest are not rendered at all."""
    stamps: list[tuple[float, Message]] = []

    async def send(message: Message) -> None:
        stamps.append((asyncio.get_running_loop().time(), message))

    engine = FakeEngine(delay=0.03, estimate=0.035)  # 3 frames at 100 fps

    async def scenario() -> Session:
        # the bound admission gives: look-ahead + model time + one frame interval
        max_lag = look_ahead_seconds(0, 100.0) + 0.03 + 0.01
        session = make_session(Pacing.REALTIME, send, engine, max_lag=max_lag, inflight_frames=1)
        audio = loud(1.0)
        task = asyncio.create_task(session.run())
        t_start = asyncio.get_running_loop().time()
        for n, lo in enumerate(range(0, len(audio), 160)):  # one frame of audio every 10 ms, like a mic
            await asyncio.sleep(max(0.0, t_start + n * 0.01 - asyncio.get_running_loop().time()))
            await session.audio.feed(audio[lo : lo + 160].tobytes())
        await session.audio.end()
        await task
        return session

    session = asyncio.run(scenario())
    frames = [(t, m) for t, m in stamps if isinstance(m, FrameReply)]
    end = stamps[-1][1]
    assert isinstance(end, SessionEnd)
    assert end.frames_sent == len(frames) and end.frames_sent + end.frames_dropped == 100
    assert 15 <= len(frames) <= 50, len(frames)  # ~33 on an idle machine
    # frames that could not be on time were not rendered (a few more that the estimate let through were
    # rendered, then found late and not sent)
    assert len(engine.model_frames) - len(frames) <= 5
    for t, frame in frames:
        assert frame.session_frame is not None and t <= session.deadline(frame.session_frame)
    numbers = [f.session_frame for _, f in frames if isinstance(f, FrameReply)]
    gaps = np.diff(np.asarray(numbers, dtype=float))
    assert gaps.min() >= 1 and np.median(gaps) <= 5  # evenly thinned, not bursts and long holes
    assert session.metrics.value("lipsync_session_frames_dropped_total", reason="late") == end.frames_dropped


@pytest.mark.parametrize("pacing", [Pacing.REALTIME, Pacing.UNPACED])
def test_a_client_that_never_reads_is_dropped_as_too_slow(pacing: Pacing) -> None:
    async def send(message: Message) -> None:
        await asyncio.Event().wait()  # never returns: the socket is full

    async def scenario() -> float:
        session = make_session(pacing, send)
        started = time.perf_counter()
        with pytest.raises(TooSlowError, match="read"):
            await _run(session, loud(1.0), end=False)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 5.0  # slow_client_seconds is 0.3 s


def test_frames_that_expire_behind_a_stuck_socket_are_dropped_then_too_slow() -> None:
    gate = asyncio.Event()

    async def send(message: Message) -> None:
        await gate.wait()

    async def scenario() -> Session:
        session = make_session(Pacing.REALTIME, send, max_lag=0.22, inflight_frames=4,
                               slow_client_seconds=5.0, max_skipped_frames=2)
        task = asyncio.create_task(session.run())
        await session.audio.feed(loud(0.5).tobytes())
        await asyncio.sleep(0.4)  # frames 1-3 are ready in time but expire behind frame 0's send
        gate.set()
        with pytest.raises(TooSlowError, match="expired waiting for the socket"):
            await task
        return session

    session = asyncio.run(scenario())
    assert session.metrics.value("lipsync_session_frames_dropped_total", reason="socket") == 3


def test_overloaded_engine_drops_a_realtime_frame_and_retries_unpaced() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    live = make_session(Pacing.REALTIME, send, FakeEngine(overloaded_first=1))
    asyncio.run(_run(live, loud(0.05)))
    assert live.frames_dropped == 1 and live.frames_sent == 4
    offline = make_session(Pacing.UNPACED, send, FakeEngine(overloaded_first=3))
    asyncio.run(_run(offline, loud(0.05)))
    assert offline.frames_dropped == 0 and offline.frames_sent == 5


def test_a_session_without_audio_ends_with_idle_timeout() -> None:
    async def send(message: Message) -> None:
        pass

    async def scenario() -> None:
        session = make_session(Pacing.REALTIME, send, idle_timeout_seconds=0.2)
        task = asyncio.create_task(session.run())
        await session.audio.feed(loud(0.05).tobytes())  # 5 frames, then nothing and no session_end
        with pytest.raises(IdleError, match=r"no audio for 0\.2 s"):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_waiting_frame_cancelled_as_its_audio_arrives_stays_cancelled() -> None:
    """Found by `lipsync bench --soak`: on Python 3.11 asyncio.wait_for returned normally when its wait ended
    in the tick its task was cancelled (CPython gh-86296), so a session's producer lost its cancellation,
    went on to wait for a slot for ever, and the session hung without an error or session_end."""

    async def scenario() -> list[bool]:
        outcomes = []
        for _ in range(50):
            audio = SessionAudio(capacity=(1 << 20) + 6400, fps=25.0)
            waiter = asyncio.create_task(audio.wait_ready(0, idle_seconds=30.0))
            await asyncio.sleep(0)  # the waiter is inside its timed wait now
            feeding = asyncio.create_task(audio.feed(loud(0.3).tobytes()))  # makes frame 0 ready...
            await asyncio.sleep(0)
            waiter.cancel()  # ...in the same tick as the cancel
            await asyncio.gather(feeding, return_exceptions=True)
            await asyncio.wait({waiter}, timeout=5)
            outcomes.append(waiter.cancelled())
        return outcomes

    assert all(asyncio.run(scenario()))
