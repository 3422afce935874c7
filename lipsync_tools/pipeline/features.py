"""Audio features stage: the package's PCM, its Wav2Lip mel spectrogram and the frame -> window mapping."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..audio.mel import MelOptions, mel_window_starts, wav2lip_mel
from ..media.audio import pcm16_from_float
from ..package.manifest import AudioMeta
from ..package.spec import AUDIO_SAMPLE_RATE, MEL_WINDOW


@dataclass(frozen=True)
class AudioFeatures:
    pcm: np.ndarray  # int16 (A,) 16 kHz mono
    mel: np.ndarray  # float32 (80, T)
    mel_index: np.ndarray  # int32 (N,) first mel column of each frame's window


def audio_features(
    pcm: np.ndarray, fps: float, n_frames: int, sample_rate: int, window: int
) -> AudioFeatures:
    """Features for ``n_frames`` video frames at ``fps`` from float32 mono ``pcm``.

    Audio shorter than the video (plus one window) is padded with silence, so every frame has a full,
    real window; the mouth then rests on the padded frames instead of the build failing.
    """
    needed = int(np.ceil((n_frames / fps + window / MelOptions().frames_per_second) * sample_rate))
    if pcm.shape[0] < needed:
        pcm = np.concatenate([pcm, np.zeros(needed - pcm.shape[0], np.float32)])
    pcm16 = pcm16_from_float(pcm)
    mel = wav2lip_mel(pcm)
    return AudioFeatures(pcm=pcm16, mel=mel, mel_index=mel_window_starts(n_frames, fps, mel.shape[1], window))


def audio_meta(features: AudioFeatures) -> AudioMeta:
    """The manifest's ``audio`` section for ``features`` (the Wav2Lip mel numbers, recorded exactly)."""
    mel_opts = MelOptions()
    return AudioMeta(
        sample_rate=AUDIO_SAMPLE_RATE,
        samples=int(features.pcm.shape[0]),
        mel_bands=int(features.mel.shape[0]),
        mel_columns=int(features.mel.shape[1]),
        mel_window=MEL_WINDOW,
        mel_hop_seconds=mel_opts.hop_length / AUDIO_SAMPLE_RATE,
        mel_params={
            k: float(v)
            for k, v in asdict(mel_opts).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
    )
