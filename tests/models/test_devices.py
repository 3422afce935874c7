"""Device parsing, provider lists and every refusal of a device or precision, on a machine without a GPU.

CUDA is never really used here (CI has no GPU): availability is monkeypatched (``torch.cuda.is_available``,
``onnxruntime.get_available_providers``, ``onnxruntime.InferenceSession``). scripts/gpu-check.sh runs the
real GPU paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime
import pytest
import torch

from lipsync_tools.errors import BackendUnavailableError, UsageError
from lipsync_tools.models import (
    BackendOptions,
    CalibrationSet,
    Device,
    IdentityModel,
    create_backend,
    onnx_providers,
    parse_device,
    torch_device,
)

CPU_ORT = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("text", "kind", "index", "shown"),
    [
        ("cpu", "cpu", 0, "cpu"),
        ("CPU", "cpu", 0, "cpu"),
        ("cuda", "cuda", 0, "cuda:0"),
        ("cuda:0", "cuda", 0, "cuda:0"),
        (" cuda:3 ", "cuda", 3, "cuda:3"),
    ],
)
def test_parse_device(text: str, kind: str, index: int, shown: str) -> None:
    device = parse_device(text)
    assert device == Device(kind=kind, index=index)
    assert str(device) == shown
    assert device.is_cuda == (kind == "cuda")


@pytest.mark.parametrize("text", ["gpu", "cpu:1", "cuda:-1", "cuda:", "cuda:x", "", "mps"])
def test_parse_device_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_device(text)
    assert str(info.value) == (
        f"unknown device {text!r}; expected cpu, cuda or cuda:N (N the GPU's index, cuda = cuda:0)"
    )


def test_onnx_providers_cpu() -> None:
    assert onnx_providers(parse_device("cpu"), GPU_ORT) == ["CPUExecutionProvider"]
    assert onnx_providers(parse_device("cpu"), CPU_ORT) == ["CPUExecutionProvider"]


def test_onnx_providers_cuda_without_tensorrt() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(parse_device("cuda:1"), available) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_providers_cuda_with_tensorrt(tmp_path: Path, precision: str) -> None:
    providers = onnx_providers(parse_device("cuda"), GPU_ORT, precision=precision, cache_dir=tmp_path)
    cache = str(tmp_path / "tensorrt")
    assert providers == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": 0,
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
            },
        ),
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    # Without a cache folder TensorRT builds its engine in memory every start.
    bare = onnx_providers(parse_device("cuda"), GPU_ORT, precision=precision)
    assert bare[0] == ("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": precision == "fp16"})


def test_onnx_providers_without_cuda_provider() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        onnx_providers(parse_device("cuda"), CPU_ORT)
    assert str(info.value) == (
        "--device cuda:0 with the onnx backend needs ONNX Runtime's CUDAExecutionProvider, but the installed "
        "onnxruntime offers only AzureExecutionProvider, CPUExecutionProvider: install onnxruntime-gpu in "
        "place of onnxruntime: pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps "
        "onnxruntime-gpu; or use --backend torch with a CUDA build of torch, or --device cpu"
    )


def test_torch_device_cpu() -> None:
    assert torch_device(parse_device("cpu")) == torch.device("cpu")


def test_torch_device_cpu_only_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailableError) as info:
        torch_device(parse_device("cuda"))
    assert str(info.value) == (
        f"--device cuda:0 needs CUDA, but the installed torch {torch.__version__} is a CPU-only build; "
        "install a CUDA build of torch (pip install torch --index-url "
        "https://download.pytorch.org/whl/cu126, matching your driver) or use --device cpu"
    )


def test_torch_device_cuda_build_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with pytest.raises(BackendUnavailableError, match=r"\(built for CUDA 12\.6\) finds no usable GPU"):
        torch_device(parse_device("cuda:0"))


def test_torch_device_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BackendUnavailableError) as info:
        torch_device(parse_device("cuda:3"))
    assert str(info.value) == (
        "--device cuda:3 asks for GPU 3, but torch sees 1 GPU(s) (cuda:0 to cuda:0); pick one of those, or "
        "check CUDA_VISIBLE_DEVICES"
    )
    assert torch_device(parse_device("cuda")) == torch.device("cuda", 0)


# -- options ----------------------------------------------------------------------------------------------
def test_options_defaults() -> None:
    options = BackendOptions()
    assert (options.precision, options.device, options.calibration) == ("fp32", "cpu", None)


def test_options_reject_fp16_on_cpu() -> None:
    with pytest.raises(UsageError) as info:
        BackendOptions(precision="fp16")
    assert str(info.value) == "fp16 runs on GPUs (--device cuda); on CPU use --precision int8 or fp32"
    BackendOptions(precision="fp16", device="cuda")  # valid until a backend finds no GPU


def test_options_reject_unknown_precision_and_device() -> None:
    with pytest.raises(UsageError) as info:
        BackendOptions(precision="bf16")
    assert str(info.value) == "unknown precision 'bf16'; expected one of: fp32, int8, fp16"
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        BackendOptions(device="gpu")


def _calibration() -> CalibrationSet:
    rng = np.random.default_rng(0)
    return CalibrationSet(
        faces=rng.random((2, 6, 96, 96), dtype=np.float32),
        audio=rng.standard_normal((2, 1, 80, 16), dtype=np.float32),
    )


def test_torch_refuses_int8() -> None:
    options = BackendOptions(precision="int8", calibration=_calibration())
    with pytest.raises(UsageError) as info:
        create_backend("torch", IdentityModel(), options)
    assert str(info.value) == "int8 runs on ONNX Runtime: use --backend onnx (the default)"


def test_torch_on_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"^--device cuda:0 needs CUDA, but the installed"):
        create_backend("torch", IdentityModel(), BackendOptions(device="cuda"))
    with pytest.raises(BackendUnavailableError, match=r"^--device cuda:0 needs CUDA"):
        create_backend("torch", IdentityModel(), BackendOptions(device="cuda", precision="fp16"))


def test_onnx_on_cuda_with_the_cpu_build_of_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CPU_ORT))
    with pytest.raises(BackendUnavailableError, match=r"onnxruntime: pip uninstall -y onnxruntime &&"):
        create_backend("onnx", IdentityModel(), BackendOptions(device="cuda"))


def test_onnx_int8_on_cuda_needs_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_only = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: cuda_only)
    options = BackendOptions(device="cuda", precision="int8", calibration=_calibration())
    with pytest.raises(BackendUnavailableError) as info:
        create_backend("onnx", IdentityModel(), options)
    assert str(info.value).startswith(
        "--precision int8 on --device cuda:0 runs on TensorRT, which ONNX Runtime cannot use (onnxruntime "
        "offers no TensorrtExecutionProvider); its CUDA provider would run the int8 model in float32"
    )


class _CpuPretendingCuda:
    """A real CPU session that reports the providers asked for: the CUDA code path (IO binding, host output
    buffer) then runs on the CPU. ``fail`` lists providers whose presence makes construction fail, as
    TensorRT does when onnxruntime-gpu lists it but its libraries are missing."""

    fail: ClassVar[tuple[str, ...]] = ()
    calls: ClassVar[list[list[str]]] = []

    def __init__(self, source: Any, options: Any, providers: list[Any], **kwargs: Any) -> None:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        type(self).calls.append(names)
        assert kwargs == {"enable_fallback": 0}  # never a silent fallback to the CPU
        for name in self.fail:
            if name in names:
                raise RuntimeError(f"{name}: libnvinfer.so.10: cannot open shared object file\nmore detail")
        self._real = _REAL_SESSION(source, options, providers=["CPUExecutionProvider"])
        self._names = names

    def get_providers(self) -> list[str]:
        return list(self._names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_REAL_SESSION = onnxruntime.InferenceSession


@pytest.fixture
def pretend_gpu(monkeypatch: pytest.MonkeyPatch) -> type[_CpuPretendingCuda]:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_ORT))
    monkeypatch.setattr(onnxruntime, "InferenceSession", _CpuPretendingCuda)
    monkeypatch.setattr(_CpuPretendingCuda, "fail", ())
    monkeypatch.setattr(_CpuPretendingCuda, "calls", [])
    return _CpuPretendingCuda


def test_onnx_cuda_path_runs_with_io_binding(
    pretend_gpu: type[_CpuPretendingCuda], batch8: tuple[np.ndarray, np.ndarray]
) -> None:
    crops, mels = batch8
    cpu = create_backend("onnx", IdentityModel())
    cuda = create_backend("onnx", IdentityModel(), BackendOptions(device="cuda"))
    assert cuda.providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert cuda.tensorrt_error is None
    np.testing.assert_array_equal(cuda.infer(crops, mels), crops)
    np.testing.assert_array_equal(cuda.infer(crops[:3], mels[:3]), cpu.infer(crops[:3], mels[:3]))
    faces = np.random.default_rng(0).random((2, 6, 96, 96), dtype=np.float32)
    first = cuda.run_network(faces, mels[:2])
    second = cuda.run_network(faces[::-1].copy(), mels[:2])
    np.testing.assert_array_equal(first, faces[:, 3:])  # not overwritten by the second call's buffer
    np.testing.assert_array_equal(second, faces[::-1, 3:])


def test_onnx_cuda_drops_tensorrt_that_cannot_start(pretend_gpu: type[_CpuPretendingCuda]) -> None:
    pretend_gpu.fail = ("TensorrtExecutionProvider",)
    backend = create_backend("onnx", IdentityModel(), BackendOptions(device="cuda:0"))
    assert backend.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert backend.tensorrt_error == (
        "TensorrtExecutionProvider: libnvinfer.so.10: cannot open shared object file"
    )
    assert pretend_gpu.calls == [GPU_ORT, ["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_onnx_cuda_that_cannot_start(pretend_gpu: type[_CpuPretendingCuda]) -> None:
    pretend_gpu.fail = ("CUDAExecutionProvider",)
    with pytest.raises(BackendUnavailableError) as info:
        create_backend("onnx", IdentityModel(), BackendOptions(device="cuda:0"))
    assert str(info.value) == (
        "ONNX Runtime could not start its CUDA provider on cuda:0: CUDAExecutionProvider: libnvinfer.so.10: "
        "cannot open shared object file; check that the onnxruntime-gpu build matches your CUDA and cuDNN "
        "(see onnxruntime.ai's CUDA requirements) and that the GPU exists, or use --device cpu"
    )
