"""The Wav2Lip mel spectrogram of a live PCM stream, frame for frame equal to the offline one.

:class:`StreamingMel` computes each mel frame once, as soon as the audio it needs has arrived, from the same
padded, pre-emphasised signal that :func:`~lipsync_tools.audio.mel.wav2lip_mel` transforms for the whole
clip. A live session and an offline ``lipsync render`` of the same int16 audio therefore give the network
the same mel window for the same video frame, where a fresh centred STFT of each 200 ms window
(:func:`~lipsync_tools.audio.mel.mel_from_pcm_window`) approximates the window's first two and last frames
and recomputes every frame five times over.

Where the frames come from (defaults: 16 kHz, ``n_fft = 800``, hop 200, so ``half = 400``):

* The clip's pre-emphasised samples ``y`` (``y[n] = x[n] - 0.97 x[n-1]``, ``y[0] = x[0]``, in float64 then
  float32, with ``x = int16 / 32768`` as :func:`~lipsync_tools.media.audio.float_from_pcm16` gives it) are
  reflect-padded by ``half`` samples at both ends, as ``np.pad(y, half, mode="reflect")`` does:
  ``padded[-k] = y[k]`` at the start and ``padded[n - 1 + k] = y[n - 1 - k]`` at the end.
* Mel frame ``j`` is the Hann-windowed FFT of padded samples ``[200 j, 200 j + 800)``, i.e. original samples
  ``[200 j - 400, 200 j + 400)``: centred on sample ``200 j``. A clip of ``n`` samples has ``1 + n // 200``.
* While the stream runs, frame ``j`` is computed once ``200 j + 400`` samples have arrived, and never before
  sample 401 (frame 0's reflected left half is samples ``1..400``): frame 0 at 401 samples, frame 1 at 600,
  frame ``j`` at ``200 j + 400``. These frames are final: they never depend on where the stream ends.
* :meth:`StreamingMel.end` adds the reflected tail and computes the last frames (two with the defaults),
  whose analysis windows reach past the last sample.

Each frame is the same arithmetic as librosa's STFT (float32 samples times the float64 periodic Hann
window, a float64 FFT rounded to complex64, its magnitude in float32, the float32 filterbank product, the
dB scale and normalisation of ``mel._mel_of_emphasised``), so frames agree with ``wav2lip_mel`` to float
rounding: the BLAS sums of the filterbank product may be ordered differently for a different number of
frames (measured: max abs difference ~1e-6 on values in [-4, 4]).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from lipsync_tools.audio.mel import MEL_WINDOW_FRAMES, MelOptions, mel_filterbank
from lipsync_tools.errors import UsageError

__all__ = ["StreamingMel", "frame_audio_offset"]

_DEFAULT = MelOptions()

# Full scale of int16 PCM: the int16 -> float conversion of media.audio.float_from_pcm16 (exact in float32).
_PCM16_SCALE = 32768.0

# Mel frames transformed per FFT call: bounds the (frames, n_fft) float64 temporaries (~1.6 MB at 256)
# when one feed() brings minutes of audio at once.
_BLOCK_FRAMES = 256


def frame_audio_offset(frame: int, fps: float) -> int:
    """The sample at which video frame ``frame`` is shown: ``round(frame * 16000 / fps)``.

    This is the ``audio_offset`` sent on the wire with a frame: the index, in the session's 16 kHz sample
    stream, of the audio playing while frame ``frame`` (0-based, at ``fps`` frames per second) is on screen.
    Raises :class:`UsageError` for a negative frame or a non-positive fps.
    """
    _check_fps(fps)
    if frame < 0:
        raise UsageError(f"video frame indices start at 0, got {frame}.")
    return round(frame * _DEFAULT.sample_rate / fps)


def _check_fps(fps: float) -> float:
    if not (math.isfinite(fps) and fps > 0):
        raise UsageError(f"fps must be a positive number of frames per second, got {fps}.")
    return float(fps)


# Memoised like mel._filterbank: a pure function of its arguments, returned read-only.
@functools.lru_cache(maxsize=8)
def _analysis_window(win_length: int, n_fft: int) -> np.ndarray:
    """librosa.stft's window: periodic Hann of ``win_length`` zero-padded to ``n_fft``; float64, read-only."""
    import librosa

    window = librosa.util.pad_center(librosa.filters.get_window("hann", win_length, fftbins=True), size=n_fft)
    window = np.ascontiguousarray(window, dtype=np.float64)
    window.flags.writeable = False
    return window


