"""The Wav2Lip mel spectrogram and the frame -> mel-window mapping."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
from scipy import signal

from lipsync_tools.audio import (
    MEL_WINDOW_FRAMES,
    MelOptions,
    mel_from_pcm_window,
    mel_window,
    mel_window_starts,
    pcm_window_samples,
    wav2lip_mel,
)
from lipsync_tools.errors import UsageError
from lipsync_tools.media import load_audio
from tests import samples


def _wav2lip_reference(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram() written out line by line (hparams inlined, librosa 0.7 defaults)."""
    emphasised = signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    min_level = np.exp(-100 / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, np.dot(basis, np.abs(stft)))) - 20
    return np.clip((2 * 4.0) * ((db - -100) / (100)) - 4.0, -4.0, 4.0)


@pytest.fixture(scope="module")
def speechlike() -> np.ndarray:
    """1.5 s of a modulated tone with a noise burst: exercises every band and the clipping."""
    rng = np.random.default_rng(7)
    pcm = samples.tone(1.5, 16000, freq=300.0)[0]
    pcm[8000:12000] += 0.3 * rng.standard_normal(4000).astype(np.float32)
    return np.clip(pcm, -1, 1).astype(np.float32)


def test_options_document_wav2lip_hparams() -> None:
    opts = MelOptions()
    assert (opts.sample_rate, opts.n_fft, opts.hop_length, opts.win_length, opts.n_mels) == (
        16000,
        800,
        200,
        800,
        80,
    )
    assert (opts.fmin, opts.fmax, opts.preemphasis) == (55.0, 7600.0, 0.97)
    assert (opts.min_level_db, opts.ref_level_db, opts.max_abs_value) == (-100.0, 20.0, 4.0)
    assert opts.frames_per_second == 80.0 and MEL_WINDOW_FRAMES == 16
    with pytest.raises(AttributeError):
        opts.n_fft = 1024  # type: ignore[misc]


def test_matches_wav2lip_reference(speechlike: np.ndarray) -> None:
    mel = wav2lip_mel(speechlike)
    assert (
        mel.shape == (80, 1 + speechlike.size // 200) and mel.dtype == np.float32 and mel.flags.c_contiguous
    )
    np.testing.assert_allclose(mel, _wav2lip_reference(speechlike.astype(np.float64)), atol=2e-3)
    assert mel.min() >= -4.0 and mel.max() <= 4.0


def test_silence_is_minus_four() -> None:
    mel = wav2lip_mel(np.zeros(3200, np.float32))
    assert mel.shape == (80, 17) and np.all(mel == -4.0)


def test_sine_lands_in_its_mel_band() -> None:
    pcm = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)).astype(np.float32)
    mel = wav2lip_mel(pcm)
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    expected = int(np.argmin(np.abs(centres - 1000)))
    assert abs(int(np.argmax(mel[:, 10:-10].mean(axis=1))) - expected) <= 1
    assert mel[expected, 10:-10].mean() > mel[70:, 10:-10].mean() + 2  # far bands are much quieter


def test_speech_file_features(speech_wav: Path) -> None:
    mel = wav2lip_mel(load_audio(speech_wav))
    assert mel.shape[0] == 80 and mel.std() > 0.5


def test_window_starts_follow_wav2lip() -> None:
    starts = mel_window_starts(10, 25, n_mel_frames=1000)
    assert starts.dtype == np.int32 and starts.tolist() == [int(i * 80 / 25) for i in range(10)]
    ntsc = mel_window_starts(120, 30000 / 1001, n_mel_frames=10_000)
    assert ntsc.tolist() == [int(i * (80.0 / (30000 / 1001))) for i in range(120)]


def test_window_starts_clamp_at_the_end() -> None:
    # 2 s of audio at 25 fps: 161 mel frames, but 60 video frames (the video is longer than the audio)
    starts = mel_window_starts(60, 25, n_mel_frames=161)
    assert starts.max() == 161 - 16
    assert starts[-1] == 145 and starts[45] == 144
    assert all(s + 16 <= 161 for s in starts)


def test_window_starts_refuse_short_audio() -> None:
    with pytest.raises(UsageError, match=r"gives 15 mel frames .* needs 16"):
        mel_window_starts(5, 25, n_mel_frames=15)
    with pytest.raises(UsageError, match="fps"):
        mel_window_starts(5, 0, n_mel_frames=100)


def test_mel_window_is_a_view(speechlike: np.ndarray) -> None:
    mel = wav2lip_mel(speechlike)
    window = mel_window(mel, 20)
    assert window.shape == (80, 16) and np.shares_memory(window, mel)
    np.testing.assert_array_equal(window, mel[:, 20:36])
    with pytest.raises(UsageError, match="outside"):
        mel_window(mel, mel.shape[1] - 15)


def test_pcm_window_with_context_is_exact(speechlike: np.ndarray) -> None:
    mel = wav2lip_mel(speechlike)
    assert pcm_window_samples(with_context=True) == 3800
    for start in (2, 30, 90):
        chunk = speechlike[start * 200 - 400 : start * 200 + 3400]
        np.testing.assert_allclose(mel_from_pcm_window(chunk), mel[:, start : start + 16], atol=2e-3)


def test_pcm_window_plain_matches_inside(speechlike: np.ndarray) -> None:
    mel = wav2lip_mel(speechlike)
    assert pcm_window_samples() == 3200
    start = 40
    window = mel_from_pcm_window(speechlike[start * 200 : start * 200 + 3200])
    assert window.shape == (80, 16) and window.dtype == np.float32 and window.flags.c_contiguous
    np.testing.assert_allclose(window[:, 2:15], mel[:, start + 2 : start + 15], atol=2e-3)


def test_bad_pcm() -> None:
    with pytest.raises(UsageError, match="3200 samples"):
        mel_from_pcm_window(np.zeros(3000, np.float32))
    with pytest.raises(UsageError, match="1-D float"):
        wav2lip_mel(np.zeros((2, 3200), np.float32))
    with pytest.raises(UsageError, match="0 samples"):
        wav2lip_mel(np.zeros(0, np.float32))


def test_long_audio_in_blocks_equals_one_centred_stft():
    """wav2lip_mel transforms long audio block by block; the frames must equal one STFT over the clip."""
    from lipsync_tools.audio import mel as mel_module

    rng = np.random.default_rng(1)
    pcm = (0.3 * rng.standard_normal(16000 * 40 + 123)).astype(np.float32)  # 40 s: several blocks
    blocked = mel_module.wav2lip_mel(pcm)
    whole = mel_module._spectrogram(pcm, mel_module.MelOptions(), center=True)
    assert blocked.shape == whole.shape == (80, 1 + pcm.size // 200)
    np.testing.assert_allclose(blocked, whole, atol=2e-5)
