"""Decoding audio tracks to 16 kHz mono float32, from videos and audio files of any rate/channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import (
    CorruptMediaError,
    InputNotFoundError,
    NoAudioError,
    NotAVideoError,
    UsageError,
)
from lipsync_tools.media import float_from_pcm16, load_audio, pcm16_from_float


def _dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[int(np.argmax(spectrum))])


def test_video_track_at_16k(astronaut_mp4: Path) -> None:
    pcm = load_audio(astronaut_mp4)
    assert pcm.dtype == np.float32 and pcm.ndim == 1 and pcm.flags.c_contiguous
    assert pcm.size == 32000  # 2 s exactly: AAC padding past the listed duration is dropped
    assert pcm.min() >= -1.0 and pcm.max() <= 1.0
    assert _dominant_hz(pcm[4000:28000], 16000) == pytest.approx(440, abs=3)


def test_44k_stereo_becomes_16k_mono(stereo_44k_mp4: Path) -> None:
    pcm = load_audio(stereo_44k_mp4)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert pcm.size / 16000 == pytest.approx(2.0, abs=0.03)
    # both channels (440 Hz left, 880 Hz right) survive the downmix
    spectrum = np.abs(np.fft.rfft(pcm[4000:28000]))
    freqs = np.fft.rfftfreq(24000, 1 / 16000)
    peak = spectrum.max()
    for hz in (440, 880):
        assert spectrum[np.abs(freqs - hz) < 3].max() > 0.3 * peak


def test_other_sample_rates(stereo_44k_mp4: Path) -> None:
    pcm = load_audio(stereo_44k_mp4, sample_rate=8000)
    assert pcm.size / 8000 == pytest.approx(2.0, abs=0.03)


def test_wav_file(tone_wav: Path) -> None:
    pcm = load_audio(tone_wav)
    assert pcm.size == 16000
    assert _dominant_hz(pcm, 16000) == pytest.approx(440, abs=3)


def test_speech_wav_resampled(speech_wav: Path) -> None:
    pcm = load_audio(speech_wav)  # espeak writes 22.05 kHz
    assert pcm.size > 16000 and np.abs(pcm).max() > 0.1


def test_talking_head_has_speech(talking_head_mp4: Path) -> None:
    pcm = load_audio(talking_head_mp4)
    assert pcm.size / 16000 == pytest.approx(4.004, abs=0.05)
    assert np.abs(pcm).max() > 0.1


def test_no_audio_track(silent_mp4: Path) -> None:
    with pytest.raises(NoAudioError, match=r"has no audio track.*--audio FILE"):
        load_audio(silent_mp4)


def test_bad_inputs(tmp_path: Path, text_mp4: Path, truncated_mp4: Path) -> None:
    with pytest.raises(InputNotFoundError):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(NotAVideoError, match="expected an audio or video file"):
        load_audio(text_mp4)
    with pytest.raises(CorruptMediaError, match=r"decoded [\d.]+ s of audio, then the stream ended"):
        load_audio(truncated_mp4)
    with pytest.raises(UsageError):
        load_audio(text_mp4, sample_rate=0)


def test_pcm16_round_trip() -> None:
    pcm = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 1.7, -3.0], np.float32)
    ints = pcm16_from_float(pcm)
    assert ints.dtype == np.int16
    assert ints.tolist() == [-32767, -16384, 0, 16384, 32767, 32767, -32767]
    back = float_from_pcm16(ints)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back[:5], pcm[:5], atol=1 / 16384)
    with pytest.raises(UsageError):
        float_from_pcm16(pcm)
