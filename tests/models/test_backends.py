"""One contract suite over every inference backend, plus ONNX-specific export and cache checks."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.models import (
    BackendOptions,
    IdentityModel,
    InferenceBackend,
    Wav2Lip,
    create_backend,
    network_input_nhwc,
    onnx_backend,
    random_wav2lip,
)

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
) -> Iterator[InferenceBackend]:
    yield _build(request.param, random_model, onnx_cache)


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
