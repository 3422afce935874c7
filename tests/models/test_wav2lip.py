"""The generator's architecture, pinned against the public Wav2Lip definition."""

from __future__ import annotations

import numpy as np
import torch

from lipsync_tools.models import IdentityModel, Wav2Lip

# Verified against Rudrabha/Wav2Lip models/wav2lip.py + models/conv.py (commit db7bc44a): a transcription of
# the public class was built beside ours, its state dict had the same 352 keys in the same order with the
# same shapes, and with the same weights both gave bit-identical outputs. 36,298,035 parameters.
PUBLIC_PARAMETER_COUNT = 36_298_035
PUBLIC_TENSOR_COUNT = 352  # parameters + BatchNorm buffers (running_mean, running_var, num_batches_tracked)
PUBLIC_SHAPES = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.1.0.conv_block.0.weight": (32, 16, 3, 3),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.3.conv_block.0.weight": (64, 32, 3, 3),
    "audio_encoder.12.conv_block.1.running_var": (512,),
    "face_decoder_blocks.0.0.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),  # ConvTranspose2d: (in, out, k, k)
    "face_decoder_blocks.3.0.conv_block.0.weight": (768, 384, 3, 3),
    "face_decoder_blocks.6.0.conv_block.0.weight": (160, 64, 3, 3),
    "face_decoder_blocks.6.2.conv_block.1.num_batches_tracked": (),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}


def test_parameter_count_and_tensor_count_match_public_model() -> None:
    model = Wav2Lip()
    assert sum(p.numel() for p in model.parameters()) == PUBLIC_PARAMETER_COUNT
    assert len(model.state_dict()) == PUBLIC_TENSOR_COUNT


def test_key_shapes_match_public_model() -> None:
    state = Wav2Lip().state_dict()
    for key, shape in PUBLIC_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_block_structure() -> None:
    model = Wav2Lip()
    assert [len(list(stage.children())) for stage in model.face_encoder_blocks] == [1, 3, 4, 3, 3, 2, 2]
    assert [len(list(stage.children())) for stage in model.face_decoder_blocks] == [1, 2, 3, 3, 3, 3, 3]
    audio_convs = [m for m in model.audio_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(audio_convs) == 13
    audio_strides = [conv.stride for conv in audio_convs]
    assert audio_strides[3] == (3, 1) and audio_strides[6] == (3, 3) and audio_strides[9] == (3, 2)


def test_output_shape_and_range(random_model: Wav2Lip) -> None:
    face = torch.rand(2, 6, 96, 96)
    mel = torch.randn(2, 1, 80, 16)
    with torch.inference_mode():
        out = random_model(mel, face)
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.05  # random weights must not give a flat image


def test_identity_model_returns_the_reference_crop() -> None:
    face = torch.rand(3, 6, 96, 96)
    out = IdentityModel()(torch.zeros(3, 1, 80, 16), face)
    assert out.shape == (3, 3, 96, 96)
    np.testing.assert_array_equal(out.numpy(), face[:, 3:].numpy())
