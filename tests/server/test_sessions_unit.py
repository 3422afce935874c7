"""Session mechanics without a socket: audio windows, ping-pong, silence, and the slow-client rule.

A fake engine answers instantly, so the timing rules are tested exactly and in milliseconds; the same rules
run over a real socket in test_sessions.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    PCM_WINDOW_SAMPLES,
    ErrorCode,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    Pacing,
    SessionEnd,
    SessionStart,
)
from lipsync_tools.server.config import SessionLimits
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import AudioBuffer, Session, TooSlowError

pytestmark = pytest.mark.timeout(30)


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


class FakeEngine:
    """Replies instantly; records which frames ran the model."""

    def __init__(self, overloaded_first: int = 0) -> None:
        self.model_frames: list[int] = []
        self.overloaded_left = overloaded_first

    def _reply(self, index: int, silence: bool) -> FrameReply:
        return FrameReply(request_id=0, frame_index=index, image=ImageFormat.RAW_BGR, width=4, height=2,
                          silence=silence, payload=bytes(24))

    async def open_stream(self, package_id: str) -> None:
        return None

    async def process(
        self, request: FrameRequest, *, stream: object = None, stream_frame: int = 0
    ) -> FrameReply:
        if self.overloaded_left:
            self.overloaded_left -= 1
            raise ProtocolError(ErrorCode.OVERLOADED, "queue full")
        self.model_frames.append(request.frame_index)
        return self._reply(request.frame_index, False)

    async def original_frame(self, package_id: str, frame_index: int, image_format: ImageFormat,
                             jpeg_quality: int) -> FrameReply:
        return self._reply(frame_index, True)


def make_session(pacing: Pacing, send: Any, engine: FakeEngine | None = None, start_frame: int = 0,
                 **limits: Any) -> Session:
    return Session(
        SessionStart(request_id=9, package_id="fake", start_frame=start_frame, pacing=pacing,
                     image=ImageFormat.RAW_BGR),
        FakeInfo(), engine=engine or FakeEngine(), metrics=Metrics(),
        limits=SessionLimits(**{"send_queue_frames": 2, "max_skipped_frames": 3, "slow_client_seconds": 0.3,
                                **limits}),
        silence_dbfs=-50.0, send=send,
    )


def test_audio_buffer_windows_and_frame_count() -> None:
    async def scenario() -> list[np.ndarray | None]:
        buffer = AudioBuffer(capacity=(1 << 20) + 6400, fps=25.0)
        await buffer.feed(np.arange(4000, dtype=np.int16).tobytes())
        first = await buffer.window(0)
        await buffer.end()  # 4000 samples at 25 fps / 16 kHz -> ceil(6.25) = 7 frames
        rest = [await buffer.window(k) for k in range(1, 8)]
        return [first, *rest]

    windows = asyncio.run(scenario())
    assert windows[-1] is None and all(w is not None for w in windows[:-1])
    first, second = windows[0], windows[1]
    assert first is not None and second is not None
    assert first.shape == (PCM_WINDOW_SAMPLES,) and first[0] == 0 and first[-1] == 3199
    assert second[0] == 640  # frame 1 starts 1/25 s = 640 samples later
    third = windows[2]
    assert third is not None
    assert third[4000 - 1280 - 1] == 3999 and not third[4000 - 1280 :].any()  # zero-padded past the end


def test_audio_buffer_feed_waits_for_room() -> None:
    async def scenario() -> bool:
        buffer = AudioBuffer(capacity=(1 << 20) + 6400, fps=25.0)
        await buffer.feed(bytes(1 << 20))
        blocked = asyncio.create_task(buffer.feed(bytes(1 << 20)))
        await asyncio.sleep(0.05)
        was_blocked = not blocked.done()
        for k in range(900):  # consume frames until a chunk fits again
            await buffer.window(k)
            if blocked.done():
                break
        await asyncio.wait_for(blocked, 1)
        return was_blocked

    assert asyncio.run(scenario())


async def _run(session: Session, audio: np.ndarray, end: bool = True) -> None:
    task = asyncio.create_task(session.run())
    await session.audio.feed(audio.tobytes())
    if end:
        await session.audio.end()
    await task


def test_unpaced_session_walks_ping_pong_and_skips_the_model_in_silence() -> None:
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
    assert isinstance(sent[-1], SessionEnd)
    assert [f.frame_index for f in frames] == [3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert [f.silence for f in frames] == [False] * 11 + [True] * 9
    assert engine.model_frames == [f.frame_index for f in frames[:11]]


def test_realtime_session_is_paced_at_the_package_fps() -> None:
    stamps: list[float] = []

    async def send(message: Message) -> None:
        stamps.append(time.perf_counter())

    session = make_session(Pacing.REALTIME, send)
    asyncio.run(_run(session, np.zeros(1600, np.int16)))  # 0.1 s at 100 fps: 10 frames + session_end
    intervals = np.diff(stamps[:10])
    assert len(stamps) == 11
    assert 0.08 <= stamps[9] - stamps[0] <= 0.2  # 9 periods of 10 ms
    assert np.median(intervals) == pytest.approx(0.01, abs=0.004)


def test_realtime_skips_frames_while_the_client_is_stuck_then_recovers() -> None:
    gate = asyncio.Event()
    sent: list[FrameReply] = []

    async def send(message: Message) -> None:
        await gate.wait()
        if isinstance(message, FrameReply):
            sent.append(message)

    async def scenario(session: Session) -> None:
        task = asyncio.create_task(session.run())
        await session.audio.feed(np.zeros(4800, np.int16).tobytes())  # 30 frames at 100 fps
        await session.audio.end()
        await asyncio.sleep(0.055)  # stuck: 1 frame in the socket, 2 queued, then 2-3 skips (<= 3 allowed)
        gate.set()
        await task

    session = make_session(Pacing.REALTIME, send)
    asyncio.run(scenario(session))
    assert 1 <= session.frames_skipped <= 3
    assert len(sent) == 30 - session.frames_skipped
    assert session.metrics.value("lipsync_session_frames_skipped_total") == session.frames_skipped


@pytest.mark.parametrize("pacing", [Pacing.REALTIME, Pacing.UNPACED])
def test_a_client_that_never_reads_is_dropped_as_too_slow(pacing: Pacing) -> None:
    async def send(message: Message) -> None:
        await asyncio.Event().wait()  # never returns: the socket is full

    async def scenario() -> float:
        session = make_session(pacing, send)
        started = time.perf_counter()
        with pytest.raises(TooSlowError, match="read"):
            await _run(session, np.zeros(16000, np.int16), end=False)
        return time.perf_counter() - started

    elapsed = asyncio.run(scenario())
    # REALTIME: 1 sending + 2 queued + 4 skipped slots of 10 ms; UNPACED: slow_client_seconds = 0.3 s
    assert elapsed < 1.0


def test_overloaded_engine_skips_a_realtime_frame_and_retries_unpaced() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    loud = np.full(800, 10000, np.int16)
    live = make_session(Pacing.REALTIME, send, FakeEngine(overloaded_first=1))
    asyncio.run(_run(live, loud))
    assert live.frames_skipped == 1 and live.frames_sent == 4
    offline = make_session(Pacing.UNPACED, send, FakeEngine(overloaded_first=3))
    asyncio.run(_run(offline, loud))
    assert offline.frames_skipped == 0 and offline.frames_sent == 5
