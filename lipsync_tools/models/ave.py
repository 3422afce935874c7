"""SyncTalk_2D's AVE audio encoder: one 512-d feature per video frame from its Wav2Lip mel window.

The encoder (``utils.AudioEncoder`` in SyncTalk_2D, weights ``model/checkpoints/audio_visual_encoder.pth``) is
architecturally Wav2Lip's audio encoder: the same 13 conv blocks with the same key names under
``audio_encoder.``, trained separately as the audio half of an audio-visual sync network. Its input is the
same normalised log-mel window Wav2Lip takes (:mod:`lipsync_tools.audio.mel`); SyncTalk_2D's ``ave`` UNets
take 16 consecutive outputs reshaped to ``(32, 16, 16)``.

The released file stores the keys *without* the ``audio_encoder.`` prefix (SyncTalk_2D adds it when loading);
:func:`load_ave_encoder` accepts both.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lipsync_tools.models.checkpoint import CheckpointSource, check_state_dict, read_state_dict, source_label
from lipsync_tools.models.layers import check_seed, random_init, uninitialised, wav2lip_audio_encoder
from lipsync_tools.models.wav2lip import MEL_BINS, MEL_STEPS

AVE_FEATURES = 512  # values per video frame
MEL_SHAPE = (1, MEL_BINS, MEL_STEPS)  # one mel window as the encoder takes it (without the batch axis)
_PREFIX = "audio_encoder."
_UNPREFIXED_KEY = re.compile(r"^\d+\.conv_block\.")  # the released file's keys: "0.conv_block.0.weight"


class AveEncoder(nn.Module):
    """Mel window ``(B, 1, 80, 16)`` -> AVE feature ``(B, 512)``; keys ``audio_encoder.{0..12}.conv_block.*``.

    Build it empty and fill it with :func:`load_ave_encoder` or :func:`random_ave_encoder`; call it in
    ``eval()`` mode.
    """

    architecture = "ave-encoder"

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = wav2lip_audio_encoder()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel`` float32 ``(B, 1, 80, 16)`` -> float32 ``(B, 512)`` (no normalisation: raw ReLU outputs)."""
        out: torch.Tensor = self.audio_encoder(mel)  # (B, 512, 1, 1)
        return out.reshape(mel.shape[0], AVE_FEATURES)


def load_ave_encoder(
    source: CheckpointSource,
    *,
    allow_pickle: bool = False,
    name: str | None = None,
) -> AveEncoder:
    """Build an :class:`AveEncoder` in eval mode from a checkpoint, checking every key and shape first.

    ``source`` is a path, ``.pth`` bytes or a loaded mapping, in any layout
    :func:`~lipsync_tools.models.checkpoint.read_state_dict` accepts; keys may carry the ``audio_encoder.``
    prefix or not (the released ``audio_visual_encoder.pth`` does not). ``name`` labels the source in errors.

    Raises :class:`InputNotFoundError` for a missing path and :class:`CheckpointError` for an unreadable file
    or a state dict that is not the AVE encoder's (missing, unexpected and mis-shaped keys listed, and the
    network named when it is recognisably another one).
    """
    label = name or source_label(source)
    state = read_state_dict(source, allow_pickle=allow_pickle, name=label)
    if state and all(_UNPREFIXED_KEY.match(key) for key in state):
        state = {_PREFIX + key: value for key, value in state.items()}
    model = uninitialised(AveEncoder)
    check_state_dict(model, state, label)
    model.load_state_dict(state, strict=True)
    return model.eval()


def random_ave_encoder(seed: int) -> AveEncoder:
    """An :class:`AveEncoder` in eval mode with deterministic random weights (bit-identical per ``seed``).

    Same recipe as :func:`~lipsync_tools.models.checkpoint.random_wav2lip`. Its features carry no speech
    information a trained UNet would understand; for demos, tests and benchmarks. Raises
    :class:`UsageError` for a bad ``seed``.
    """
    check_seed(seed)
    model = uninitialised(AveEncoder)
    random_init(model, seed)
    return model.eval()
