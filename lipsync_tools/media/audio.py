"""Audio decoding with PyAV: any file FFmpeg reads (video or audio) to float32 mono PCM at a chosen rate.

Also the two PCM conversions the wire protocol and the writer need (float32 in [-1, 1] <-> int16).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import av.error
import numpy as np

from lipsync_tools.errors import CorruptMediaError, NoAudioError, UsageError
from lipsync_tools.media.video import _ffmpeg_reason, open_media

__all__ = ["float_from_pcm16", "load_audio", "pcm16_from_float"]

# Encoder delay and padding make decoded and listed durations differ by a few codec frames
# (AAC: 1024 samples each); a shortfall beyond this means the file was cut short.
_TRUNCATION_SLACK_S = 0.25


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio track of ``path`` to mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    Works on video files (their audio track) and audio files (wav, mp3, flac, ...), whatever their rate,
    channel count or sample format: FFmpeg's resampler downmixes to mono and converts the rate.
    Returns a C-contiguous ``(n_samples,)`` float32 array (empty for an empty track); codec padding past
    the track duration the container lists (up to 0.25 s) is dropped.

    Raises :class:`InputNotFoundError`, :class:`NotAVideoError` (not a media file),
    :class:`NoAudioError` (the file has no audio track), :class:`CorruptMediaError` (decoding fails
    part-way) and :class:`UsageError` for a non-positive ``sample_rate``.
    """
    if sample_rate <= 0:
        raise UsageError(f"sample_rate must be a positive number of Hz, got {sample_rate}.")
    file = Path(path)
    container = open_media(file, expect="an audio or video file")
    try:
        if not container.streams.audio:
            raise NoAudioError(
                f"{file} has no audio track; expected a file with sound. "
                "Give the speech separately with --audio FILE."
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        decoded_s = 0.0
        try:
            for frame in container.decode(stream):
                decoded_s += frame.samples / float(frame.sample_rate or 1)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, EOFError) as exc:
            raise CorruptMediaError(
                f"{file}: decoded {decoded_s:.2f} s of audio, then FFmpeg failed ({_ffmpeg_reason(exc)}); "
                "the audio track is damaged. Re-export the file or pass a clean one with --audio FILE."
            ) from exc
        listed_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    finally:
        container.close()
    if listed_s and decoded_s < listed_s - _TRUNCATION_SLACK_S:
        raise CorruptMediaError(
            f"{file}: decoded {decoded_s:.2f} s of audio, then the stream ended; the container lists "
            f"{listed_s:.2f} s. The file is probably truncated; re-export it or pass a complete --audio FILE."
        )
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    pcm = np.concatenate(chunks).astype(np.float32, copy=False)
    # AAC encoders pad the last frame with silence that MP4 edit lists do not always hide; drop samples
    # past the duration the container lists, so a video's audio is exactly as long as the container says.
    listed_samples = round(listed_s * sample_rate)
    if listed_samples and 0 < pcm.size - listed_samples <= _TRUNCATION_SLACK_S * sample_rate:
        pcm = pcm[:listed_samples]
    # Float sources may exceed full scale, and downmixing can add a little headroom overshoot.
    np.clip(pcm, -1.0, 1.0, out=pcm)
    return np.ascontiguousarray(pcm)


def pcm16_from_float(samples: np.ndarray) -> np.ndarray:
    """Convert float samples in [-1, 1] to int16 PCM (values outside are clipped; 1.0 maps to 32767)."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.ascontiguousarray(np.rint(scaled).astype(np.int16))


def float_from_pcm16(samples: np.ndarray) -> np.ndarray:
    """Convert int16 PCM to float32 in [-1, 1] (divides by 32768, the convention of librosa and FFmpeg)."""
    array = np.asarray(samples)
    if array.dtype != np.int16:
        raise UsageError(f"expected int16 PCM samples, got dtype {array.dtype}; convert the buffer first.")
    return np.ascontiguousarray(array.astype(np.float32) / 32768.0)
