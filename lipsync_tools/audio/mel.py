"""The Wav2Lip mel spectrogram, and the mapping from video frames to mel windows.

The numbers reproduce Wav2Lip's ``audio.py`` + ``hparams.py`` (Rudrabha/Wav2Lip), the features the public
checkpoints were trained on:

1. pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` (``scipy.signal.lfilter([1, -0.97], [1], x)``);
2. ``|librosa.stft(n_fft=800, hop_length=200, win_length=800)|``, Hann window, centred frames with
   *reflect* padding (Wav2Lip pins librosa 0.7, whose default was ``pad_mode="reflect"``; librosa 0.10
   changed the default to zero padding, so it is passed explicitly here);
3. an 80-band Slaney mel filterbank, 55..7600 Hz, for 16 kHz audio;
4. ``20 * log10(max(1e-5, mel)) - 20`` (``min_level_db = -100``, ``ref_level_db = 20``);
5. symmetric normalisation ``clip(8 * (S + 100) / 100 - 4, -4, 4)``.

At 16 kHz and hop 200 there are 80 mel frames per second: mel frame ``j`` is centred on sample ``200 j``,
and a clip of ``n`` samples has ``1 + n // 200`` frames. Wav2Lip feeds the network a window of 16 frames
(200 ms) per video frame, starting at mel frame ``int(i * 80 / fps)`` for video frame ``i``.

librosa is imported inside the functions: importing librosa's feature code costs
seconds (numba), and ``lipsync --help`` must stay fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipsync_tools.errors import UsageError

__all__ = [
    "MEL_WINDOW_FRAMES",
    "MelOptions",
    "mel_filterbank",
    "mel_from_pcm_window",
    "mel_window",
    "mel_window_starts",
    "pcm_window_samples",
    "wav2lip_mel",
]

# Mel frames per network input window (Wav2Lip's ``syncnet_mel_step_size``): 16 frames = 200 ms.
MEL_WINDOW_FRAMES = 16


@dataclass(frozen=True, kw_only=True)
class MelOptions:
    """Settings of the Wav2Lip mel spectrogram (``hparams.py``). Change them only to match another model."""

    sample_rate: int = 16000
    """Input sample rate in Hz; audio must be resampled to it first."""
    n_fft: int = 800
    """FFT size in samples (50 ms)."""
    hop_length: int = 200
    """Samples between mel frames (12.5 ms, i.e. 80 frames per second)."""
    win_length: int = 800
    """Hann window length in samples."""
    n_mels: int = 80
    """Mel bands."""
    fmin: float = 55.0
    """Lowest mel filter edge, Hz."""
    fmax: float = 7600.0
    """Highest mel filter edge, Hz (must not exceed sample_rate / 2)."""
    preemphasis: float = 0.97
    """Pre-emphasis coefficient k of ``y[n] = x[n] - k x[n-1]``."""
    min_level_db: float = -100.0
    """Floor of the dB scale: amplitudes below 10 ** (min_level_db / 20) are clamped to it."""
    ref_level_db: float = 20.0
    """Subtracted from the dB values before normalisation."""
    max_abs_value: float = 4.0
    """Normalised values lie in [-max_abs_value, max_abs_value] (symmetric, clipped)."""
    pad_mode: str = "reflect"
    """How centred STFT frames are padded at the clip's ends (librosa 0.7's default)."""

    @property
    def frames_per_second(self) -> float:
        """Mel frames per second of audio (80 with the defaults)."""
        return self.sample_rate / self.hop_length


def mel_filterbank(options: MelOptions | None = None) -> np.ndarray:
    """The read-only ``(n_mels, 1 + n_fft // 2)`` float32 Slaney mel filterbank of ``options``."""
    opts = options or _DEFAULT
    if opts.fmax > opts.sample_rate / 2:
        raise UsageError(f"fmax {opts.fmax} Hz is above the Nyquist frequency {opts.sample_rate / 2} Hz.")
    return _filterbank(opts.sample_rate, opts.n_fft, opts.n_mels, opts.fmin, opts.fmax)


# Memoised because the engine computes a mel window per request; the result is a pure function of its
# arguments and is returned read-only, so the cache holds no mutable state.
@functools.lru_cache(maxsize=8)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    basis = np.ascontiguousarray(basis, dtype=np.float32)
    basis.flags.writeable = False
    return basis


_DEFAULT = MelOptions()


def _check_pcm(pcm: np.ndarray, name: str = "pcm") -> np.ndarray:
    array = np.asarray(pcm)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise UsageError(
            f"{name} must be 1-D float mono samples in [-1, 1], got shape {array.shape} dtype {array.dtype}; "
            "decode it with lipsync_tools.media.load_audio (16 kHz mono float32)."
        )
    return array.astype(np.float32, copy=False)


def _preemphasis(pcm: np.ndarray, opts: MelOptions) -> np.ndarray:
    """y[n] = x[n] - k x[n-1] (y[0] = x[0]) in float64, as Wav2Lip's scipy.signal.lfilter([1, -k], [1], x)
    computes it (written out: importing scipy.signal costs ~1 s); returned as float32."""
    samples = pcm.astype(np.float64)
    emphasised = samples.copy()
    emphasised[1:] -= opts.preemphasis * samples[:-1]
    return emphasised.astype(np.float32)


def _mel_of_emphasised(emphasised: np.ndarray, opts: MelOptions, *, center: bool) -> np.ndarray:
    """Steps 2..5 above; ``center`` False means the clip already holds every frame's context."""
    import librosa

    stft_kwargs: dict[str, Any] = {"pad_mode": opts.pad_mode} if center else {}
    magnitude = np.abs(
        librosa.stft(
            y=emphasised,
            n_fft=opts.n_fft,
            hop_length=opts.hop_length,
            win_length=opts.win_length,
            center=center,
            **stft_kwargs,
        )
    )
    mel = mel_filterbank(opts) @ magnitude
    min_level = 10.0 ** (opts.min_level_db / 20.0)
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - opts.ref_level_db
    top = opts.max_abs_value
    normalised = np.clip((2 * top) * ((db - opts.min_level_db) / -opts.min_level_db) - top, -top, top)
    return np.ascontiguousarray(normalised, dtype=np.float32)


def _spectrogram(pcm: np.ndarray, opts: MelOptions, *, center: bool) -> np.ndarray:
    """Steps 1..5 above on one clip."""
    return _mel_of_emphasised(_preemphasis(pcm, opts), opts, center=center)


# Mel frames computed per STFT call by wav2lip_mel: bounds the complex spectrogram and its temporaries
# (~50 kB per frame) whatever the audio's length, so a long build's memory does not grow with it.
_BLOCK_FRAMES = 2048


def wav2lip_mel(pcm: np.ndarray, options: MelOptions | None = None) -> np.ndarray:
    """The Wav2Lip mel spectrogram of mono float PCM at ``options.sample_rate`` (16 kHz).

    Returns a C-contiguous float32 array of shape ``(80, 1 + len(pcm) // 200)``, values in [-4, 4]
    (-4 is silence). Long audio is transformed in blocks of frames, each given its full analysis window
    from a once-padded signal, which gives the same frames as one centred STFT over the whole clip.
    Raises :class:`UsageError` if ``pcm`` is not 1-D float audio or is empty.
    """
    opts = options or _DEFAULT
    samples = _check_pcm(pcm)
    if samples.size == 0:
        raise UsageError("cannot compute a mel spectrogram of 0 samples; the audio track is empty.")
    n_frames = 1 + samples.size // opts.hop_length
    if n_frames <= _BLOCK_FRAMES:
        return _spectrogram(samples, opts, center=True)
    # librosa's centred STFT is the uncentred STFT of the signal padded by n_fft // 2 on each side.
    half = opts.n_fft // 2
    padded = np.pad(_preemphasis(samples, opts), half, mode=opts.pad_mode)  # type: ignore[call-overload]
    mel = np.empty((opts.n_mels, n_frames), np.float32)
    for first in range(0, n_frames, _BLOCK_FRAMES):
        last = min(first + _BLOCK_FRAMES, n_frames)
        segment = padded[first * opts.hop_length : (last - 1) * opts.hop_length + opts.n_fft]
        mel[:, first:last] = _mel_of_emphasised(segment, opts, center=False)
    return mel


def mel_window_starts(
    n_frames: int, fps: float, n_mel_frames: int, window: int = MEL_WINDOW_FRAMES
) -> np.ndarray:
    """First mel frame of the window for each of ``n_frames`` video frames: an ``(n_frames,)`` int32 array.

    Wav2Lip's mapping ``start = int(i * 80 / fps)`` (80 mel frames per second), clamped to
    ``n_mel_frames - window`` so every window lies inside the spectrogram: video frames past the end of the
    audio reuse its last 200 ms (Wav2Lip's inference does the same for its final chunk). Raises
    :class:`UsageError` for a non-positive fps, a negative frame count, or a spectrogram shorter than one
    window (audio shorter than 0.2 s).
    """
    if fps <= 0:
        raise UsageError(f"fps must be positive, got {fps}.")
    if n_frames < 0:
        raise UsageError(f"n_frames must be >= 0, got {n_frames}.")
    if n_mel_frames < window:
        seconds = n_mel_frames / _DEFAULT.frames_per_second
        raise UsageError(
            f"the audio gives {n_mel_frames} mel frames (~{seconds:.3f} s) but one window needs {window} "
            f"({window / _DEFAULT.frames_per_second:.1f} s); give audio at least that long."
        )
    # float64 products then floor: the same values as Wav2Lip's Python int(i * (80. / fps)) for every
    # frame index that fits in a video, because both round the same double toward zero.
    step = _DEFAULT.frames_per_second / float(fps)
    starts = np.floor(np.arange(n_frames, dtype=np.float64) * step).astype(np.int64)
    np.minimum(starts, n_mel_frames - window, out=starts)
    return starts.astype(np.int32)


def mel_window(mel: np.ndarray, start: int, window: int = MEL_WINDOW_FRAMES) -> np.ndarray:
    """The ``(n_mels, window)`` slice of ``mel`` starting at mel frame ``start`` (a view, no copy).

    Raises :class:`UsageError` when the window does not fit inside ``mel``.
    """
    if not 0 <= start <= mel.shape[1] - window:
        raise UsageError(
            f"mel window [{start}, {start + window}) is outside the spectrogram's {mel.shape[1]} frames; "
            "compute starts with mel_window_starts()."
        )
    return mel[:, start : start + window]


def pcm_window_samples(options: MelOptions | None = None, *, with_context: bool = False) -> int:
    """Samples :func:`mel_from_pcm_window` accepts: 3200 (200 ms), or 3800 ``with_context`` (defaults)."""
    opts = options or _DEFAULT
    span = MEL_WINDOW_FRAMES * opts.hop_length
    return span + (opts.n_fft - opts.hop_length) if with_context else span


def mel_from_pcm_window(pcm: np.ndarray, options: MelOptions | None = None) -> np.ndarray:
    """One ``(80, 16)`` float32 mel window from raw 16 kHz PCM, for requests that carry audio, not indices.

    Two lengths are accepted (``pcm_window_samples()``):

    * **3200 samples** (200 ms): the audio ``[200 s, 200 s + 3200)`` of the window starting at mel frame
      ``s``. The clip is treated on its own (centred STFT with reflect padding), so mel frames 2..14 equal
      ``wav2lip_mel(whole)[:, s : s + 16]`` while frames 0, 1 and 15, whose 50 ms analysis windows reach
      outside the clip, are approximations. Good enough for streaming audio with no look-back.
    * **3800 samples**: the same window plus 400 samples (half an FFT) of context on each side, i.e.
      ``[200 s - 400, 200 s + 3400)``; the result equals ``wav2lip_mel(whole)[:, s : s + 16]`` up to float
      rounding wherever that context lies inside the whole clip.

    Raises :class:`UsageError` for any other length or non-float input.
    """
    opts = options or _DEFAULT
    samples = _check_pcm(pcm)
    plain, padded = pcm_window_samples(opts), pcm_window_samples(opts, with_context=True)
    if samples.size == plain:
        return np.ascontiguousarray(_spectrogram(samples, opts, center=True)[:, :MEL_WINDOW_FRAMES])
    if samples.size == padded:
        # Without centring, frame k covers samples [200 k, 200 k + 800): exactly the frames the full
        # spectrogram centres on 200 (s + k). Pre-emphasis differs only at sample 0, which the Hann
        # window weights by zero.
        return _spectrogram(samples, opts, center=False)
    raise UsageError(
        f"a PCM window must hold {plain} samples (200 ms at {opts.sample_rate} Hz) or {padded} (with "
        f"{(padded - plain) // 2} samples of context each side), got {samples.size}."
    )
