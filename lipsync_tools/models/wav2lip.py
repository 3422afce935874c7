"""The Wav2Lip generator, parameter-for-parameter compatible with the public checkpoints.

The layer tables below (the audio encoder's, shared with SyncTalk_2D's AVE encoder, lives in
:mod:`lipsync_tools.models.layers`) reproduce the generator of the public Wav2Lip release (Prajwal et al.,
ACM MM 2020; ``models/wav2lip.py`` and ``models/conv.py`` of github.com/Rudrabha/Wav2Lip) so that
``wav2lip.pth`` and ``wav2lip_gan.pth`` load with strict key and shape checks. Module attribute names
(``face_encoder_blocks``, ``audio_encoder``, ``face_decoder_blocks``, ``output_block``, ``conv_block``) are
part of that contract: they *are* the state-dict keys, so they must not be renamed.

Tensor contract of :meth:`Wav2Lip.forward`:

* ``mel``: float32 ``(B, 1, 80, 16)``: 80 mel bins by 16 mel steps (0.2 s of audio at 80 steps/s).
* ``face``: float32 ``(B, 6, 96, 96)`` in ``[0, 1]``: channels 0-2 are the target crop with its lower half
  (rows 48..95) zeroed, channels 3-5 the unmasked reference crop; both BGR, as Wav2Lip's OpenCV pipeline
  produced them during training.
* returns float32 ``(B, 3, 96, 96)`` in ``[0, 1]`` (sigmoid output), BGR.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync_tools.models.layers import (
    ConvBlock,
    ConvSpec,
    ConvTransposeBlock,
    ConvTransposeSpec,
    build_block,
    wav2lip_audio_encoder,
)

__all__ = [
    "CROP_SIZE",
    "FACE_CHANNELS",
    "MEL_BINS",
    "MEL_STEPS",
    "ConvBlock",
    "ConvTransposeBlock",
    "IdentityModel",
    "Wav2Lip",
]

CROP_SIZE = 96  # side of the square face crop the public checkpoints were trained on
MEL_BINS = 80
MEL_STEPS = 16  # mel frames per video frame window (0.2 s at 80 mel frames per second)
FACE_CHANNELS = 6  # masked target (3) + reference (3)

_C = ConvSpec  # short names keep the tables below readable
_T = ConvTransposeSpec


# The public generator as data. Spatial sizes in the comments are for a 96x96 face and an 80x16 mel.
# Encoder stage i's output is concatenated onto decoder stage (6 - i)'s output (a U-Net), which is why the
# decoder's input channels are the sum of the previous decoder output and the matching encoder output.
_FACE_ENCODER: tuple[tuple[_C, ...], ...] = (
    (_C(6, 16, 7, 1, 3),),  # 96x96
    (_C(16, 32, 3, 2, 1), _C(32, 32, 3, 1, 1, True), _C(32, 32, 3, 1, 1, True)),  # 48x48
    (_C(32, 64, 3, 2, 1), *[_C(64, 64, 3, 1, 1, True)] * 3),  # 24x24
    (_C(64, 128, 3, 2, 1), *[_C(128, 128, 3, 1, 1, True)] * 2),  # 12x12
    (_C(128, 256, 3, 2, 1), *[_C(256, 256, 3, 1, 1, True)] * 2),  # 6x6
    (_C(256, 512, 3, 2, 1), _C(512, 512, 3, 1, 1, True)),  # 3x3
    (_C(512, 512, 3, 1, 0), _C(512, 512, 1, 1, 0)),  # 1x1
)

_FACE_DECODER: tuple[tuple[_C | _T, ...], ...] = (
    (_C(512, 512, 1, 1, 0),),  # 1x1, then + face 512 -> 1024
    (_T(1024, 512, 3, 1, 0), _C(512, 512, 3, 1, 1, True)),  # 3x3, + 512 -> 1024
    (_T(1024, 512, 3, 2, 1, 1), *[_C(512, 512, 3, 1, 1, True)] * 2),  # 6x6, + 256 -> 768
    (_T(768, 384, 3, 2, 1, 1), *[_C(384, 384, 3, 1, 1, True)] * 2),  # 12x12, + 128 -> 512
    (_T(512, 256, 3, 2, 1, 1), *[_C(256, 256, 3, 1, 1, True)] * 2),  # 24x24, + 64 -> 320
    (_T(320, 128, 3, 2, 1, 1), *[_C(128, 128, 3, 1, 1, True)] * 2),  # 48x48, + 32 -> 160
    (_T(160, 64, 3, 2, 1, 1), *[_C(64, 64, 3, 1, 1, True)] * 2),  # 96x96, + 16 -> 80
)


class Wav2Lip(nn.Module):
    """The Wav2Lip generator (96x96 faces), state-dict compatible with ``wav2lip.pth``/``wav2lip_gan.pth``.

    Build it empty and fill it with :func:`lipsync_tools.models.load_wav2lip` (real weights) or
    :func:`lipsync_tools.models.random_wav2lip` (deterministic random weights that move pixels but do not
    lip-sync). Call it in ``eval()`` mode: the batch norms must use their stored running statistics.
    """

    architecture = "wav2lip"
    crop_size = CROP_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            nn.Sequential(*(build_block(r) for r in stage)) for stage in _FACE_ENCODER
        )
        self.audio_encoder = wav2lip_audio_encoder()
        self.face_decoder_blocks = nn.ModuleList(
            nn.Sequential(*(build_block(r) for r in stage)) for stage in _FACE_DECODER
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Generate mouth crops.

        ``mel`` float32 ``(B, 1, 80, 16)``; ``face`` float32 ``(B, 6, 96, 96)`` in ``[0, 1]`` (masked target
        BGR, then reference BGR). Returns float32 ``(B, 3, 96, 96)`` BGR in ``[0, 1]``. The argument order
        (audio first) follows the public model so ported scripts read the same. Only 4-D batches are
        accepted; the public model's 5-D ``(B, T, ...)`` training layout is not needed for inference.
        """
        x = self.audio_encoder(mel)  # (B, 512, 1, 1)
        skips: list[torch.Tensor] = []
        f = face
        for stage in self.face_encoder_blocks:
            f = stage(f)
            skips.append(f)
        for stage in self.face_decoder_blocks:
            x = torch.cat((stage(x), skips.pop()), dim=1)
        out: torch.Tensor = self.output_block(x)
        return out


class IdentityModel(nn.Module):
    """A stand-in generator that returns the unmasked reference crop (the input's last 3 channels).

    Compositing tests use it: whatever the engine does around the model must give back the source frame.
    Same call contract as :class:`Wav2Lip`; it has no parameters.
    """

    architecture = "identity"
    crop_size = CROP_SIZE

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Return ``face[:, 3:6]``: float32 ``(B, 3, 96, 96)``; ``mel`` is ignored."""
        return face[:, 3:6]
