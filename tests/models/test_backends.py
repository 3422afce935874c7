"""One contract suite over every inference backend, plus ONNX-specific export and cache checks."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.models import (
    BackendOptions,
    IdentityModel,
    InferenceBackend,
    ModelFamily,
    Wav2Lip,
    create_backend,
    crops_with_prediction,
    family_names,
    get_family,
    network_input_nhwc,
    onnx_backend,
    random_wav2lip,
)
from lipsync_tools.models.family import pixels_from_prediction

KINDS = ["torch-eager", "torch-channels-last", "onnx"]


def _build(kind: str, model: Wav2Lip | IdentityModel, cache_dir: Path | None = None) -> InferenceBackend:
    if kind == "torch-eager":
        return create_backend("torch", model, BackendOptions(channels_last=False))
    if kind == "torch-channels-last":
        # channels_last converts parameters in place: give it its own copy of the shared model.
        return create_backend("torch", copy.deepcopy(model), BackendOptions(channels_last=True))
    return create_backend("onnx", model, BackendOptions(onnx_cache_dir=cache_dir))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def eager(random_model: Wav2Lip) -> InferenceBackend:
    return _build("torch-eager", random_model)


@pytest.fixture(scope="module", params=KINDS)
def backend(
    request: pytest.FixtureRequest, random_model: Wav2Lip, onnx_cache: Path
) -> InferenceBackend:
    return _build(request.param, random_model, onnx_cache)


def test_infer_contract(backend: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray]) -> None:
    crops, mels = batch8
    before = crops.copy()
    out = backend.infer(crops[:4], mels[:4])
    assert out.shape == (4, 96, 96, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert backend.crop_size == 96
    np.testing.assert_array_equal(crops, before)  # input is read, never written
    assert np.abs(out.astype(int) - crops[:4]).mean() > 5  # random weights do move pixels


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_eager_torch(
    backend: InferenceBackend, eager: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray], batch: int
) -> None:
    crops, mels = batch8[0][:batch], batch8[1][:batch]
    faces = network_input_nhwc(crops).transpose(0, 3, 1, 2)
    float_diff = np.abs(backend.run_network(faces, mels) - eager.run_network(faces, mels)).max()
    assert float_diff < 1e-4
    pixel_diff = np.abs(backend.infer(crops, mels).astype(int) - eager.infer(crops, mels)).max()
    assert pixel_diff <= 1


def test_batch_items_are_independent(
    backend: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray]
) -> None:
    crops, mels = batch8
    whole = backend.infer(crops, mels)
    one = backend.infer(crops[5:6], mels[5:6])
    assert np.abs(whole[5:6].astype(int) - one).max() <= 1


def test_audio_changes_the_output(backend: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray]) -> None:
    crops, mels = batch8
    a = backend.infer(crops[:1], mels[:1])
    b = backend.infer(crops[:1], mels[1:2])
    assert (a != b).any()


def test_non_contiguous_input(backend: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray]) -> None:
    crops, mels = batch8
    strided = crops[::2]  # a view, as a memory-mapped package array sliced by frame might be
    np.testing.assert_array_equal(backend.infer(strided, mels[:4]), backend.infer(strided.copy(), mels[:4]))


def test_rejects_bad_arrays(backend: InferenceBackend, batch8: tuple[np.ndarray, np.ndarray]) -> None:
    crops, mels = batch8
    with pytest.raises(UsageError) as info:
        backend.infer(crops.astype(np.float32), mels)
    assert (
        str(info.value)
        == "crops must be a uint8 (B, 96, 96, 3) array, got float32 array of shape (8, 96, 96, 3)"
    )
    with pytest.raises(UsageError) as info:
        backend.infer(crops[:, :64], mels)
    assert str(info.value) == (
        "crops must have shape (B, 96, 96, 3) for the wav2lip family with B >= 1, got (8, 64, 96, 3)"
    )
    with pytest.raises(UsageError) as info:
        backend.infer(crops, mels.astype(np.float64))
    assert (
        str(info.value)
        == "audio must be a float32 (8, 1, 80, 16) array, got float64 array of shape (8, 1, 80, 16)"
    )
    with pytest.raises(UsageError) as info:
        backend.infer(crops, mels[:3])
    assert str(info.value) == "audio must have shape (8, 1, 80, 16) to match 8 crops, got (3, 1, 80, 16)"


@pytest.mark.parametrize("kind", KINDS)
def test_identity_model_returns_the_crop(kind: str, batch8: tuple[np.ndarray, np.ndarray]) -> None:
    crops, mels = batch8
    np.testing.assert_array_equal(_build(kind, IdentityModel()).infer(crops, mels), crops)


def test_unknown_backend() -> None:
    with pytest.raises(UsageError) as info:
        create_backend("tensorrt", IdentityModel())
    assert str(info.value) == "unknown inference backend 'tensorrt'; expected one of: onnx, torch"


def test_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(BackendUnavailableError) as info:
        create_backend("onnx", IdentityModel())
    assert str(info.value) == (
        "the onnx backend needs onnxruntime, which is not installed: pip install onnxruntime "
        "(or use --backend torch)"
    )


def test_onnx_cache_is_reused(
    random_model: Wav2Lip,
    onnx_cache: Path,
    batch8: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _build("onnx", random_model, onnx_cache)  # the module's backend fixture may already have exported
    files = sorted(p.name for p in onnx_cache.iterdir())
    digest = onnx_backend.weights_digest(random_model)
    assert files == [f"wav2lip-wav2lip-1x80x16-{digest[:20]}.onnx"]  # family, architecture, audio shape

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the cache holds the file")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    cached = _build("onnx", random_model, onnx_cache)
    crops, mels = batch8
    assert cached.infer(crops[:2], mels[:2]).shape == (2, 96, 96, 3)


def test_weights_digest_depends_on_weights(random_model: Wav2Lip) -> None:
    assert onnx_backend.weights_digest(random_model) == onnx_backend.weights_digest(random_wav2lip(0))
    assert onnx_backend.weights_digest(random_model) != onnx_backend.weights_digest(random_wav2lip(1))


# -- the non-model floor: reused input buffers, predictions written in place (issue 12) ----------------------
def _old_network_input(family: ModelFamily, crops: np.ndarray) -> np.ndarray:
    """``ModelFamily.network_input`` before ``out`` existed, verbatim: what the new one must match."""
    s, m = family.crop_size, family.inner_margin
    inner = crops[:, m : s - m, m : s - m]
    b, n = inner.shape[0], family.network_size
    faces = np.empty((b, 6, n, n), np.float32)
    ref, masked = (slice(0, 3), slice(3, 6)) if family.reference_first else (slice(3, 6), slice(0, 3))
    np.multiply(inner.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=faces[:, ref], dtype=np.float32)
    np.multiply(faces[:, ref], family.visible_mask()[None, None].astype(np.float32), out=faces[:, masked])
    return faces


def _old_pixels(predicted: np.ndarray) -> np.ndarray:
    """``pixels_from_prediction`` before ``out`` existed, verbatim."""
    pixels = np.rint(predicted * np.float32(255.0))
    np.clip(pixels, 0.0, 255.0, out=pixels)
    return pixels.transpose(0, 2, 3, 1).astype(np.uint8, order="C")


def _random_crops(family: ModelFamily, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, family.crop_size, family.crop_size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", family_names())
def test_network_input_out_is_bit_identical(name: str) -> None:
    family = get_family(name)
    crops = _random_crops(family, 3, 0)
    crops[0] = 255  # the extremes too
    crops[1, :, :, 0] = 0
    expected = _old_network_input(family, crops)
    n = family.network_size
    assert _old_network_input(family, crops).tobytes() == expected.tobytes()
    assert family.network_input(crops).tobytes() == expected.tobytes()
    out = np.full((3, 6, n, n), np.nan, np.float32)  # stale contents must be overwritten everywhere
    assert family.network_input(crops, out=out) is out
    assert out.tobytes() == expected.tobytes()
    nhwc = np.full((3, n, n, 6), np.nan, np.float32)  # a channels_last buffer seen as NCHW
    family.network_input(crops, out=nhwc.transpose(0, 3, 1, 2))
    assert np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)).tobytes() == expected.tobytes()
    every_other = np.zeros((6, *crops.shape[1:]), np.uint8)
    every_other[::2] = crops  # a non-contiguous view of the same pixels, as a sliced memory map gives
    assert family.network_input(every_other[::2]).tobytes() == expected.tobytes()


def test_network_input_rejects_a_wrong_out() -> None:
    family = get_family("wav2lip")
    with pytest.raises(UsageError) as info:
        family.network_input(_random_crops(family, 2, 0), out=np.empty((2, 6, 96, 96), np.float64))
    assert str(info.value) == (
        "network_input's out must be a float32 (2, 6, 96, 96) array, got float64 array of shape "
        "(2, 6, 96, 96)"
    )


def test_pixels_from_prediction_out_is_bit_identical() -> None:
    rng = np.random.default_rng(3)
    predicted = rng.uniform(-0.2, 1.2, (4, 3, 16, 16)).astype(np.float32)  # beyond [0, 1]: clipped
    ties = (np.arange(16 * 16 * 3, dtype=np.float32) % 256 + np.float32(0.5)) / np.float32(255.0)
    predicted[0] = ties.reshape(3, 16, 16)  # k + 0.5 after scaling: round half to even
    predicted[1, 0, 0, :4] = [0.0, 1.0, -0.0, np.float32(0.5 / 255)]
    expected = _old_pixels(predicted)
    assert pixels_from_prediction(predicted).tobytes() == expected.tobytes()
    out = np.full((4, 16, 16, 3), 7, np.uint8)
    assert pixels_from_prediction(predicted, out=out) is out and out.tobytes() == expected.tobytes()
    nhwc = np.ascontiguousarray(predicted.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels last
    assert pixels_from_prediction(nhwc).tobytes() == expected.tobytes()
    region = np.zeros((4, 20, 20, 3), np.uint8)  # writing into the inner region of bigger crops
    pixels_from_prediction(predicted, out=region[:, 2:18, 2:18])
    assert np.ascontiguousarray(region[:, 2:18, 2:18]).tobytes() == expected.tobytes()
    assert not region[:, :2].any() and not region[:, 18:].any()
    with pytest.raises(UsageError, match=r"out must be a uint8 \(4, 16, 16, 3\) array, got uint8 array"):
        pixels_from_prediction(predicted, out=out[:2])


@pytest.mark.parametrize("name", family_names())
def test_crops_with_prediction_is_paste(name: str) -> None:
    family = get_family(name)
    crops = _random_crops(family, 2, 1)
    n = family.network_size
    predicted = np.random.default_rng(2).uniform(-0.1, 1.1, (2, 3, n, n)).astype(np.float32)
    out = crops_with_prediction(family, crops, predicted)
    expected = family.paste(crops, _old_pixels(predicted))
    assert out.flags.c_contiguous and out.tobytes() == expected.tobytes()
    assert out is not crops


@pytest.mark.parametrize("kind", KINDS)
def test_reused_buffers_across_batch_sizes(
    kind: str, random_model: Wav2Lip, onnx_cache: Path, batch8: tuple[np.ndarray, np.ndarray]
) -> None:
    backend = _build(kind, random_model, onnx_cache)
    crops, mels = batch8
    first = backend.infer(crops[:2], mels[:2])
    kept = first.copy()
    whole = backend.infer(crops, mels)  # grows the buffers
    again = backend.infer(crops[:2], mels[:2])  # reuses the bigger buffers
    np.testing.assert_array_equal(first, kept)  # a returned array is never reused
    np.testing.assert_array_equal(again, first)
    assert np.abs(whole[:2].astype(int) - first).max() <= 1