class StreamingMel:
    """Wav2Lip mel frames of one PCM stream, computed as its audio arrives.

    Feed int16 mono 16 kHz samples in chunks of any size with :meth:`feed`, call :meth:`end` when the audio
    is over, and ask for video frame ``i``'s ``(80, 16)`` network input with :meth:`window` once
    :meth:`ready` says its audio is there. Every mel frame equals ``wav2lip_mel(whole_clip)``'s (float
    rounding aside; see the module docstring for the padding rules), whatever the chunking.

    Video frame ``i`` at ``fps`` uses the 16 mel frames starting at ``floor(i * 80 / fps)``
    (:func:`~lipsync_tools.audio.mel.mel_window_starts`); after :meth:`end` that start is clamped to
    ``total_mel_frames - 16``, as an offline render clamps it, so the last video frames reuse the last
    200 ms. An offline render of ``n`` samples has ``ceil(n / 16000 * fps - 1e-9)`` video frames
    (``render.py``'s count), which :meth:`video_frames` reports once the stream has ended.

    Audio shorter than one window (fewer than 16 mel frames, ~0.19 s), which an offline render refuses,
    gives windows holding every mel frame there is, padded on the right with the silence level
    ``-max_abs_value`` (-4.0). A stream ended with no audio at all has 0 mel frames and 0 video frames.

    Memory does not grow with the stream: the object keeps the samples that future frames still need
    (at most ``n_fft`` plus the latest chunk) and the newest ``keep_frames`` mel frames; older frames are
    dropped as new ones arrive, and earlier with :meth:`discard_before`.

    Not thread-safe: one session's task feeds and reads it.
    """

    def __init__(self, fps: float, options: MelOptions | None = None, *, keep_frames: int = 512) -> None:
        """``fps``: the video frame rate the windows are for. ``keep_frames``: the most mel frames kept
        (>= 16; the default holds 6.4 s). Raises :class:`UsageError` for a non-positive fps, too small a
        ``keep_frames``, or options the stream cannot reproduce (a pad mode other than ``"reflect"``)."""
        opts = options or _DEFAULT
        self._fps = _check_fps(fps)
        if keep_frames < MEL_WINDOW_FRAMES:
            raise UsageError(
                f"keep_frames must hold at least one window ({MEL_WINDOW_FRAMES} mel frames), "
                f"got {keep_frames}."
            )
        if opts.pad_mode != "reflect":
            raise UsageError(
                f"StreamingMel reproduces reflect padding only (Wav2Lip's), got pad_mode={opts.pad_mode!r}."
            )
        if not 0 < opts.win_length <= opts.n_fft:
            raise UsageError(f"win_length must be in [1, n_fft={opts.n_fft}], got {opts.win_length}.")
        self._opts = opts
        self._basis = mel_filterbank(opts)
        self._window = _analysis_window(opts.win_length, opts.n_fft)
        self._half = opts.n_fft // 2
        # mel_window_starts' step: the same double, so floor(i * step) gives the same starts.
        self._step = opts.frames_per_second / self._fps
        self._keep = int(keep_frames)

        self._ended = False
        self._samples = 0
        self._previous = 0.0  # last raw sample (float64), for pre-emphasis across chunks
        # The padded, pre-emphasised signal P (P[m] = y[m - half]) from P index _buffer_start on. Until the
        # left padding can be built (more than `half` samples), it holds y and starts at P index `half`.
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = self._half
        self._left_padded = False

        self._computed = 0  # mel frames computed (absolute count)
        self._total: int | None = None
        # Mel frames [_first, _computed) live in columns [_column, _column + _computed - _first); twice
        # keep_frames so compaction (moving at most keep_frames columns) happens once per keep_frames frames.
        self._mel = np.zeros((opts.n_mels, 2 * self._keep), np.float32)
        self._first = 0
        self._column = 0

    # ----------------------------------------------------------------------------------------- state

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called."""
        return self._ended

    @property
    def samples(self) -> int:
        """Samples received so far."""
        return self._samples

    @property
    def mel_frames(self) -> int:
        """Mel frames computed so far: an absolute count that never decreases (discarded frames included)."""
        return self._computed

    @property
    def total_mel_frames(self) -> int | None:
        """The clip's mel frames (``1 + samples // 200``; 0 for no audio) once ended, else None."""
        return self._total

    @property
    def nbytes(self) -> int:
        """Bytes held in sample and mel buffers: bounded by ``keep_frames`` and the largest chunk."""
        return int(self._buffer.nbytes + self._mel.nbytes)

    def video_frames(self) -> int | None:
        """Video frames of the clip once ended (``ceil(samples / 16000 * fps - 1e-9)``, as ``lipsync render``
        counts them; 0 for no audio), else None."""
        if not self._ended:
            return None
        if self._samples == 0:
            return 0
        return math.ceil(self._samples / self._opts.sample_rate * self._fps - 1e-9)

    # ------------------------------------------------------------------------------------------ input

    def feed(self, pcm: np.ndarray) -> None:
        """Append int16 mono 16 kHz samples (1-D int16 array, any length incl. 0) and compute every mel
        frame that became complete. UsageError after end() or for non-int16 / non-1-D input."""
        if self._ended:
            raise UsageError("the audio stream has ended; start a new StreamingMel for more audio.")
        chunk = np.asarray(pcm)
        if chunk.dtype != np.int16 or chunk.ndim != 1:
            raise UsageError(
                f"audio chunks must be 1-D int16 mono samples at {self._opts.sample_rate} Hz, got shape "
                f"{chunk.shape} dtype {chunk.dtype}; convert float audio with media.audio.pcm16_from_float."
            )
        if chunk.size == 0:
            return
        # mel._preemphasis' arithmetic on float_from_pcm16's values (int16 / 32768 is exact in float32).
        raw = chunk.astype(np.float64)
        raw *= 1.0 / _PCM16_SCALE
        emphasised = raw.copy()
        emphasised[1:] -= self._opts.preemphasis * raw[:-1]
        if self._samples:
            emphasised[0] -= self._opts.preemphasis * self._previous
        self._previous = float(raw[-1])
        self._samples += chunk.size
        self._buffer = np.concatenate([self._buffer, emphasised.astype(np.float32)])
        if not self._left_padded and self._samples > self._half:
            # np.pad(mode="reflect")'s left half: P[half - k] = y[k] for k = 1..half.
            self._buffer = np.concatenate([self._buffer[self._half : 0 : -1], self._buffer])
            self._buffer_start = 0
            self._left_padded = True
        if self._left_padded:
            hop, end = self._opts.hop_length, self._buffer_start + self._buffer.size
            self._compute_until(max(self._computed, (end - self._opts.n_fft) // hop + 1))

    def end(self) -> None:
        """No more audio: pad the clip's tail and compute its last mel frames. Calling it again does nothing.

        Afterwards :attr:`total_mel_frames` and :meth:`video_frames` are known and every window is ready.
        """
        if self._ended:
            return
        self._ended = True
        opts, half = self._opts, self._half
        n = self._samples
        if n == 0:
            self._total = 0
            return
        self._total = 1 + (n + 2 * half - opts.n_fft) // opts.hop_length
        if self._left_padded:
            # np.pad(mode="reflect")'s right half: P[n - 1 + half + k] = y[n - 1 - k] for k = 1..half. The
            # buffer always keeps the last half + 1 samples of y for this.
            tail = self._buffer[-2 : -2 - half : -1]
            self._buffer = np.concatenate([self._buffer, tail])
        else:
            # A clip of at most `half` samples: np.pad reflects it repeatedly, as librosa's short-clip path
            # does; the buffer still holds the whole clip.
            self._buffer = np.pad(self._buffer, half, mode="reflect")
            self._buffer_start = 0
            self._left_padded = True
        self._compute_until(self._total)
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = n + 2 * half

    # ----------------------------------------------------------------------------------------- output

    def window_start(self, frame: int) -> int:
        """First mel frame of video frame ``frame``'s window: ``floor(frame * 80 / fps)``, and after
        :meth:`end` at most ``total_mel_frames - 16`` (0 when the clip has fewer than 16 mel frames)."""
        self._check_frame(frame)
        start = math.floor(frame * self._step)
        if self._total is not None:
            start = max(0, min(start, self._total - MEL_WINDOW_FRAMES))
        return start

    def ready(self, frame: int) -> bool:
        """Whether video frame ``frame``'s mel frames have been computed, so waiting for audio is over.

        Before :meth:`end`: its 16 frames are computed. After: ``frame < video_frames()``. A window already
        discarded (:meth:`discard_before`, ``keep_frames``) stays ready, and :meth:`window` refuses it.
        """
        start = self.window_start(frame)
        if self._ended:
            return frame < (self.video_frames() or 0)
        return start + MEL_WINDOW_FRAMES <= self._computed

    def window(self, frame: int) -> np.ndarray:
        """float32 (80, 16) C-contiguous copy: video frame ``frame``'s mel window. UsageError when not ready,
        or when its frames were already discarded (older than keep_frames behind the newest)."""
        start = self.window_start(frame)
        if not self.ready(frame):
            if self._ended:
                raise UsageError(
                    f"video frame {frame} is past the end of the audio: {self._samples} samples give "
                    f"{self.video_frames()} video frames at {self._fps} fps."
                )
            raise UsageError(
                f"video frame {frame}'s mel window [{start}, {start + MEL_WINDOW_FRAMES}) is not ready: "
                f"{self._computed} mel frames computed from {self._samples} samples; feed more audio or call "
                "end(), and check ready() first."
            )
        if start < self._first:
            raise UsageError(
                f"video frame {frame}'s mel window starts at mel frame {start}, but frames before "
                f"{self._first} were discarded (keep_frames={self._keep} or discard_before()); ask for "
                "frames in order, or raise keep_frames."
            )
        column = self._column + start - self._first
        stop = min(start + MEL_WINDOW_FRAMES, self._computed)
        if stop - start == MEL_WINDOW_FRAMES:
            return self._mel[:, column : column + MEL_WINDOW_FRAMES].copy()
        out = np.full((self._opts.n_mels, MEL_WINDOW_FRAMES), -self._opts.max_abs_value, np.float32)
        out[:, : stop - start] = self._mel[:, column : column + stop - start]
        return out

    def discard_before(self, frame: int) -> None:
        """The caller will never ask for video frames < ``frame`` again: free the mel frames only they use.

        Frames that a later clamp at the end of the stream could still need (the newest 16) are kept.
        """
        start = math.floor(self._check_frame(frame) * self._step)
        limit = self._total if self._total is not None else self._computed
        self._drop_before(min(start, limit - MEL_WINDOW_FRAMES))

    # -------------------------------------------------------------------------------------- internals

    def _check_frame(self, frame: int) -> int:
        if frame < 0:
            raise UsageError(f"video frame indices start at 0, got {frame}.")
        return frame

    def _compute_until(self, stop: int) -> None:
        """Compute mel frames [_computed, stop) from the buffer, then drop the samples no frame needs."""
        opts, hop = self._opts, self._opts.hop_length
        # Frames that would be dropped before anyone could read them (a chunk of more than keep_frames
        # frames) are skipped, not computed.
        first = max(self._computed, stop - self._keep)
        if first > self._computed:
            self._drop_before(first)
            self._first = self._computed = first
        for block in range(first, stop, _BLOCK_FRAMES):
            count = min(_BLOCK_FRAMES, stop - block)
            offset = block * hop - self._buffer_start
            segment = self._buffer[offset : offset + (count - 1) * hop + opts.n_fft]
            self._store(self._frames(segment, count))
        # Keep what the next frame needs, and at least the last half + 1 samples of y for the tail padding.
        keep_from = min(self._computed * hop, self._buffer_start + self._buffer.size - (self._half + 1))
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from

    def _frames(self, segment: np.ndarray, count: int) -> np.ndarray:
        """``(n_mels, count)`` float32 mel frames of the padded signal ``segment``, frame k at ``k * hop``."""
        opts = self._opts
        step = segment.strides[0]
        frames = np.lib.stride_tricks.as_strided(
            segment, shape=(count, opts.n_fft), strides=(opts.hop_length * step, step), writeable=False
        )
        # librosa.stft: float32 frames times the float64 window, a float64 FFT stored as complex64.
        spectrum = np.fft.rfft(frames * self._window, axis=-1).astype(np.complex64)
        magnitude = np.abs(spectrum)
        mel = self._basis @ magnitude.T
        # mel._mel_of_emphasised's dB scale and normalisation, term for term.
        min_level = 10.0 ** (opts.min_level_db / 20.0)
        db = 20.0 * np.log10(np.maximum(min_level, mel)) - opts.ref_level_db
        top = opts.max_abs_value
        return np.clip((2 * top) * ((db - opts.min_level_db) / -opts.min_level_db) - top, -top, top)

    def _store(self, block: np.ndarray) -> None:
        """Append computed frames, dropping the oldest beyond keep_frames; compacts the columns when full."""
        count = block.shape[1]
        self._drop_before(self._computed + count - self._keep)
        held = self._computed - self._first
        if self._column + held + count > self._mel.shape[1]:
            self._mel[:, :held] = self._mel[:, self._column : self._column + held]
            self._column = 0
        start = self._column + held
        self._mel[:, start : start + count] = block
        self._computed += count

    def _drop_before(self, mel_frame: int) -> None:
        """Forget mel frames before ``mel_frame`` (never ones not yet computed)."""
        mel_frame = min(mel_frame, self._computed)
        if mel_frame > self._first:
            self._column += mel_frame - self._first
            self._first = mel_frame
