"""Checkpoint layouts of every family, network detection, and the errors for checkpoints that do not fit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from lipsync_tools.errors import CheckpointError, UsageError
from lipsync_tools.models import Wav2Lip, extract_state_dict, load_wav2lip
from lipsync_tools.models.checkpoint import (
    NetworkKind,
    detect_network,
    load_unet,
    read_state_dict,
)
from lipsync_tools.models.layers import random_init, uninitialised
from lipsync_tools.models.unet import UNet

STATE_DICTS = Path(__file__).parents[1] / "data" / "state-dicts"


def reference_keys(name: str) -> list[str]:
    return [line.split("\t")[0] for line in (STATE_DICTS / name).read_text().splitlines()]


def meta_state(family: str, mode: str) -> dict[str, torch.Tensor]:
    """A state dict with the right keys and shapes and no data (detection and errors look at nothing else)."""
    with torch.device("meta"):
        return UNet(family=family, audio_mode=mode).state_dict()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def ultralight() -> UNet:
    """Random Ultralight weights (random_init only: random_unet's output centring is not needed here)."""
    net = uninitialised(lambda: UNet(family="ultralight-160", audio_mode="hubert"))
    random_init(net, 0)
    return net


def _optimizer_state(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """What ``optimizer.state_dict()`` of an Adam looks like: tensors, numbers, tuples, lists."""
    first = next(iter(state.values()))
    return {
        "state": {0: {"step": torch.tensor(12.0), "exp_avg": torch.zeros_like(first)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [0]}],
    }


def _ultralight_2026_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under Ultralight's 2026-05 key names (same order, so zip with the reference list)."""
    new_keys = reference_keys("ultralight-unet-hubert-from-2026-05.tsv")
    return dict(zip(new_keys, state.values(), strict=True))


LAYOUTS = ["plain", "state_dict", "model+optimizer", "module", "orig_mod", "2026-05", "2026-05-plain"]


def _layout(name: str, state: dict[str, torch.Tensor]) -> object:
    state = {k: v.clone() for k, v in state.items()}
    if name == "plain":  # SyncTalk_2D's and Ultralight's trainers until 2026-05: torch.save(net.state_dict())
        return state
    if name == "state_dict":
        return {"state_dict": state, "global_step": 10}
    if name == "model+optimizer":
        return {"epoch": 5, "model": state, "optimizer": _optimizer_state(state)}
    if name == "module":
        return {f"module.{k}": v for k, v in state.items()}
    if name == "orig_mod":
        return {f"_orig_mod.{k}": v for k, v in state.items()}
    if name == "2026-05":  # Ultralight's trainer since 2026-05
        return {"epoch": 200, "model": _ultralight_2026_names(state), "optimizer": _optimizer_state(state)}
    return _ultralight_2026_names(state)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_load_from_files(ultralight: UNet, layout: str, tmp_path: Path) -> None:
    path = tmp_path / "ultralight.pth"
    torch.save(_layout(layout, ultralight.state_dict()), path)
    assert list(read_state_dict(path)) == reference_keys("ultralight-unet-hubert-before-2026-05.tsv")
    model, kind = load_unet(path)
    assert kind == NetworkKind("ultralight-160", "hubert")
    assert not model.training
    assert_same_weights(model, ultralight)


def test_2026_names_map_to_the_original_names() -> None:
    old = reference_keys("ultralight-unet-hubert-before-2026-05.tsv")
    new = reference_keys("ultralight-unet-hubert-from-2026-05.tsv")
    assert sum(a != b for a, b in zip(old, new, strict=True)) == 162  # inc + down1..down4
    mapped = read_state_dict(_ultralight_2026_names(meta_state("ultralight-160", "hubert")))
    assert list(mapped) == old


def test_old_and_new_names_of_one_tensor_are_refused() -> None:
    state = {"inc.inconv.0.conv.0.weight": torch.zeros(1), "inc.inconv.conv.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        read_state_dict(state, name="mixed.pth")
    assert str(info.value) == (
        "mixed.pth: entries 'inc.inconv.conv.0.weight' and another both name the tensor "
        "'inc.inconv.0.conv.0.weight'"
    )


def test_synctalk2d_328_plain_file_and_its_ambiguous_mode(tmp_path: Path) -> None:
    net = uninitialised(lambda: UNet(family="synctalk2d-328", audio_mode="ave"))
    random_init(net, 1)  # random_unet would also centre the output: not needed here
    path = tmp_path / "50.pth"  # SyncTalk_2D names checkpoints by epoch
    torch.save(net.state_dict(), path)
    model, kind = load_unet(path, audio_mode="ave")
    assert kind == NetworkKind("synctalk2d-328", "ave")
    assert model.input_size == 320
    assert_same_weights(model, net)
    assert detect_network(read_state_dict(path)) == NetworkKind("synctalk2d-328", None)
    with pytest.raises(UsageError) as info:
        load_unet(path, name="50.pth")
    assert str(info.value) == (
        "50.pth is a synctalk2d-328 checkpoint whose shapes are the same for ave and hubert audio features: "
        "pass --audio-mode ave or --audio-mode hubert"
    )


def test_bytes_and_extract_state_dict(ultralight: UNet) -> None:
    buffer = io.BytesIO()
    torch.save(_layout("2026-05", ultralight.state_dict()), buffer)
    model, _ = load_unet(buffer.getvalue(), family="ultralight-160", audio_mode="hubert")
    assert_same_weights(model, ultralight)
    # extract_state_dict takes an already-loaded checkpoint, as before, and now Ultralight's layout too.
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert list(extract_state_dict(loaded)) == list(ultralight.state_dict())


DETECTED = [
    (("synctalk2d-328", "ave"), NetworkKind("synctalk2d-328", None)),
    (("synctalk2d-328", "hubert"), NetworkKind("synctalk2d-328", None)),
    (("synctalk2d-328", "wenet"), NetworkKind("synctalk2d-328", "wenet")),
    (("synctalk2d-160", "ave"), NetworkKind("synctalk2d-160", None)),
    (("synctalk2d-160", "hubert"), NetworkKind("synctalk2d-160", None)),
    (("synctalk2d-160", "wenet"), NetworkKind("synctalk2d-160", "wenet")),
    (("ultralight-160", "hubert"), NetworkKind("ultralight-160", "hubert")),
    (("ultralight-160", "wenet"), NetworkKind("ultralight-160", "wenet")),
]


@pytest.mark.parametrize(("variant", "expected"), DETECTED)
def test_detects_every_unet(variant: tuple[str, str], expected: NetworkKind) -> None:
    assert detect_network(meta_state(*variant)) == expected


def test_detects_wav2lip_and_ultralight_2026_names() -> None:
    with torch.device("meta"):
        assert detect_network(Wav2Lip().state_dict()) == NetworkKind("wav2lip", "mel")
    renamed = read_state_dict(_ultralight_2026_names(meta_state("ultralight-160", "wenet")))
    assert detect_network(renamed) == NetworkKind("ultralight-160", "wenet")


def test_160_ave_and_ultralight_hubert_differ_only_in_the_audio_input_layer() -> None:
    a, b = meta_state("synctalk2d-160", "ave"), meta_state("ultralight-160", "hubert")
    assert list(a) == list(b)
    differing = sorted(k for k in a if a[k].shape != b[k].shape)
    assert [k for k in differing if not k.startswith("audio_model.conv1.")] == []


def test_another_family_than_asked_is_named() -> None:
    state = meta_state("synctalk2d-160", "ave")
    with pytest.raises(CheckpointError) as info:
        load_unet(state, family="synctalk2d-328", name="May/50.pth")
    assert str(info.value) == (
        "May/50.pth is a synctalk2d-160 checkpoint, not synctalk2d-328: pass --family synctalk2d-160"
    )
    with pytest.raises(CheckpointError) as info:
        load_unet(meta_state("ultralight-160", "wenet"), audio_mode="hubert", name="u.pth")
    assert str(info.value) == (
        "u.pth is a ultralight-160 checkpoint for wenet audio features, not hubert: pass --audio-mode wenet"
    )
    with pytest.raises(CheckpointError) as info, torch.device("meta"):
        load_unet(Wav2Lip().state_dict(), name="wav2lip.pth")
    assert str(info.value) == "wav2lip.pth is a wav2lip checkpoint, not a UNet: pass --family wav2lip"


def test_wav2lip_loader_names_a_unet_checkpoint() -> None:
    with pytest.raises(CheckpointError) as info:
        load_wav2lip(meta_state("ultralight-160", "hubert"), name="50.pth")
    message = str(info.value)
    assert message.startswith(
        "50.pth does not match the wav2lip architecture (352 tensors expected); 352 missing"
    )
    assert message.endswith("this is a ultralight-160 checkpoint: pass --family ultralight-160")


def test_truncated_checkpoint_names_the_closest_network() -> None:
    state = dict(meta_state("synctalk2d-328", "wenet"))
    del state["outc.conv.bias"]
    state["up5.conv.double_conv.1.conv.6.weight"] = torch.zeros(16, 16, 1, 1, device="meta")
    with pytest.raises(CheckpointError) as info:
        detect_network(state, label="trained.pth")
    assert str(info.value) == (
        "trained.pth matches no known network (555 tensors); the closest is synctalk2d-328 (wenet) with 554 "
        "of its 556 tensors; 1 missing: outc.conv.bias; 1 wrong shape: up5.conv.double_conv.1.conv.6.weight "
        "(16, 16, 1, 1) (expected (16, 32, 1, 1))"
    )
    # With the family given, the differences are listed against that family's closest mode.
    with pytest.raises(CheckpointError) as info:
        load_unet(state, family="synctalk2d-328", name="trained.pth")
    assert str(info.value) == (
        "trained.pth does not match the synctalk2d-328 (wenet) architecture (556 tensors expected); "
        "1 missing: outc.conv.bias; 1 wrong shape: up5.conv.double_conv.1.conv.6.weight (16, 16, 1, 1) "
        "(expected (16, 32, 1, 1))"
    )


def test_foreign_checkpoint_names_the_closest_network() -> None:
    state = {
        "encoder.weight": torch.zeros(8, 3, 3, 3),
        "outc.conv.weight": torch.zeros(3, 32, 1, 1),
        "outc.conv.bias": torch.zeros(3),
    }
    with pytest.raises(CheckpointError) as info:
        load_unet(state, name="other.pth")
    assert str(info.value) == (
        "other.pth matches no known network (3 tensors); the closest is synctalk2d-160 (ave) with 2 of its "
        "484 tensors; 482 missing: audio_model.conv1.conv.0.weight, audio_model.conv1.conv.1.weight, "
        "audio_model.conv1.conv.1.bias, audio_model.conv1.conv.1.running_mean, "
        "audio_model.conv1.conv.1.running_var, ... and 477 more; 1 unexpected: encoder.weight"
    )


def test_unrelated_and_empty_checkpoints() -> None:
    state = {f"layer{i}.weight": torch.zeros(2, 2) for i in range(7)}
    with pytest.raises(CheckpointError) as info:
        detect_network(state, label="resnet.pth")
    assert str(info.value) == (
        "resnet.pth matches no known network: none of its 7 tensors has the key and shape of a tensor of "
        "wav2lip, synctalk2d-328, synctalk2d-160, ultralight-160 (layer0.weight, layer1.weight, "
        "layer2.weight, layer3.weight, layer4.weight, ...)"
    )
    with pytest.raises(CheckpointError) as info:
        load_unet({"model": {}, "epoch": 0})
    assert str(info.value) == "<dict> holds no tensors"


def test_ave_encoder_given_to_a_network_loader_is_named() -> None:
    with torch.device("meta"):
        encoder = Wav2Lip().audio_encoder.state_dict()  # the released audio_visual_encoder.pth layout
    with pytest.raises(CheckpointError, match=r"this looks like SyncTalk_2D's AVE audio encoder"):
        load_unet(encoder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"family": "wav2lip"},
            "load_unet loads the UNet families; load a wav2lip checkpoint with load_wav2lip",
        ),
        (
            {"family": "unet-256"},
            "unknown UNet family 'unet-256'; known: synctalk2d-328, synctalk2d-160, ultralight-160",
        ),
        (
            {"family": "ultralight-160", "audio_mode": "ave"},
            "family ultralight-160 takes audio modes hubert, wenet; got 'ave'",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_unet(meta_state("ultralight-160", "hubert"), **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_network_kind() -> None:
    assert str(NetworkKind("synctalk2d-328", None)) == "synctalk2d-328"
    assert str(NetworkKind("ultralight-160", "wenet")) == "ultralight-160 (wenet)"
    with pytest.raises(UsageError, match=r"unknown network family 'unet'"):
        NetworkKind("unet", None)
    with pytest.raises(UsageError, match=r"family wav2lip takes audio modes mel; got 'ave'"):
        NetworkKind("wav2lip", "ave")


def test_unreadable_bytes(ultralight: UNet) -> None:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}}, buffer)
    with pytest.raises(CheckpointError, match=r"^<bytes> is not a readable PyTorch checkpoint: "):
        load_unet(buffer.getvalue()[:200])
