"""One contract suite over every registered model family (crop, masks, channel order, audio window, paste)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lipsync_tools.cli.output import ModelFamilyName
from lipsync_tools.errors import UsageError
from lipsync_tools.models.backends import IdentityNetwork, TorchBackend, create_backend
from lipsync_tools.models.families import MODEL_FAMILIES, family_names, get_family
from lipsync_tools.models.family import ModelFamily

FAMILIES = [MODEL_FAMILIES[name] for name in family_names()]
ids = [f.name for f in FAMILIES]


def crops_for(family: ModelFamily, b: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = family.crop_size
    return rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)


def test_registry_names_and_the_cli_choices_agree():
    assert {m.value for m in ModelFamilyName} == set(MODEL_FAMILIES)
    assert family_names()[0] == "wav2lip"


def test_unknown_family_is_refused_naming_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown model family 'wav2lip-288'.*synctalk2d-328"):
        get_family("wav2lip-288")


@pytest.mark.parametrize(
    ("name", "crop", "net", "mode", "audio"),
    [
        ("wav2lip", 96, 96, "mel", (1, 80, 16)),
        ("synctalk2d-328", 328, 320, "ave", (32, 16, 16)),
        ("synctalk2d-160", 168, 160, "ave", (32, 16, 16)),
        ("ultralight-160", 168, 160, "hubert", (16, 32, 32)),
    ],
)
def test_family_geometry_and_default_audio(name, crop, net, mode, audio):
    family = get_family(name)
    assert (family.crop_size, family.network_size) == (crop, net)
    assert family.audio_mode(None).name == mode
    assert family.audio_mode(None).network_shape == audio


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_visible_mask_is_the_reference_rectangle_or_lower_half(family):
    n = family.network_size
    mask = family.visible_mask()
    if family.hidden_rect is None:
        expected = np.ones((n, n), np.uint8)
        expected[n // 2 :] = 0
    else:
        # what the public inference scripts draw: cv2.rectangle(img, (x, y, w, h), black, -1)
        image = np.full((n, n, 3), 255, np.uint8)
        cv2.rectangle(image, family.hidden_rect, (0, 0, 0), -1)
        expected = (image[..., 0] > 0).astype(np.uint8)
    assert np.array_equal(mask, expected)
    # the package's masks/input is the same mask placed in the inner region of the crop
    full = family.input_mask()
    m = family.inner_margin
    assert full.shape == (family.crop_size, family.crop_size)
    assert np.array_equal(full[m : family.crop_size - m, m : family.crop_size - m], mask)
    assert full.sum() == mask.sum()


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_network_input_channel_order_and_masking(family):
    crops = crops_for(family)
    faces = family.network_input(crops)
    n, m = family.network_size, family.inner_margin
    assert faces.shape == (2, 6, n, n) and faces.dtype == np.float32
    inner = crops[:, m : m + n, m : m + n].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    ref, masked = (faces[:, :3], faces[:, 3:]) if family.reference_first else (faces[:, 3:], faces[:, :3])
    np.testing.assert_allclose(ref, inner, atol=1e-7)
    np.testing.assert_allclose(masked, inner * family.visible_mask(), atol=1e-7)
    assert (masked[:, :, family.visible_mask() == 0] == 0).all()


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_paste_replaces_exactly_the_inner_region(family):
    crops = crops_for(family)
    n, m, s = family.network_size, family.inner_margin, family.crop_size
    predicted = np.full((2, n, n, 3), 7, np.uint8)
    out = family.paste(crops, predicted)
    assert out.shape == crops.shape and out.flags.c_contiguous
    assert (out[:, m : m + n, m : m + n] == 7).all()
    border = np.ones((s, s), bool)
    border[m : m + n, m : m + n] = False
    assert np.array_equal(out[:, border], crops[:, border])


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_identity_network_gives_the_crops_back_through_the_backend(family):
    crops = crops_for(family)
    backend = TorchBackend(IdentityNetwork(family), family=family)
    audio = np.zeros((2, *family.audio_mode(None).network_shape), np.float32)
    assert np.array_equal(backend.infer(crops, audio), crops)


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_backend_refuses_wrong_crop_or_audio_shapes(family):
    backend = TorchBackend(IdentityNetwork(family), family=family)
    audio = np.zeros((2, *family.audio_mode(None).network_shape), np.float32)
    with pytest.raises(UsageError, match="crops must have shape"):
        backend.infer(np.zeros((2, 8, 8, 3), np.uint8), audio)
    with pytest.raises(UsageError, match="audio must have shape"):
        backend.infer(crops_for(family), np.zeros((2, 3), np.float32))


def reference_window(features: np.ndarray, index: int, half: int) -> np.ndarray:
    """SyncTalk_2D / Ultralight get_audio_features: rows [index-half, index+half), zero-padded."""
    left, right = index - half, index + half
    pad_left, pad_right = max(0, -left), max(0, right - features.shape[0])
    auds = torch.from_numpy(features[max(left, 0) : min(right, features.shape[0])])
    if pad_left:
        auds = torch.cat([torch.zeros_like(auds[:pad_left]), auds], dim=0)
    if pad_right:
        auds = torch.cat([auds, torch.zeros((pad_right, *auds.shape[1:]), dtype=auds.dtype)], dim=0)
    return auds.numpy()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.per_avatar], ids=lambda f: f.name)
@pytest.mark.parametrize("index", [0, 3, 10, 38, 39])
def test_audio_window_matches_the_reference_get_audio_features(family, index):
    for mode in family.audio_modes:
        rows = np.random.default_rng(index).standard_normal((40, *mode.row_shape)).astype(np.float32)
        ours = mode.window(rows, index)
        expected = reference_window(rows, index, mode.window_rows // 2).reshape(mode.network_shape)
        assert ours.shape == mode.network_shape
        assert np.array_equal(ours, expected)


def test_ave_window_is_sixteen_rows_around_the_frame():
    mode = get_family("synctalk2d-328").audio_mode("ave")
    assert (mode.window_rows, mode.first_offset) == (16, -8)
    ultra = get_family("ultralight-160").audio_mode("hubert")
    assert (ultra.window_rows, ultra.first_offset) == (8, -4)


def test_unknown_audio_mode_names_the_family_modes():
    with pytest.raises(
        UsageError, match="ultralight-160 family takes audio features hubert, wenet; got 'ave'"
    ):
        get_family("ultralight-160").audio_mode("ave")


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_onnx_backend_matches_torch_for_the_identity_network(family):
    crops = crops_for(family, b=3)
    audio = np.zeros((3, *family.audio_mode(None).network_shape), np.float32)
    onnx = create_backend("onnx", IdentityNetwork(family), family=family)
    assert np.array_equal(onnx.infer(crops, audio), crops)
