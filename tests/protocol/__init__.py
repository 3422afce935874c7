"""Tests of lipsync_tools.protocol; ``sample_messages()`` is one valid instance of every message shape."""

from __future__ import annotations

import numpy as np

from lipsync_tools.protocol import (
    MAX_AUDIO_OFFSET,
    MEL_BINS,
    MEL_STEPS,
    PCM_WINDOW_SAMPLES,
    AudioChunk,
    AudioFormat,
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


def sample_messages() -> dict[str, Message]:
    """One valid message per type and variant, keyed by a readable test id."""
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, PCM_WINDOW_SAMPLES, dtype=np.int16)
    mel = rng.standard_normal((MEL_BINS, MEL_STEPS)).astype(np.float32)
    crop = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    frame = rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)
    timings = {"audio": 12, "features": 340, "infer": 15_000, "composite": 800, "encode": 2_100}
    return {
        "request-pcm": FrameRequest.from_pcm(pcm, request_id=1, package_id="alice", frame_index=0),
        "request-mel-png": FrameRequest.from_mel(
            mel, request_id=2, package_id="Bob_2.v1-final", frame_index=4_294_967_295, image=ImageFormat.PNG
        ),
        "request-replay-raw": FrameRequest(
            request_id=4_294_967_295,
            package_id="a" * 64,
            frame_index=17,
            audio=AudioFormat.REPLAY,
            image=ImageFormat.RAW_BGR,
            jpeg_quality=1,
        ),
        "request-replay-crop": FrameRequest(
            request_id=3, package_id="x", frame_index=1, audio=AudioFormat.REPLAY, image=ImageFormat.CROP_ONLY
        ),
        "reply-jpeg": FrameReply(
            request_id=1,
            frame_index=0,
            image=ImageFormat.JPEG,
            width=1280,
            height=720,
            timings=timings,
            payload=b"\xff\xd8" + rng.bytes(1000) + b"\xff\xd9",
        ),
        "reply-png-silence-no-timings": FrameReply(
            request_id=0,
            frame_index=5,
            image=ImageFormat.PNG,
            width=1,
            height=1,
            silence=True,
            payload=b"\x89PNG",
        ),
        "reply-raw": FrameReply(
            request_id=9,
            frame_index=3,
            image=ImageFormat.RAW_BGR,
            width=64,
            height=36,
            timings={"s" * 32: 4_294_967_295},
            payload=frame.tobytes(),
        ),
        "reply-crop": FrameReply(
            request_id=10,
            frame_index=4,
            image=ImageFormat.CROP_ONLY,
            width=96,
            height=96,
            rect=(500, 300, 700, 520),
            timings={f"stage_{i}": i for i in range(32)},
            payload=crop.tobytes(),
        ),
        "reply-crop-silence-empty": FrameReply(
            request_id=11, frame_index=6, image=ImageFormat.CROP_ONLY, width=0, height=0, silence=True
        ),
        "reply-session-jpeg": FrameReply(
            request_id=0,
            frame_index=7,
            image=ImageFormat.JPEG,
            width=640,
            height=360,
            timings={"infer": 9_000},
            session_frame=3,
            audio_offset=1920,
            payload=b"\xff\xd8\xff\xd9",
        ),
        "reply-session-first-frame": FrameReply(
            request_id=0,
            frame_index=0,
            image=ImageFormat.CROP_ONLY,
            width=96,
            height=96,
            rect=(500, 300, 700, 520),
            session_frame=0,
            audio_offset=0,
            payload=crop.tobytes(),
        ),
        "reply-session-silence-empty-max": FrameReply(
            request_id=0,
            frame_index=4_294_967_295,
            image=ImageFormat.CROP_ONLY,
            width=0,
            height=0,
            silence=True,
            session_frame=4_294_967_295,
            audio_offset=MAX_AUDIO_OFFSET,
        ),
        "error": ErrorReply(
            request_id=1, code=ErrorCode.UNKNOWN_PACKAGE, message="no package 'bob' — load it"
        ),
        "error-future-code-empty-message": ErrorReply(request_id=0, code="some_new_code_2", message=""),
        "session-start": SessionStart(request_id=1, package_id="alice"),
        "session-start-unpaced-raw": SessionStart(
            request_id=2,
            package_id="alice",
            start_frame=99,
            image=ImageFormat.RAW_BGR,
            jpeg_quality=100,
            pacing=Pacing.UNPACED,
        ),
        "session-started": SessionStarted(
            request_id=1, package_id="alice", fps=29.97002997002997, frame_count=250, width=1280, height=720
        ),
        "session-started-lag": SessionStarted(
            request_id=2,
            package_id="alice",
            fps=25.0,
            frame_count=1,
            width=1,
            height=1,
            max_lag_ms=4_294_967_295,
        ),
        "audio-chunk": AudioChunk(request_id=5, payload=pcm[:1600].tobytes()),
        "session-end": SessionEnd(request_id=6),
        "session-end-server": SessionEnd(request_id=1, frames_sent=240, frames_dropped=12),
        "session-end-max": SessionEnd(
            request_id=4_294_967_295, frames_sent=4_294_967_295, frames_dropped=4_294_967_295
        ),
    }
