"""The SyncTalk_2D / Ultralight UNet, pinned against the public definitions' state dicts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync_tools.errors import UsageError
from lipsync_tools.models.checkpoint import random_unet
from lipsync_tools.models.layers import random_init
from lipsync_tools.models.unet import AUDIO_FEATURE_SHAPES, UNET_FAMILIES, UNET_VARIANTS, UNet

STATE_DICTS = Path(__file__).parents[1] / "data" / "state-dicts"

# Verified against SyncTalk_2D 9e82dcc (unet_328.py, unet.py) and Ultralight-Digital-Human 8d82ced and b2dd34a
# (unet.py): the public classes were built beside ours for every (family, mode) below, loaded with our
# weights, and gave bit-identical outputs on random inputs.
REFERENCE_FILES = {
    ("synctalk2d-328", "ave"): "synctalk2d-unet328-ave.tsv",
    ("synctalk2d-328", "wenet"): "synctalk2d-unet328-wenet.tsv",
    ("synctalk2d-160", "ave"): "synctalk2d-unet160-ave.tsv",
    ("ultralight-160", "hubert"): "ultralight-unet-hubert-before-2026-05.tsv",
    ("ultralight-160", "wenet"): "ultralight-unet-wenet-before-2026-05.tsv",
}
# Trainable parameters: the first five are the public counts, the rest follow from the public code
# (SyncTalk_2D's hubert branch has the ave branch's weights; only a stride differs).
PARAMETER_COUNTS = {
    ("synctalk2d-328", "ave"): 12_186_935,
    ("synctalk2d-328", "wenet"): 12_986_871,
    ("synctalk2d-160", "ave"): 12_163_591,
    ("ultralight-160", "hubert"): 12_159_591,
    ("ultralight-160", "wenet"): 12_796_359,
    ("synctalk2d-328", "hubert"): 12_186_935,
    ("synctalk2d-160", "hubert"): 12_163_591,
    ("synctalk2d-160", "wenet"): 12_963_527,
}
# The reshapes of the public inference scripts: SyncTalk_2D takes 16 frames of features, Ultralight 8.
EXPECTED_AUDIO_SHAPES = {
    ("synctalk2d-328", "ave"): (32, 16, 16),
    ("synctalk2d-328", "hubert"): (32, 32, 32),
    ("synctalk2d-328", "wenet"): (256, 16, 32),
    ("synctalk2d-160", "ave"): (32, 16, 16),
    ("synctalk2d-160", "hubert"): (32, 32, 32),
    ("synctalk2d-160", "wenet"): (256, 16, 32),
    ("ultralight-160", "hubert"): (16, 32, 32),
    ("ultralight-160", "wenet"): (128, 16, 32),
}
# Digests of random_unet(family, mode, 0): the same bits on every machine (NumPy PCG64, not torch's RNG; the
# output centring is rounded to a coarse grid), whatever the number of threads.
RANDOM_DIGESTS = {
    ("synctalk2d-328", "ave"): "b5152afb1932604e91836f28eee21b2b23f9f8de4f572fc944b7ee120362d6a0",
    ("synctalk2d-160", "ave"): "d572b8d90855c90c19b9d746a4b259bfac666b0f87d02a3ce2bb203be086bd70",
    ("ultralight-160", "hubert"): "ef52ca132124a4483896e61d32c431ade08bf4a48f9c94ed945227a676516857",
    ("ultralight-160", "wenet"): "e3e68af2cae66fa639284e10de07cd2eed58ada98a016a6a69d694f1cdaf12dd",
}
# The networks run in the forward tests: both sizes and both kinds of audio branch (ave and hubert share a
# layout; synctalk2d-160 is ultralight-160 with SyncTalk_2D's audio branches).
RUN = [("synctalk2d-328", "ave"), ("ultralight-160", "hubert"), ("ultralight-160", "wenet")]
RUN_160 = RUN[1:]  # cheaper to run several times


def read_reference(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``[(key, shape)]`` from a ``key<TAB>[d0, d1, ...]`` file of tests/data/state-dicts."""
    rows = []
    for line in (STATE_DICTS / name).read_text().splitlines():
        key, shape = line.split("\t")
        dims = shape.strip("[]")
        rows.append((key, tuple(int(d) for d in dims.split(", ")) if dims else ()))
    return rows


def meta_unet(family: str, mode: str) -> UNet:
    """The network on the meta device: shapes without memory or initialisation cost."""
    with torch.device("meta"):
        return UNet(family=family, audio_mode=mode)


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def networks() -> dict[tuple[str, str], UNet]:
    """``random_unet(family, mode, 0)`` for each variant in :data:`RUN`; tests must not modify them."""
    return {(family, mode): random_unet(family, mode, 0) for family, mode in RUN}


