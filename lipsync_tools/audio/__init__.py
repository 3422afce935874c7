"""Audio features: the Wav2Lip mel spectrogram and the video-frame -> mel-window mapping.

Used by both the build pipeline and the engine, so it sits below both and imports only ``errors``.
"""

from lipsync_tools.audio.mel import (
    MEL_WINDOW_FRAMES,
    MelOptions,
    mel_filterbank,
    mel_from_pcm_window,
    mel_window,
    mel_window_starts,
    pcm_window_samples,
    wav2lip_mel,
)

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
