"""Sessions over a real WebSocket: ping-pong order, silence frames, pacing, session end, slow clients."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    AudioChunk,
    ErrorReply,
    FrameReply,
    ImageFormat,
    Pacing,
    SessionStart,
    SessionStarted,
)
from lipsync_tools.server.sessions import pingpong_index
from tests.server.servers import PACKAGE_ID, random_model_config, running_server, speech_like

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_unpaced_session_walks_ping_pong_over_both_ends(url: str) -> None:
    n = 120  # from frame 45 up to 49, down to 0, and up again: both turns of the walk
    audio = np.zeros(n * 640, np.int16)  # silence: original frames, no model (fast)
    with LipsyncClient(url, protocol="binary") as client, client.session(
            PACKAGE_ID, start_frame=45, pacing=Pacing.UNPACED) as session:
        assert (session.started.fps, session.started.frame_count) == (25.0, 50)
        frames = list(session.play(audio, chunk_seconds=0.5))
    assert [f.frame_index for f in frames] == [pingpong_index(45 + k, 50) for k in range(n)]
    assert all(f.silence and f.request_id == 0 for f in frames)
    assert session.ws.close_code == 1000  # session_end, then a normal close


def test_speech_runs_the_model_and_silence_does_not(url: str) -> None:
    # 0.4 s silence, 0.2 s loud noise, 0.6 s silence; frame k's window is samples [640k, 640k + 3200)
    audio = np.concatenate([np.zeros(6400, np.int16), speech_like(0.2), np.zeros(9600, np.int16)])
    with LipsyncClient(url, protocol="json") as client, client.session(
            PACKAGE_ID, pacing=Pacing.UNPACED, image=ImageFormat.JPEG) as session:
        frames = list(session.play(audio))
    assert len(frames) == 30
    silent = [f.silence for f in frames]
    assert silent == [True] * 6 + [False] * 9 + [True] * 15
    assert all("inference" in f.timings for f in frames if not f.silence)
    assert all("inference" not in f.timings for f in frames if f.silence)


def test_realtime_session_frames_carry_a_timeline_and_never_come_before_their_audio(url: str) -> None:
    audio = speech_like(1.0)  # 25 frames at 25 fps, streamed at the speed of speech
    arrivals = []
    with LipsyncClient(url) as client, client.session(PACKAGE_ID, pacing=Pacing.REALTIME) as session:
        assert session.started.max_lag_ms > 212  # at least the mel window's look-ahead
        for frame in session.play(audio, realtime=True, chunk_seconds=0.02):
            arrivals.append((time.monotonic(), frame))
    summary = session.summary
    assert summary is not None and summary.frames_sent == len(arrivals)
    assert summary.frames_sent + summary.frames_dropped == 25
    numbers = [f.session_frame for _, f in arrivals]
    assert numbers == sorted(set(numbers)) and all(n is not None and 0 <= n < 25 for n in numbers)
    for arrived, frame in arrivals:
        assert frame.audio_offset == round(frame.session_frame * 16000 / 25)  # type: ignore[operator]
        play = session.play_time(frame)
        assert play is not None and arrived >= play - 0.005  # never ahead of the audio it shows


def test_sessions_beyond_capacity_or_max_sessions_are_refused_clearly(
    avatar_package: Path, onnx_cache: Path
) -> None:
    # No CPU renders 2 x 240 frames/s of Wav2Lip: the first session is admitted, the second refused.
    for overrides, expected in (({"min_session_fps": 240.0}, "cannot carry another live session"),
                                ({"max_sessions": 1}, "--max-sessions 1")):
        config = random_model_config(avatar_package, onnx_cache, **overrides)
        with running_server(config) as server, LipsyncClient(server.url) as client:
            with client.session(PACKAGE_ID) as first:
                with pytest.raises(ProtocolError) as refused:
                    client.session(PACKAGE_ID)
                assert refused.value.code == "overloaded"
                assert expected in str(refused.value) and "retry in" in str(refused.value)
                first.end()
                assert list(first) == []  # no audio: no frames, just the end
            with client.session(PACKAGE_ID) as again:  # the ended session made room
                again.end()
                list(again)
            metrics = client.metrics()
        assert "lipsync_sessions_refused_total 1" in metrics


def test_unexpected_session_messages(url: str) -> None:
    binary = CODECS["binary"]
    with LipsyncClient(url) as client, client.session(PACKAGE_ID, pacing=Pacing.UNPACED) as session:
        session.send(SessionStart(request_id=7, package_id=PACKAGE_ID))  # a second start
        reply = session.recv(10)
        assert isinstance(reply, ErrorReply) and (reply.code, reply.request_id) == ("unexpected_message", 7)
        session.end()
        assert session.next_frame() is None  # no audio: no frames, just session_end
    with LipsyncClient(url) as client, client.stream() as stream:
        stream.ws.send(binary.encode(AudioChunk(request_id=3, payload=b"\0\0")))
        reply = stream.recv(10)
        assert isinstance(reply, ErrorReply) and (reply.code, reply.request_id) == ("unexpected_message", 3)


def metric(url: str, pattern: str) -> float:
    found = re.search(pattern, httpx.get(f"{url}/metrics").text, re.M)
    return float(found[1]) if found else 0.0


@pytest.mark.parametrize("pacing", [Pacing.REALTIME, Pacing.UNPACED])
def test_a_client_that_stops_reading_is_dropped_as_too_slow(url: str, pacing: Pacing) -> None:
    too_slow = r'^lipsync_errors_total\{code="too_slow"\} (\S+)$'
    before = metric(url, too_slow)
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect((parts.hostname, parts.port))
    binary = CODECS["binary"]
    with connect(f"ws://{parts.netloc}/v1/stream", sock=sock, compression=None, max_queue=1,
                 max_size=None, open_timeout=10, legacy=True) as ws:
        ws.send(binary.encode(SessionStart(request_id=1, package_id=PACKAGE_ID, pacing=pacing,
                                           image=ImageFormat.RAW_BGR)))
        assert isinstance(binary.decode(ws.recv(timeout=10)), SessionStarted)
        for i in range(12):  # 12 s of silence: 300 raw 230 kB frames, far more than the buffers hold
            ws.send(binary.encode(AudioChunk(request_id=i, payload=bytes(32000))))
        deadline = time.monotonic() + 60
        while metric(url, too_slow) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.1)  # not reading
        assert metric(url, too_slow) == before + 1
        received: list[object] = []
        with pytest.raises(ConnectionClosed):  # noqa: PT012 (the close ends the loop)
            for _ in range(400):
                received.append(binary.decode(ws.recv(timeout=20)))
    frames = [m for m in received if isinstance(m, FrameReply)]
    assert len(frames) < 300
    errors = [m for m in received if isinstance(m, ErrorReply)]
    # the error reply is delivered when the socket had room for it within close_timeout_seconds
    assert all(e.code == "too_slow" for e in errors)
    deadline = time.monotonic() + 10
    while metric(url, r"^lipsync_active_sessions (\S+)$") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(url, r"^lipsync_active_sessions (\S+)$") == 0