def inputs(model: UNet, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-like image pair (smooth gradients plus noise; the masked copy black inside the public rectangle)
    and Gaussian audio features."""
    rng = np.random.default_rng(seed)
    n = model.input_size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    base = np.stack([0.3 + 0.4 * xx, 0.4 + 0.3 * yy, 0.6 - 0.2 * (xx + yy)])
    reference = np.clip(base[None] + rng.normal(0, 0.05, (batch, 3, n, n)), 0, 1)
    masked = reference.copy()
    masked[:, :, 5 : n - 10, 5 : n - 5] = (
        0  # cv2.rectangle((5, 5, n - 10, n - 15)): rows 5..n-11, cols 5..n-6
    )
    image = torch.from_numpy(np.concatenate([reference, masked], axis=1).astype(np.float32))
    audio = torch.from_numpy(rng.normal(0, 1, (batch, *model.audio_shape)).astype(np.float32))
    return image, audio


@pytest.mark.parametrize(("family", "mode"), list(REFERENCE_FILES))
def test_state_dict_keys_shapes_and_order_match_public_model(family: str, mode: str) -> None:
    state = meta_unet(family, mode).state_dict()
    assert [(key, tuple(t.shape)) for key, t in state.items()] == read_reference(
        REFERENCE_FILES[(family, mode)]
    )


@pytest.mark.parametrize(("family", "mode"), list(PARAMETER_COUNTS))
def test_parameter_counts(family: str, mode: str) -> None:
    model = meta_unet(family, mode)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PARAMETER_COUNTS[(family, mode)]


def test_tables() -> None:
    assert AUDIO_FEATURE_SHAPES == EXPECTED_AUDIO_SHAPES
    assert UNET_FAMILIES == {
        "synctalk2d-328": (328, ("ave", "hubert", "wenet"), "ave"),
        "synctalk2d-160": (160, ("ave", "hubert", "wenet"), "ave"),
        "ultralight-160": (160, ("hubert", "wenet"), "hubert"),
    }
    assert set(UNET_VARIANTS) == set(EXPECTED_AUDIO_SHAPES)
    v328 = UNET_VARIANTS[("synctalk2d-328", "ave")]
    assert (v328.size, v328.crop_size, v328.input_size) == (328, 328, 320)
    v160 = UNET_VARIANTS[("ultralight-160", "hubert")]
    assert (v160.size, v160.crop_size, v160.input_size) == (160, 168, 160)


@pytest.mark.parametrize(
    ("size", "mode", "family"),
    [
        (328, "ave", "synctalk2d-328"),
        (328, "hubert", "synctalk2d-328"),
        (328, "wenet", "synctalk2d-328"),
        (160, "ave", "synctalk2d-160"),
        (160, "hubert", "ultralight-160"),
        (160, "wenet", "ultralight-160"),
    ],
)
def test_size_picks_the_family(size: int, mode: str, family: str) -> None:
    model = meta_unet_by_size(size, mode)
    assert (model.family, model.audio_mode, model.size) == (family, mode, size)
    assert model.architecture == f"{family}-{mode}"
    assert model.display_name == f"{family} ({mode})"


def meta_unet_by_size(size: int, mode: str) -> UNet:
    with torch.device("meta"):
        return UNet(size=size, audio_mode=mode)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 256, "audio_mode": "ave"}, "UNet size must be 328 or 160, got 256"),
        (
            {"size": 328, "audio_mode": "mel"},
            "family synctalk2d-328 takes audio modes ave, hubert, wenet; got 'mel'",
        ),
        (
            {"family": "ultralight-160", "audio_mode": "ave"},
            "family ultralight-160 takes audio modes hubert, wenet; got 'ave'",
        ),
        (
            {"size": 328, "family": "synctalk2d-160", "audio_mode": "ave"},
            "family synctalk2d-160 has size 160, not 328",
        ),
        (
            {"family": "wav2lip", "audio_mode": "mel"},
            "unknown UNet family 'wav2lip'; known: synctalk2d-328, synctalk2d-160, ultralight-160",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        UNet(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(("family", "mode"), RUN)
def test_forward_shape_range_and_spread(
    networks: dict[tuple[str, str], UNet], family: str, mode: str
) -> None:
    model = networks[(family, mode)]
    image, audio = inputs(model, batch=1)
    with torch.inference_mode():
        out = model(image, audio)
    n = model.input_size
    assert out.shape == (1, 3, n, n) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Random weights must neither saturate the sigmoid nor give a flat image (random_unet centres the output
    # on a synthetic input; this input is a different one).
    inside = float(((out > 0.05) & (out < 0.95)).float().mean())
    assert inside > 0.95, inside
    assert 0.1 < float(out.std(dim=(2, 3)).min()) < 0.35  # spatial spread within every channel


@pytest.mark.parametrize(("family", "mode"), RUN_160)
def test_output_depends_on_image_and_audio(
    networks: dict[tuple[str, str], UNet], family: str, mode: str
) -> None:
    model = networks[(family, mode)]
    image, audio = inputs(model, batch=1)
    with torch.inference_mode():
        out = model(image, audio)
        other_audio = model(image, -audio)
        other_image = model(image.flip(-1), audio)
    assert float((out - other_audio).abs().max()) > 1e-3
    assert float((out - other_image).abs().max()) > 1e-3


def test_batch_items_are_independent(networks: dict[tuple[str, str], UNet]) -> None:
    model = networks[("ultralight-160", "hubert")]
    image, audio = inputs(model, batch=2)
    with torch.inference_mode():
        together = model(image, audio)
        alone = model(image[1:], audio[1:])
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)


def test_wrong_input_shapes_are_refused(networks: dict[tuple[str, str], UNet]) -> None:
    model = networks[("synctalk2d-328", "ave")]
    with pytest.raises(UsageError) as info:
        model(torch.zeros(1, 6, 328, 328), torch.zeros(1, 32, 16, 16))
    assert str(info.value) == (
        "synctalk2d-328 (ave) image input must have shape (B, 6, 320, 320), got (1, 6, 328, 328)"
    )
    with pytest.raises(UsageError) as info:
        model(torch.zeros(2, 6, 320, 320), torch.zeros(2, 32, 32, 32))
    assert str(info.value) == (
        "synctalk2d-328 (ave) audio input must have shape (B, 32, 16, 16) with B = 2 as for the image, "
        "got (2, 32, 32, 32)"
    )


@pytest.mark.parametrize(("family", "mode"), list(RANDOM_DIGESTS))
def test_random_weights_are_pinned(networks: dict[tuple[str, str], UNet], family: str, mode: str) -> None:
    # random_unet builds a 328 network in about a second (a float64 pass centres the output): reuse them.
    model = networks[(family, mode)] if (family, mode) in networks else random_unet(family, mode, 0)
    assert not model.training
    assert digest(model) == RANDOM_DIGESTS[(family, mode)]


def test_random_weights_are_deterministic_and_differ_across_seeds(
    networks: dict[tuple[str, str], UNet],
) -> None:
    a = networks[("ultralight-160", "hubert")].state_dict()
    assert digest(random_unet("ultralight-160", "hubert", 0)) == RANDOM_DIGESTS[("ultralight-160", "hubert")]
    b = random_unet("ultralight-160", "hubert", 1).state_dict()
    same = [k for k, v in a.items() if v.is_floating_point() and torch.equal(v, b[k])]
    assert same == []


def test_random_batch_norm_statistics(networks: dict[tuple[str, str], UNet]) -> None:
    state = networks[("ultralight-160", "hubert")].state_dict()
    var = state["inc.inconv.0.conv.1.running_var"]
    assert float(var.min()) >= 0.5 and float(var.max()) <= 1.5 and float(var.std()) > 0.1
    depthwise = state["down1.maxpool_conv.0.double_conv.0.conv.3.weight"]  # (64, 1, 3, 3): He bound sqrt(2/3)
    assert depthwise.shape == (64, 1, 3, 3)
    assert 0.6 < float(depthwise.abs().max()) <= float(np.sqrt(2.0 / 3.0))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("synctalk2d-328", "mel", 0), UsageError, "family synctalk2d-328 takes audio modes"),
        (("wav2lip", "mel", 0), UsageError, "use random_wav2lip for wav2lip"),
        (("nope", "ave", 0), UsageError, "unknown UNet family 'nope'"),
        (("synctalk2d-328", "ave", -1), UsageError, "non-negative integer"),
        (("synctalk2d-328", "ave", True), UsageError, "non-negative integer"),
    ],
)
def test_bad_random_unet_arguments(args: tuple[str, str, int], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        random_unet(*args)


class _Mixed(torch.nn.Module):
    """Every layer type random_init fills: 1-d and depthwise 2-d convolutions, a transposed convolution,
    batch norms with and without affine parameters, and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = torch.nn.Conv1d(4, 8, 3)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = torch.nn.BatchNorm2d(4)
        self.bn_plain = torch.nn.BatchNorm1d(8, affine=False)
        self.linear = torch.nn.Linear(8, 2)


def test_random_init_covers_generic_layers() -> None:
    a, b = _Mixed(), _Mixed()
    random_init(a, 3)
    random_init(b, 3)
    assert digest(a) == digest(b)
    assert float(a.depthwise.weight.abs().max()) <= float(np.sqrt(3.0 / 9))  # fan-in of a depthwise 3x3 is 9
    assert float(a.linear.weight.abs().max()) <= float(np.sqrt(3.0 / 8))
    assert float(a.bn_plain.running_var.min()) >= 0.5  # type: ignore[union-attr]


def test_random_init_refuses_unknown_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.LayerNorm(2))
    with pytest.raises(UsageError) as info:
        random_init(model, 0)
    assert str(info.value) == (
        "random_init only fills convolution, linear and batch-norm layers; Sequential has 2 other "
        "parameter(s), first '1.weight'"
    )
