"""SyncTalk_2D's AVE audio encoder: its state dict, its two key layouts, and random weights."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync_tools.errors import CheckpointError, UsageError
from lipsync_tools.models import Wav2Lip
from lipsync_tools.models.ave import AveEncoder, load_ave_encoder, random_ave_encoder
from lipsync_tools.models.unet import UNet

STATE_DICTS = Path(__file__).parents[1] / "data" / "state-dicts"

# Verified against SyncTalk_2D 9e82dcc utils.AudioEncoder: with the same weights both give bit-identical
# outputs. 2,812,672 parameters, the same as Wav2Lip's audio encoder.
PUBLIC_PARAMETER_COUNT = 2_812_672


def read_reference(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``[(key, shape)]`` from a ``key<TAB>[d0, d1, ...]`` file of tests/data/state-dicts."""
    rows = []
    for line in (STATE_DICTS / name).read_text().splitlines():
        key, shape = line.split("\t")
        dims = shape.strip("[]")
        rows.append((key, tuple(int(d) for d in dims.split(", ")) if dims else ()))
    return rows


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def encoder() -> AveEncoder:
    return random_ave_encoder(0)


def released_layout(model: AveEncoder) -> dict[str, torch.Tensor]:
    """The keys as ``audio_visual_encoder.pth`` stores them: no ``audio_encoder.`` prefix."""
    return {k.removeprefix("audio_encoder."): v.clone() for k, v in model.state_dict().items()}


def test_state_dict_matches_public_model() -> None:
    model = AveEncoder()
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == read_reference(
        "synctalk2d-ave-audio-encoder.tsv"
    )
    assert sum(p.numel() for p in model.parameters()) == PUBLIC_PARAMETER_COUNT


def test_forward_shape(encoder: AveEncoder) -> None:
    mel = torch.from_numpy(np.random.default_rng(0).uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32))
    with torch.inference_mode():
        out = encoder(mel)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.std()) > 0.01  # ReLU outputs, not constant


def test_same_network_as_wav2lip_audio_encoder() -> None:
    wav2lip = Wav2Lip().eval()
    encoder = load_ave_encoder(
        {k: v for k, v in wav2lip.state_dict().items() if k.startswith("audio_encoder.")}
    )
    mel = torch.randn(2, 1, 80, 16)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(mel), wav2lip.audio_encoder(mel).flatten(1), rtol=0, atol=0)


def test_loads_released_layout_from_file(encoder: AveEncoder, tmp_path: Path) -> None:
    path = tmp_path / "audio_visual_encoder.pth"
    torch.save(released_layout(encoder), path)
    loaded = load_ave_encoder(path)
    assert not loaded.training
    assert digest(loaded) == digest(encoder)


@pytest.mark.parametrize("wrap", ["prefixed", "state_dict", "model", "module"])
def test_loads_other_layouts_from_bytes(encoder: AveEncoder, wrap: str) -> None:
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    checkpoint: dict[str, object] = {
        "prefixed": state,
        "state_dict": {"state_dict": released_layout(encoder), "epoch": 3},
        "model": {"model": state, "optimizer": {"state": {}, "param_groups": []}},
        "module": {f"module.{k}": v for k, v in released_layout(encoder).items()},
    }[wrap]
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    assert digest(load_ave_encoder(buffer.getvalue())) == digest(encoder)


def test_missing_key_is_reported(encoder: AveEncoder) -> None:
    state = released_layout(encoder)
    del state["12.conv_block.1.running_var"]
    with pytest.raises(CheckpointError) as info:
        load_ave_encoder(state, name="audio_visual_encoder.pth")
    assert str(info.value) == (
        "audio_visual_encoder.pth does not match the ave-encoder architecture (91 tensors expected); "
        "1 missing: audio_encoder.12.conv_block.1.running_var"
    )


def test_a_lip_sync_network_is_named() -> None:
    with torch.device("meta"):
        wav2lip_state = Wav2Lip().state_dict()
    with pytest.raises(CheckpointError) as info:
        load_ave_encoder(wav2lip_state, name="wav2lip.pth")
    assert str(info.value).startswith(
        "wav2lip.pth does not match the ave-encoder architecture (91 tensors expected); "
        "261 unexpected: face_encoder_blocks.0.0.conv_block.0.weight, "
    )
    assert str(info.value).endswith("this is a wav2lip lip-sync network checkpoint, not an audio encoder")

    with torch.device("meta"):
        unet_state = UNet(family="synctalk2d-160", audio_mode="ave").state_dict()
    with pytest.raises(
        CheckpointError, match=r"this is a synctalk2d-160 lip-sync network checkpoint, not an"
    ):
        load_ave_encoder(unet_state)


def test_random_weights_are_deterministic_and_pinned(encoder: AveEncoder) -> None:
    assert digest(random_ave_encoder(7)) == "7f306c4bc088bea5c78d4a40f620ad61f8ccc153119e2aefdef0ad633f7c02b8"
    assert digest(random_ave_encoder(0)) == digest(encoder)
    assert digest(random_ave_encoder(1)) != digest(encoder)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(UsageError, match=r"non-negative integer"):
        random_ave_encoder(seed)  # type: ignore[arg-type]
