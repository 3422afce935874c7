"""int8 quantization and fp16 conversion (models/quantize.py) and the onnx backend's int8 path.

Fast tests use a tiny network with SyncTalk_2D-160's interface (two convolutions and an audio projection):
quantizing it takes well under a second, and it exercises the same calibration, caching and QDQ path as the
real families. The real families (seconds to a minute each) are in the ``slow`` tests at the end.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import skimage.data
import torch
from onnxruntime import quantization
from torch import nn

from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.models import (
    INT8_MIN_PSNR_DB,
    QUANT_REVISION,
    BackendOptions,
    CalibrationSet,
    ModelFamily,
    cached_float16,
    create_backend,
    get_family,
    psnr,
    quantize_int8,
    random_network,
)
from lipsync_tools.models import quantize as quantize_module
from lipsync_tools.models.onnx_backend import cached_onnx
from lipsync_tools.models.quantize import SubPixelConvTranspose, conv_transpose_as_conv

FAMILY = get_family("synctalk2d-160")


class TinyNet(nn.Module):
    """A small network with the UNet families' call (``forward(image, audio)``) and AVE audio."""

    architecture = "tiny"
    audio_mode = "ave"

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same weights every time, without touching the global generator
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(6, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 3, 3, padding=1)
            self.audio = nn.Linear(32 * 16 * 16, 16)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        a = self.audio(audio.flatten(1))[:, :, None, None]
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(image) + 0.1 * a)))


class TinyUpNet(TinyNet):
    """:class:`TinyNet` with a stride-2 convolution down and a ``ConvTranspose2d`` + ``BatchNorm2d`` back up,
    as Wav2Lip's decoder blocks are built."""

    architecture = "tiny-up"

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.down = nn.Conv2d(16, 16, 3, 2, 1)
            self.up = nn.Sequential(nn.ConvTranspose2d(16, 16, 3, 2, 1, 1), nn.BatchNorm2d(16))
            self.up[1].running_mean.uniform_(-0.1, 0.1)
            self.up[1].running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        a = self.audio(audio.flatten(1))[:, :, None, None]
        x = torch.relu(self.conv1(image) + 0.1 * a)
        x = x + torch.relu(self.up(torch.relu(self.down(x))))
        return torch.sigmoid(self.conv2(x))


def face_crops(family: ModelFamily, count: int, seed: int) -> np.ndarray:
    """``count`` uint8 BGR crops of a real face (scikit-image's astronaut), each shifted by a few pixels."""
    image = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])
    rng = np.random.default_rng(seed)
    side = 300
    crops = []
    for _ in range(count):
        dx, dy = rng.integers(-8, 9, 2)
        crop = image[30 + dy : 30 + dy + side, 110 + dx : 110 + dx + side]
        crops.append(cv2.resize(crop, (family.crop_size, family.crop_size), interpolation=cv2.INTER_AREA))
    return np.stack(crops)


