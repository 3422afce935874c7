"""Strict checkpoint loading and deterministic random weights."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync_tools.errors import CheckpointError, InputNotFoundError, UsageError
from lipsync_tools.models import Wav2Lip, load_wav2lip, random_wav2lip


def _public_layout(model: Wav2Lip) -> dict[str, object]:
    """A checkpoint laid out like wav2lip.pth: DataParallel prefixes, optimizer state beside the weights."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "global_step": 1000}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_loads_public_layout_from_file(random_model: Wav2Lip, tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    torch.save(_public_layout(random_model), path)
    loaded = load_wav2lip(path)
    assert not loaded.training
    _assert_same_weights(loaded, random_model)


def test_loads_legacy_non_zip_format(random_model: Wav2Lip, tmp_path: Path) -> None:
    # The public checkpoints predate PyTorch 1.6's zip format: a raw pickle stream.
    path = tmp_path / "wav2lip_gan.pth"
    checkpoint = _public_layout(random_model)
    checkpoint["optimizer"] = {
        "state": {0: {"step": 3}},
        "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999)}],
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    _assert_same_weights(load_wav2lip(path), random_model)


def test_loads_from_bytes_and_from_dict(random_model: Wav2Lip) -> None:
    buffer = io.BytesIO()
    torch.save(_public_layout(random_model), buffer)
    _assert_same_weights(load_wav2lip(buffer.getvalue()), random_model)
    _assert_same_weights(load_wav2lip(random_model.state_dict()), random_model)  # bare, no prefix


def test_missing_key_is_reported() -> None:
    state = Wav2Lip().state_dict()
    del state["output_block.1.bias"]
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(state)
    assert str(info.value) == (
        "<dict> does not match the wav2lip architecture (352 tensors expected); "
        "1 missing: output_block.1.bias"
    )


def test_unexpected_key_is_reported() -> None:
    state = Wav2Lip().state_dict()
    state["module.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(state, name="finetune.pth")
    assert str(info.value) == (
        "finetune.pth does not match the wav2lip architecture (352 tensors expected); "
        "1 unexpected: extra_head.weight"
    )


def test_wrong_shape_is_reported() -> None:
    state = Wav2Lip().state_dict()
    state["output_block.1.weight"] = torch.zeros(3, 64, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(state)
    assert str(info.value) == (
        "<dict> does not match the wav2lip architecture (352 tensors expected); "
        "1 wrong shape: output_block.1.weight (3, 64, 1, 1) (expected (3, 32, 1, 1))"
    )


def test_syncnet_checkpoint_is_named_and_lists_are_truncated() -> None:
    syncnet_like = {f"face_encoder.{i}.conv_block.0.weight": torch.zeros(32, 15, 3, 3) for i in range(7)}
    with pytest.raises(CheckpointError) as info:
        load_wav2lip({"state_dict": syncnet_like}, name="lipsync_expert.pth")
    assert str(info.value) == (
        "lipsync_expert.pth does not match the wav2lip architecture (352 tensors expected); "
        "352 missing: face_encoder_blocks.0.0.conv_block.0.weight, "
        "face_encoder_blocks.0.0.conv_block.0.bias, "
        "face_encoder_blocks.0.0.conv_block.1.weight, face_encoder_blocks.0.0.conv_block.1.bias, "
        "face_encoder_blocks.0.0.conv_block.1.running_mean, ... and 347 more; "
        "7 unexpected: face_encoder.0.conv_block.0.weight, face_encoder.1.conv_block.0.weight, "
        "face_encoder.2.conv_block.0.weight, face_encoder.3.conv_block.0.weight, "
        "face_encoder.4.conv_block.0.weight, ... and 2 more; "
        "this looks like a SyncNet (lip-sync expert) checkpoint; "
        "use the generator checkpoint wav2lip.pth or wav2lip_gan.pth"
    )


def test_missing_file_and_garbage_bytes(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"does not exist"):
        load_wav2lip(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(b"not a checkpoint at all")
    assert str(info.value) == (
        "<bytes> is not a PyTorch checkpoint: it starts with b'not ', "
        "expected a zip archive or a pickle stream as written by torch.save"
    )


def test_truncated_file(random_model: Wav2Lip) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer)
    with pytest.raises(CheckpointError, match=r"^<bytes> is not a readable PyTorch checkpoint: Pytorch"):
        load_wav2lip(buffer.getvalue()[:300])


def test_arbitrary_pickles_need_allow_pickle(random_model: Wav2Lip) -> None:
    checkpoint = {"state_dict": random_model.state_dict(), "config": Path("x")}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(buffer.getvalue())
    assert str(info.value).startswith(
        "<bytes> holds pickled objects other than tensors and plain containers (WeightsUnpickler error: "
    )
    assert str(info.value).endswith(
        "weights_only loading refuses them. Re-save it as {'state_dict': model.state_dict()} or, "
        "for a file you trust, pass allow_pickle=True"
    )
    _assert_same_weights(load_wav2lip(buffer.getvalue(), allow_pickle=True), random_model)


def test_non_tensor_entries_are_refused() -> None:
    with pytest.raises(CheckpointError) as info:
        load_wav2lip({"epoch": 3})
    assert str(info.value) == (
        "<dict>: entry 'epoch' is a int, expected a tensor; "
        "is this a training checkpoint without a 'state_dict' entry?"
    )


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return h.hexdigest()


def test_random_weights_are_deterministic_and_pinned(random_model: Wav2Lip) -> None:
    # Golden values: the same seed gives the same bits on every machine (NumPy PCG64, not torch's RNG).
    weight = random_model.state_dict()["face_encoder_blocks.0.0.conv_block.0.weight"].flatten()[:3]
    assert [float(v).hex() for v in weight] == [
        "0x1.4091900000000p-5",
        "-0x1.0d6a520000000p-4",
        "-0x1.0c98980000000p-3",
    ]
    assert _digest(random_wav2lip(7)) == "cae5bb1181920d5a0381de1519da2dc4d72776437de8ea9c10a9168b453bbd8f"
    _assert_same_weights(random_wav2lip(0), random_model)


def test_random_weights_differ_across_seeds(random_model: Wav2Lip) -> None:
    other = random_wav2lip(1).state_dict()
    differing = [
        k
        for k, v in random_model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, other[k])
    ]
    assert len(differing) == sum(1 for v in other.values() if v.is_floating_point())


def test_running_stats_are_randomised(random_model: Wav2Lip) -> None:
    var = random_model.state_dict()["audio_encoder.0.conv_block.1.running_var"]
    assert float(var.min()) >= 0.5 and float(var.max()) <= 1.5 and float(var.std()) > 0.1


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(UsageError, match=r"non-negative integer"):
        random_wav2lip(seed)  # type: ignore[arg-type]
