"""The streaming mel spectrogram: every video frame's window equals the offline one, whatever the chunking."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.audio import MelOptions, mel_from_pcm_window, mel_window, mel_window_starts, wav2lip_mel
from lipsync_tools.audio.streaming import StreamingMel, frame_audio_offset
from lipsync_tools.errors import UsageError
from lipsync_tools.media import load_audio
from lipsync_tools.media.audio import float_from_pcm16, pcm16_from_float

# Same arithmetic as wav2lip_mel; only the BLAS summation order of the filterbank product may differ.
ATOL = 1e-4
FPS = (25.0, 30.0, 29.97)


def _speechlike(samples: int, seed: int = 0) -> np.ndarray:
    """int16 audio with voiced tones, noise bursts and a stretch of digital silence (hits the -4 floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    voiced = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 860), 1))
    pcm = 0.3 * envelope * voiced + 0.05 * rng.standard_normal(samples)
    burst = slice(samples // 3, samples // 3 + samples // 10)
    pcm[burst] += 0.4 * rng.standard_normal(pcm[burst].size)
    pcm[samples // 2 : samples // 2 + samples // 8] = 0.0
    return pcm16_from_float(np.clip(pcm, -1, 1).astype(np.float32))


def _reference(pcm16: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # librosa warns that n_fft is too large for clips under 800 samples
        warnings.simplefilter("ignore", UserWarning)
        return wav2lip_mel(float_from_pcm16(pcm16))


def _chunks(pcm16: np.ndarray, chunking: str, seed: int = 0) -> Iterator[np.ndarray]:
    if chunking == "whole":
        yield pcm16
        return
    if chunking == "random":
        rng = np.random.default_rng(seed)
        at = 0
        while at < pcm16.size:
            size = int(rng.choice([0, 1, 7, 199, 200, 201, 640, 1333, 5000]))
            yield pcm16[at : at + size]
            at += size
        return
    size = int(chunking)
    for at in range(0, pcm16.size, size):
        yield pcm16[at : at + size]


def _stream_windows(
    pcm16: np.ndarray, fps: float, chunking: str, keep_frames: int = 512
) -> tuple[StreamingMel, list[np.ndarray]]:
    """Every video frame's window, each asked for as soon as it is ready, like a live session; frames
    already answered are discarded as it goes."""
    stream = StreamingMel(fps, keep_frames=keep_frames)
    windows: list[np.ndarray] = []
    for chunk in _chunks(pcm16, chunking):
        stream.feed(chunk)
        while stream.ready(len(windows)):
            stream.discard_before(len(windows))
            windows.append(stream.window(len(windows)))
    stream.end()
    n_video = stream.video_frames()
    assert n_video is not None
    while len(windows) < n_video:
        assert stream.ready(len(windows))
        stream.discard_before(len(windows))
        windows.append(stream.window(len(windows)))
    assert not stream.ready(n_video)
    return stream, windows


def _assert_windows_match(
    pcm16: np.ndarray, fps: float, stream: StreamingMel, windows: list[np.ndarray]
) -> None:
    mel = _reference(pcm16)
    n_video = math.ceil(pcm16.size / 16000 * fps - 1e-9)  # render.py's frame count
    assert stream.total_mel_frames == mel.shape[1] and stream.mel_frames == mel.shape[1]
    assert stream.video_frames() == len(windows) == n_video
    starts = mel_window_starts(n_video, fps, mel.shape[1])
    for i, window in enumerate(windows):
        assert stream.window_start(i) == starts[i]
        assert window.shape == (80, 16) and window.dtype == np.float32 and window.flags.c_contiguous
        np.testing.assert_allclose(window, mel_window(mel, int(starts[i])), rtol=0, atol=ATOL, err_msg=f"{i}")


# Lengths: exactly one window (3000 samples = 16 mel frames), just above it, not multiples of 200.
SHORT = (3000, 3001, 3199, 3201, 16000 + 123)


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("chunking", ["1", "137", "640", "whole", "random"])
def test_every_window_equals_offline(fps: float, chunking: str) -> None:
    for n in SHORT if chunking != "1" else SHORT[:4]:
        pcm16 = _speechlike(n, seed=n)
        stream, windows = _stream_windows(pcm16, fps, chunking)
        _assert_windows_match(pcm16, fps, stream, windows)


@pytest.mark.parametrize("chunking", ["137", "640", "random"])
def test_long_clip_equals_offline_block_path(chunking: str) -> None:
    """Over 2048 mel frames wav2lip_mel transforms blocks of a once-padded signal; same frames."""
    pcm16 = _speechlike(16000 * 27 + 77, seed=3)  # 2161 mel frames
    for fps in FPS:
        stream, windows = _stream_windows(pcm16, fps, chunking)
        _assert_windows_match(pcm16, fps, stream, windows)


def test_long_clip_in_one_chunk_keeps_the_newest_frames() -> None:
    pcm16 = _speechlike(16000 * 27 + 77, seed=3)
    mel = _reference(pcm16)
    stream = StreamingMel(25, keep_frames=mel.shape[1])
    stream.feed(pcm16)
    stream.end()
    n_video = stream.video_frames()
    assert n_video == math.ceil(pcm16.size * 25 / 16000)
    starts = mel_window_starts(n_video, 25, mel.shape[1])
    got = np.stack([stream.window(i) for i in range(n_video)])
    want = np.stack([mel_window(mel, int(s)) for s in starts])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # with the default keep_frames only the newest 512 frames survive one big chunk
    small = StreamingMel(25)
    small.feed(pcm16)
    small.end()
    np.testing.assert_allclose(small.window(n_video - 1), want[-1], rtol=0, atol=ATOL)
    with pytest.raises(UsageError, match="discarded"):
        small.window(0)


def test_speech_equals_offline(speech_wav: Path) -> None:
    pcm16 = pcm16_from_float(load_audio(speech_wav))
    stream, windows = _stream_windows(pcm16, 25, "random")
    _assert_windows_match(pcm16, 25, stream, windows)


def test_frames_appear_as_their_audio_arrives() -> None:
    """Frame j needs samples up to 200 j + 400, and frame 0 also sample 400 (its reflected left half)."""
    pcm16 = _speechlike(4000)
    mel = _reference(pcm16)
    stream = StreamingMel(25)
    counts = []
    for n in range(1, pcm16.size + 1):
        stream.feed(pcm16[n - 1 : n])
        counts.append(stream.mel_frames)
    assert counts[399] == 0 and counts[400] == 1  # 400 samples: nothing; 401: frame 0
    assert counts[598] == 1 and counts[599] == 2  # frame 1 at 600 samples
    assert all(counts[n - 1] == max(0, (n - 400) // 200 + 1) for n in range(401, pcm16.size + 1))
    assert stream.total_mel_frames is None and stream.video_frames() is None
    assert stream.ready(0) and not stream.ready(2)  # window 0 = frames 0..15, frame 2 starts at 6
    np.testing.assert_allclose(stream.window(0), mel[:, :16], rtol=0, atol=ATOL)
    stream.end()
    assert stream.mel_frames == stream.total_mel_frames == 1 + 4000 // 200 == mel.shape[1]


@pytest.mark.parametrize("n", [1, 150, 400, 401, 599, 799, 800, 2000, 2999])
def test_audio_shorter_than_one_window_pads_with_silence(n: int) -> None:
    pcm16 = _speechlike(n, seed=n)
    mel = _reference(pcm16)
    for chunking in ("1", "137", "whole"):
        stream, windows = _stream_windows(pcm16, 25, chunking)
        assert stream.total_mel_frames == mel.shape[1] == 1 + n // 200 < 16
        assert len(windows) == stream.video_frames() == math.ceil(n * 25 / 16000)
        for i, window in enumerate(windows):
            assert stream.window_start(i) == 0
            np.testing.assert_allclose(window[:, : mel.shape[1]], mel, rtol=0, atol=ATOL)
            assert np.all(window[:, mel.shape[1] :] == -4.0)


def test_no_audio() -> None:
    stream = StreamingMel(25)
    stream.feed(np.zeros(0, np.int16))
    stream.end()
    assert (stream.samples, stream.total_mel_frames, stream.video_frames()) == (0, 0, 0)
    assert not stream.ready(0)


def test_memory_is_bounded() -> None:
    """10 minutes in 20 ms chunks: the buffers never outgrow keep_frames and one chunk."""
    keep, chunk = 128, 320
    stream = StreamingMel(25, keep_frames=keep)
    pcm16 = np.random.default_rng(5).integers(-3000, 3000, 16000 * 600, dtype=np.int16)
    bound = (800 + chunk) * 4 + 80 * 2 * keep * 4
    biggest, frame = 0, 0
    for at in range(0, pcm16.size, chunk):
        stream.feed(pcm16[at : at + chunk])
        biggest = max(biggest, stream.nbytes)
        while stream.ready(frame):
            stream.window(frame)
            frame += 1
    stream.end()
    assert biggest <= bound and stream.nbytes <= bound
    assert stream.samples == pcm16.size and stream.mel_frames == 1 + pcm16.size // 200
    # the last 5 of the 15000 video frames wait for end(): their windows need the clip's last 2 mel frames
    assert frame == 15000 - 5 and stream.video_frames() == 15000
    assert stream.window(14999).shape == (80, 16)
    with pytest.raises(UsageError, match="discarded"):
        stream.window(frame - keep)  # automatically dropped, never discard_before()


def test_discard_before_frees_frames_but_keeps_the_end_clamp() -> None:
    pcm16 = _speechlike(16000)
    mel = _reference(pcm16)
    stream = StreamingMel(25, keep_frames=100)
    stream.feed(pcm16)
    assert stream.mel_frames == 79
    stream.discard_before(1000)  # far ahead: still keeps the newest 16 frames
    with pytest.raises(UsageError, match=r"frames before 63 were discarded"):
        stream.window(19)
    stream.end()
    last = stream.video_frames()
    assert last == 25 and stream.window_start(24) == 81 - 16
    np.testing.assert_allclose(stream.window(24), mel[:, -16:], rtol=0, atol=ATOL)


def test_window_is_a_copy() -> None:
    stream = StreamingMel(25)
    stream.feed(_speechlike(8000))
    first = stream.window(0)
    first[:] = 99.0
    assert np.all(stream.window(0) <= 4.0)


def test_errors() -> None:
    stream = StreamingMel(25)
    with pytest.raises(UsageError, match="1-D int16"):
        stream.feed(np.zeros(100, np.float32))
    with pytest.raises(UsageError, match=r"shape \(2, 100\)"):
        stream.feed(np.zeros((2, 100), np.int16))
    with pytest.raises(UsageError, match="not ready: 0 mel frames computed from 0 samples"):
        stream.window(0)
    with pytest.raises(UsageError, match="start at 0"):
        stream.window(-1)
    stream.feed(_speechlike(5000))
    assert stream.mel_frames == 24 and stream.ready(2) and not stream.ready(3)
    with pytest.raises(UsageError, match=r"window \[9, 25\) is not ready"):
        stream.window(3)
    stream.end()
    stream.end()  # idempotent
    assert stream.video_frames() == 8 and stream.ready(7) and not stream.ready(8)
    with pytest.raises(UsageError, match="past the end of the audio: 5000 samples give 8 video frames"):
        stream.window(8)
    with pytest.raises(UsageError, match="has ended"):
        stream.feed(np.zeros(10, np.int16))
    with pytest.raises(UsageError, match="fps"):
        StreamingMel(0)
    with pytest.raises(UsageError, match="keep_frames"):
        StreamingMel(25, keep_frames=15)
    with pytest.raises(UsageError, match="reflect"):
        StreamingMel(25, MelOptions(pad_mode="constant"))


def test_frame_audio_offset() -> None:
    assert [frame_audio_offset(i, 25) for i in range(4)] == [0, 640, 1280, 1920]
    assert frame_audio_offset(1, 29.97) == 534 and frame_audio_offset(30, 30000 / 1001) == 16016
    with pytest.raises(UsageError, match="start at 0"):
        frame_audio_offset(-1, 25)
    with pytest.raises(UsageError, match="fps"):
        frame_audio_offset(1, -25)


def test_report_speed_per_video_frame() -> None:
    """Reports µs per 25 fps video frame; asserts only that both ways give the same windows inside."""
    pcm16 = _speechlike(16000 * 10, seed=11)
    chunk = 640  # one 25 fps video frame of audio per feed()

    def streaming() -> tuple[float, list[np.ndarray]]:
        stream, windows = StreamingMel(25), list[np.ndarray]()
        started = time.perf_counter()
        for at in range(0, pcm16.size, chunk):
            stream.feed(pcm16[at : at + chunk])
            while stream.ready(len(windows)):
                windows.append(stream.window(len(windows)))
        return (time.perf_counter() - started) / len(windows), windows

    def per_window() -> tuple[float, list[np.ndarray]]:
        starts = mel_window_starts(245, 25, 1 + pcm16.size // 200)
        started = time.perf_counter()
        windows = [
            mel_from_pcm_window(pcm16[s * 200 : s * 200 + 3200].astype(np.float32) * np.float32(1 / 32768))
            for s in starts
        ]
        return (time.perf_counter() - started) / len(windows), windows

    streaming(), per_window()  # warm up (librosa import, filterbank cache)
    ours = [streaming() for _ in range(5)]
    theirs = [per_window() for _ in range(5)]
    ours_us = statistics.median(t for t, _ in ours) * 1e6
    theirs_us = statistics.median(t for t, _ in theirs) * 1e6
    print(
        f"\nmel per 25 fps video frame: streaming {ours_us:.0f} us, mel_from_pcm_window {theirs_us:.0f} us "
        f"({theirs_us / ours_us:.1f}x)"
    )
    for a, b in zip(ours[0][1], theirs[0][1], strict=False):
        np.testing.assert_allclose(a[:, 2:15], b[:, 2:15], rtol=0, atol=2e-3)