def audio_windows(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """Normal features scaled like AVE rows (|x| mostly < 3) or mel windows ([-4, 4])."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((count, *shape)) * 1.5, -4, 4).astype(np.float32)


def calibration_for(family: ModelFamily, shape: tuple[int, ...], count: int = 8) -> CalibrationSet:
    return CalibrationSet.from_crops(family, face_crops(family, count, 1), audio_windows(shape, count, 2))


@pytest.fixture(scope="module")
def tiny_calibration() -> CalibrationSet:
    return calibration_for(FAMILY, (32, 16, 16))


# -- psnr ---------------------------------------------------------------------------------------------------
def test_psnr() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[...] = 1  # MSE 1
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2))
    b[0] = 255  # symmetric, and differences do not wrap around in uint8
    assert psnr(a, b) == psnr(b, a)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / ((255**2 + 1) / 2)))


def test_psnr_rejects() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(UsageError) as info:
        psnr(a, a[:1])
    assert str(info.value) == (
        "psnr compares two uint8 arrays of one shape, got uint8 array of shape (2, 4, 4, 3) and uint8 array "
        "of shape (1, 4, 4, 3)"
    )
    with pytest.raises(UsageError, match="float32 array"):
        psnr(a, a.astype(np.float32))


# -- calibration set ---------------------------------------------------------------------------------------
def test_calibration_set_rejects() -> None:
    faces = np.zeros((2, 6, 8, 8), np.float32)
    audio = np.zeros((2, 3), np.float32)
    with pytest.raises(UsageError) as info:
        CalibrationSet(faces=faces.astype(np.float64), audio=audio)
    assert str(info.value) == (
        "calibration faces must be a float32 (N, 6, n, n) array, got float64 array of shape (2, 6, 8, 8)"
    )
    with pytest.raises(UsageError, match=r"shape \(N, 6, n, n\) with N >= 1, got \(2, 3, 8, 8\)"):
        CalibrationSet(faces=faces[:, :3], audio=audio)
    with pytest.raises(UsageError) as info:
        CalibrationSet(faces=faces, audio=audio[:1])
    assert str(info.value) == (
        "calibration audio must have one window per face: 2 faces, 1 audio windows"
    )


def test_calibration_digest() -> None:
    rng = np.random.default_rng(0)
    faces = rng.random((3, 6, 8, 8), dtype=np.float32)
    audio = rng.random((3, 2, 4), dtype=np.float32)
    one = CalibrationSet(faces=faces, audio=audio)
    assert one.digest() == CalibrationSet(faces=faces.copy(), audio=audio.copy()).digest()
    changed = faces.copy()
    changed[2, 5, 7, 7] += 1e-6
    assert CalibrationSet(faces=changed, audio=audio).digest() != one.digest()
    # Same bytes, other shape: another set.
    assert CalibrationSet(faces=faces, audio=audio.reshape(3, 4, 2)).digest() != one.digest()


def test_from_crops_spreads_and_fits_the_family() -> None:
    crops = face_crops(FAMILY, 10, 0)
    audio = audio_windows((32, 16, 16), 10, 0)
    calibration = CalibrationSet.from_crops(FAMILY, crops, audio, size=4)
    assert len(calibration) == 4
    picked = [0, 3, 6, 9]  # evenly spaced, both ends included
    np.testing.assert_array_equal(calibration.faces, FAMILY.network_input(crops[picked]))
    np.testing.assert_array_equal(calibration.audio, audio[picked])
    calibration.check_for(FAMILY, (32, 16, 16))
    with pytest.raises(UsageError) as info:
        calibration.check_for(get_family("synctalk2d-328"), (32, 16, 16))
    assert str(info.value) == (
        "the calibration faces have shape (6, 160, 160) per item; the synctalk2d-328 network takes "
        "(6, 320, 320): build the set from this family's crops"
    )
    with pytest.raises(UsageError, match=r"audio has shape \(32, 16, 16\) per item; this network takes"):
        calibration.check_for(FAMILY, (16, 32, 32))


# -- int8 ----------------------------------------------------------------------------------------------------
def test_quantize_int8_is_cached(
    tmp_path: Path, tiny_calibration: CalibrationSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = cached_onnx(TinyNet(), tmp_path, FAMILY)
    path = quantize_int8(fp32, tiny_calibration, tmp_path)
    digest = tiny_calibration.digest()[:16]
    assert path == tmp_path / f"{fp32.stem}-int8-minmax-{digest}-q{QUANT_REVISION}.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fp32.name, path.name])  # no temporaries left
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    zero_points = [t for t in model.graph.initializer if t.name.endswith("_zero_point")]
    assert {onnx.TensorProto.UINT8, onnx.TensorProto.INT8} <= {t.data_type for t in zero_points}
    mtime = path.stat().st_mtime_ns

    def no_quantization(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantized again although the cache holds the file")

    monkeypatch.setattr(quantization, "quantize_static", no_quantization)
    assert quantize_int8(fp32, tiny_calibration, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_quantize_int8_for_tensorrt_is_symmetric(tmp_path: Path, tiny_calibration: CalibrationSet) -> None:
    fp32 = cached_onnx(TinyNet(), tmp_path, FAMILY)
    path = quantize_int8(fp32, tiny_calibration, tmp_path, for_tensorrt=True)
    assert "-int8trt-" in path.name
    model = onnx.load(str(path))
    zero_points = [t for t in model.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and {t.data_type for t in zero_points} == {onnx.TensorProto.INT8}
    assert all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)  # TensorRT needs zero point 0


def test_quantize_int8_rejects_unknown_method(tmp_path: Path, tiny_calibration: CalibrationSet) -> None:
    with pytest.raises(UsageError) as info:
        quantize_int8(tmp_path / "model.onnx", tiny_calibration, tmp_path, method="kl")
    assert str(info.value) == "unknown calibration method 'kl'; expected one of: minmax, percentile, entropy"


def test_onnx_int8_backend(tmp_path: Path, tiny_calibration: CalibrationSet) -> None:
    options = BackendOptions(precision="int8", calibration=tiny_calibration, onnx_cache_dir=tmp_path)
    int8 = create_backend("onnx", TinyNet(), options, FAMILY)
    fp32 = create_backend("onnx", TinyNet(), BackendOptions(onnx_cache_dir=tmp_path), FAMILY)
    assert (int8.precision, fp32.precision) == ("int8", "fp32")
    assert int8.model_path is not None and "-int8-minmax-" in int8.model_path.name
    assert fp32.model_path is not None and int8.model_path.name.startswith(fp32.model_path.stem)
    crops = face_crops(FAMILY, 4, 99)  # held out: other shifts than the calibration's
    audio = audio_windows((32, 16, 16), 4, 98)
    before = crops.copy()
    out = int8.infer(crops, audio)
    assert out.shape == crops.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(crops, before)
    np.testing.assert_array_equal(out[:, :4], crops[:, :4])  # outside the inner region: the crop itself
    assert psnr(fp32.infer(crops, audio), out) >= INT8_MIN_PSNR_DB
    raw = int8.run_network(FAMILY.network_input(crops), audio)
    assert raw.shape == (4, 3, 160, 160) and raw.dtype == np.float32


def test_onnx_int8_rewrites_conv_transpose(tmp_path: Path, tiny_calibration: CalibrationSet) -> None:
    options = BackendOptions(precision="int8", calibration=tiny_calibration, onnx_cache_dir=tmp_path)
    int8 = create_backend("onnx", TinyUpNet(), options, FAMILY)
    assert int8.model_path is not None
    ops = {node.op_type for node in onnx.load(str(int8.model_path)).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops and "BatchNormalization" not in ops
    fp32 = create_backend("onnx", TinyUpNet(), BackendOptions(onnx_cache_dir=tmp_path), FAMILY)
    assert fp32.model_path is not None
    assert "ConvTranspose" in {node.op_type for node in onnx.load(str(fp32.model_path)).graph.node}
    crops, audio = face_crops(FAMILY, 4, 99), audio_windows((32, 16, 16), 4, 98)
    assert psnr(fp32.infer(crops, audio), int8.infer(crops, audio)) >= INT8_MIN_PSNR_DB


def test_onnx_int8_without_cache_dir(tiny_calibration: CalibrationSet) -> None:
    options = BackendOptions(precision="int8", calibration=tiny_calibration)
    backend = create_backend("onnx", TinyNet(), options, FAMILY)
    assert backend.model_path is None  # quantized in a temporary folder, run from memory
    crops = face_crops(FAMILY, 2, 5)
    assert backend.infer(crops, audio_windows((32, 16, 16), 2, 5)).shape == crops.shape


def test_onnx_int8_needs_a_fitting_calibration(tiny_calibration: CalibrationSet) -> None:
    with pytest.raises(UsageError) as info:
        create_backend("onnx", TinyNet(), BackendOptions(precision="int8"), FAMILY)
    assert str(info.value) == (
        "--precision int8 needs a calibration set made from the package's own crops and audio features "
        "(BackendOptions(calibration=CalibrationSet.from_crops(family, crops, audio)); the engine builds it "
        "when it loads a package); without one use --precision fp32"
    )
    wav2lip = get_family("wav2lip")
    options = BackendOptions(precision="int8", calibration=tiny_calibration)
    with pytest.raises(UsageError, match=r"the wav2lip network takes \(6, 96, 96\)"):
        create_backend("onnx", random_network(wav2lip, None, 0).module, options, wav2lip)


def test_calibration_is_ignored_for_fp32(tmp_path: Path, tiny_calibration: CalibrationSet) -> None:
    options = BackendOptions(calibration=tiny_calibration, onnx_cache_dir=tmp_path)
    backend = create_backend("onnx", TinyNet(), options, FAMILY)
    assert backend.precision == "fp32" and backend.model_path == cached_onnx(TinyNet(), tmp_path, FAMILY)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "s", "p", "op", "side"),
    [
        (16, 8, 3, 1, 0, 0, 1),  # Wav2Lip's first decoder layer: 1x1 -> 3x3
        (16, 8, 3, 2, 1, 1, 5),  # the others: 2x upsampling
        (8, 4, 4, 2, 1, 0, 5),
        (8, 4, 3, 2, 0, 0, 4),
        (4, 4, 2, 3, 2, 1, 4),  # padding larger than a phase needs: the input is cropped
    ],
)
def test_sub_pixel_conv_transpose(cin: int, cout: int, k: int, s: int, p: int, op: int, side: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv = nn.ConvTranspose2d(cin, cout, k, s, p, op).eval()
        norm = nn.BatchNorm2d(cout).eval()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
        x = torch.randn(2, cin, side, side)
    with torch.inference_mode():
        expected = norm(conv(x))
        got = SubPixelConvTranspose(conv, norm)(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5
        np.testing.assert_allclose(SubPixelConvTranspose(conv)(x).numpy(), conv(x).numpy(), atol=1e-5)


def test_conv_transpose_as_conv_keeps_wav2lip(random_model: nn.Module) -> None:
    rewritten = conv_transpose_as_conv(random_model)
    kinds = {type(m).__name__ for m in rewritten.modules()}
    assert "ConvTranspose2d" not in kinds and "SubPixelConvTranspose" in kinds
    assert any(isinstance(m, nn.ConvTranspose2d) for m in random_model.modules())  # the original is kept
    rng = np.random.default_rng(0)
    faces = torch.from_numpy(rng.random((2, 6, 96, 96), dtype=np.float32))
    mels = torch.from_numpy(rng.uniform(-4, 4, (2, 1, 80, 16)).astype(np.float32))
    with torch.inference_mode():
        difference = (rewritten(mels, faces) - random_model(mels, faces)).abs().max()
    assert float(difference) < 1e-4


# -- fp16 ----------------------------------------------------------------------------------------------------
def test_cached_float16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = cached_onnx(TinyNet(), tmp_path, FAMILY)
    path = cached_float16(fp32)
    assert path == fp32.with_name(f"{fp32.stem}-fp16-h1.onnx")
    model = onnx.load(str(path))
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [float32, float32]  # keep_io_types
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [float32]
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights.values()
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(quantize_module, "_float16_converter", lambda: pytest.fail("converted again"))
    assert cached_float16(fp32) == path and path.stat().st_mtime_ns == mtime


def test_float16_without_a_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = cached_onnx(TinyNet(), tmp_path, FAMILY)
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(BackendUnavailableError) as info:
        cached_float16(fp32)
    assert str(info.value) == (
        "--precision fp16 with the onnx backend converts the model with onnxruntime.transformers (part of "
        "onnxruntime-gpu) or onnxconverter-common, and neither is importable: pip install "
        "'lipsync-tools[gpu]' (or pip install onnxconverter-common), or use --backend torch"
    )


# -- the real families (random weights) ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("name", "floor_db"), [("wav2lip", 38.0), ("synctalk2d-328", 23.0)])
def test_int8_real_family(tmp_path: Path, name: str, floor_db: float) -> None:
    """int8 of a real family's network against its fp32 model on held-out frames. Random weights: the floors
    (measured 42 and 25 dB) guard against regressions, they are not quality claims; docs/models.md explains
    why the random UNet-328 stays under INT8_MIN_PSNR_DB."""
    family = get_family(name)
    network = random_network(family, None, 0)
    shape = network.audio_mode.network_shape
    calibration = calibration_for(family, shape, count=16)
    options = BackendOptions(precision="int8", calibration=calibration, onnx_cache_dir=tmp_path)
    int8 = create_backend("onnx", network.module, options, family)
    fp32 = create_backend("onnx", network.module, BackendOptions(onnx_cache_dir=tmp_path), family)
    crops, audio = face_crops(family, 8, 77), audio_windows(shape, 8, 78)
    assert psnr(fp32.infer(crops, audio), int8.infer(crops, audio)) >= floor_db
