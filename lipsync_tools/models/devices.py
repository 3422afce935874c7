"""Where a network runs: ``--device cpu | cuda | cuda:N``, checked against what torch and ONNX Runtime offer.

Nothing here needs a GPU to import or to test: availability is asked of ``torch.cuda`` and of the list
``onnxruntime.get_available_providers()`` returns, and every refusal is a
:class:`~lipsync_tools.errors.BackendUnavailableError` that says what was found and how to fix it.

``scripts/gpu-check.sh`` runs the GPU paths on a machine that has one; CI never does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lipsync_tools.errors import BackendUnavailableError, UsageError

DEVICE_KINDS = ("cpu", "cuda")
PRECISIONS = ("fp32", "int8", "fp16")

# Both wheels install the same module, onnxruntime, so the GPU one must replace the CPU one, not join it (pip
# cannot make an extra remove a dependency: see the gpu extra in pyproject.toml).
ORT_GPU_FIX = (
    "install onnxruntime-gpu in place of onnxruntime: pip uninstall -y onnxruntime && "
    "pip install --force-reinstall --no-deps onnxruntime-gpu"
)
TORCH_GPU_FIX = (
    "install a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu126, "
    "matching your driver) or use --device cpu"
)

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d{1,3}))?$")


@dataclass(frozen=True, kw_only=True)
class Device:
    """A parsed ``--device``: ``kind`` ``"cpu"`` or ``"cuda"``; ``index`` the GPU ordinal (0 for ``cpu``)."""

    kind: str
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(text: str) -> Device:
    """``"cpu"`` -> CPU; ``"cuda"`` -> ``cuda:0``; ``"cuda:N"`` -> GPU ``N`` (as torch and CUDA number them,
    after ``CUDA_VISIBLE_DEVICES``). Case and surrounding spaces are ignored.

    Raises :class:`UsageError` for anything else (``"gpu"``, ``"cpu:1"``, ``"cuda:-1"``).
    """
    match = _DEVICE.match(text.strip().lower()) if isinstance(text, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise UsageError(
            f"unknown device {text!r}; expected cpu, cuda or cuda:N (N the GPU's index, cuda = cuda:0)"
        )
    kind, index = match.group(1), match.group(2)
    return Device(kind=kind, index=int(index) if index is not None else 0)


def torch_device(device: Device) -> torch.device:
    """The ``torch.device`` for ``device``, after checking that torch can use it.

    Raises :class:`BackendUnavailableError` when the installed torch is a CPU-only build, finds no GPU, or
    has fewer GPUs than ``device.index + 1``.
    """
    if not device.is_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built_for = torch.version.cuda
        if built_for is None:
            found = f"the installed torch {torch.__version__} is a CPU-only build"
        else:
            found = (
                f"the installed torch {torch.__version__} (built for CUDA {built_for}) finds no usable GPU "
                "(no NVIDIA driver, a driver too old for that CUDA, or CUDA_VISIBLE_DEVICES hides them)"
            )
        raise BackendUnavailableError(f"--device {device} needs CUDA, but {found}; {TORCH_GPU_FIX}")
    count = torch.cuda.device_count()
    if device.index >= count:
        raise BackendUnavailableError(
            f"--device {device} asks for GPU {device.index}, but torch sees {count} GPU(s) "
            f"(cuda:0 to cuda:{count - 1}); pick one of those, or check CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", device.index)


ProviderList = list[str | tuple[str, dict[str, Any]]]


def onnx_providers(
    device: Device,
    available: list[str] | tuple[str, ...],
    *,
    precision: str = "fp32",
    cache_dir: Path | None = None,
) -> ProviderList:
    """The ``providers=`` list for ``onnxruntime.InferenceSession`` on ``device``, best first.

    ``available`` is ``onnxruntime.get_available_providers()``. CPU: ``["CPUExecutionProvider"]``. CUDA:
    ``TensorrtExecutionProvider`` when offered (``device_id``; ``trt_fp16_enable`` for ``precision="fp16"``;
    an int8 model carries its own Q/DQ scales, which TensorRT uses as they are; engines cached in
    ``cache_dir/tensorrt`` when ``cache_dir`` is given, since building one takes seconds to minutes), then
    ``CUDAExecutionProvider`` (``device_id``), then ``CPUExecutionProvider`` for any node the GPU providers
    do not take. TensorRT builds an engine for the input shapes it meets and rebuilds it when a batch
    larger than any before arrives, so warm up at the largest batch first.

    Raises :class:`BackendUnavailableError` when ``device`` is CUDA and ``CUDAExecutionProvider`` is not
    offered (the CPU build of onnxruntime is installed).
    """
    if not device.is_cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"--device {device} with the onnx backend needs ONNX Runtime's CUDAExecutionProvider, but the "
            f"installed onnxruntime offers only {', '.join(available) or 'no providers'}: {ORT_GPU_FIX}; "
            "or use --backend torch with a CUDA build of torch, or --device cpu"
        )
    providers: ProviderList = []
    if "TensorrtExecutionProvider" in available:
        trt: dict[str, Any] = {"device_id": device.index, "trt_fp16_enable": precision == "fp16"}
        if cache_dir is not None:
            trt["trt_engine_cache_enable"] = True
            trt["trt_engine_cache_path"] = str(cache_dir / "tensorrt")
            trt["trt_timing_cache_enable"] = True
            trt["trt_timing_cache_path"] = str(cache_dir / "tensorrt")
        providers.append(("TensorrtExecutionProvider", trt))
    providers.append(("CUDAExecutionProvider", {"device_id": device.index}))
    providers.append("CPUExecutionProvider")
    return providers


def check_precision(precision: str, device: Device) -> None:
    """Raise :class:`UsageError` for an unknown precision or one the device cannot run (fp16 on CPU)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    if precision == "fp16" and not device.is_cuda:
        raise UsageError("fp16 runs on GPUs (--device cuda); on CPU use --precision int8 or fp32")

