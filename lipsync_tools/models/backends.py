"""Inference backends: one array contract, several runtimes (PyTorch, ONNX Runtime).

The contract the engine relies on (:class:`InferenceBackend`):

``infer(crops, mels) -> crops_out``
    * ``crops``: uint8 ``(B, S, S, 3)`` BGR face crops at the model size ``S = crop_size`` (96), exactly as
      the package stores them (C-contiguous or not; it is read, never written).
    * ``mels``: float32 ``(B, 1, 80, 16)`` mel windows (Wav2Lip's normalised log-mel, one per crop).
    * returns a new C-contiguous uint8 ``(B, S, S, 3)`` BGR array: the generated crops, rounded to nearest.

The backend builds the network input itself: each crop, with its lower half (rows ``S//2`` and below)
zeroed, stacked with the unmasked crop as the reference, scaled to ``[0, 1]``: the same input Wav2Lip's
own inference script builds. Wav2Lip truncates the ``[0, 255]`` output to uint8; we round, which is closer
to the network's output and keeps backends within one grey level of each other.

``run_network(faces, mels)`` exposes the float network call (``(B, 6, S, S)`` float32 in, ``(B, 3, S, S)``
float32 in ``[0, 1]`` out) for tests and tools that build their own input.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from lipsync_tools.errors import UsageError
from lipsync_tools.models.wav2lip import MEL_BINS, MEL_STEPS

# name -> "module:Class", imported only when chosen (ONNX Runtime is heavy and optional).
BACKENDS: dict[str, str] = {
    "torch": "lipsync_tools.models.backends:TorchBackend",
    "onnx": "lipsync_tools.models.onnx_backend:OnnxBackend",
}
DEFAULT_BACKEND = "onnx"  # measured faster on CPU at batch 1, 4 and 8: see docs/models.md


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """Options for :func:`create_backend`; each backend reads the ones that concern it.

    ``num_threads``: intra-op threads (``None`` leaves the runtime's default). For PyTorch this is a
    process-wide setting (``torch.set_num_threads``); for ONNX Runtime it is per session.
    ``channels_last``: PyTorch only; run convolutions in NHWC memory format (the model's parameters are
    converted in place).
    ``onnx_cache_dir``: ONNX only; where exported ``.onnx`` files are kept, named by a hash of the weights,
    so a second start skips the export. ``None`` exports into memory every time.
    """

    num_threads: int | None = None
    channels_last: bool = True
    onnx_cache_dir: Path | None = None


class InferenceBackend(Protocol):
    """Runs a lip-sync generator on batches of crops; see the module docstring for the array contract."""

    name: str
    crop_size: int

    def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S, 3)`` BGR crops + float32 ``(B, 1, 80, 16)`` mels -> uint8 ``(B, S, S, 3)`` BGR.

        Raises :class:`UsageError` on a wrong shape or dtype.
        """
        ...

    def run_network(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """float32 ``(B, 6, S, S)`` + ``(B, 1, 80, 16)`` -> float32 ``(B, 3, S, S)`` in ``[0, 1]``."""
        ...


def create_backend(name: str, model: nn.Module, options: BackendOptions | None = None) -> InferenceBackend:
    """Build the backend called ``name`` (``"torch"`` or ``"onnx"``) around ``model``.

    ``model`` is a :class:`~lipsync_tools.models.Wav2Lip` or :class:`~lipsync_tools.models.IdentityModel`
    (any module with the same ``forward(mel, face)`` contract and a ``crop_size`` attribute).
    Raises :class:`UsageError` for an unknown name and
    :class:`~lipsync_tools.errors.BackendUnavailableError` when the backend's runtime is not installed.
    """
    target = BACKENDS.get(name)
    if target is None:
        raise UsageError(
            f"unknown inference backend {name!r}; expected one of: {', '.join(sorted(BACKENDS))}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: InferenceBackend = cls(model, options or BackendOptions())
    return backend


def check_batch(crops: np.ndarray, mels: np.ndarray, crop_size: int) -> None:
    """Raise :class:`UsageError` unless ``crops`` and ``mels`` follow the ``infer`` contract."""
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4:
        raise UsageError(
            f"crops must be a uint8 (B, {crop_size}, {crop_size}, 3) array, got {_describe(crops)}"
        )
    if crops.shape[1:] != (crop_size, crop_size, 3) or crops.shape[0] == 0:
        raise UsageError(
            f"crops must have shape (B, {crop_size}, {crop_size}, 3) with B >= 1, got {crops.shape}"
        )
    if not isinstance(mels, np.ndarray) or mels.dtype != np.float32:
        raise UsageError(
            f"mels must be a float32 (B, 1, {MEL_BINS}, {MEL_STEPS}) array, got {_describe(mels)}"
        )
    if mels.shape != (crops.shape[0], 1, MEL_BINS, MEL_STEPS):
        raise UsageError(
            f"mels must have shape ({crops.shape[0]}, 1, {MEL_BINS}, {MEL_STEPS}) to match "
            f"{crops.shape[0]} crops, got {mels.shape}"
        )


def network_input_nhwc(crops: np.ndarray) -> np.ndarray:
    """Build the generator input from uint8 ``(B, S, S, 3)`` crops, channels last.

    Returns float32 ``(B, S, S, 6)`` in ``[0, 1]``: channels 0-2 the crop with rows ``S//2`` and below
    zeroed (the region the network must paint), channels 3-5 the unmasked crop (the reference).
    ``.transpose(0, 3, 1, 2)`` of it is the ``(B, 6, S, S)`` tensor :meth:`Wav2Lip.forward` takes.
    """
    b, s = crops.shape[0], crops.shape[1]
    faces = np.empty((b, s, s, 6), dtype=np.float32)
    np.multiply(crops, np.float32(1.0 / 255.0), out=faces[..., 3:], dtype=np.float32)
    faces[:, : s // 2, :, :3] = faces[:, : s // 2, :, 3:]
    faces[:, s // 2 :, :, :3] = 0.0
    return faces


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


class TorchBackend:
    """PyTorch inference under ``torch.inference_mode``, by default in channels_last memory format.

    channels_last lets the crops go in without a transpose copy: the NHWC input array viewed as NCHW *is* a
    channels_last tensor, and oneDNN's convolutions prefer that layout on CPU.
    """

    name = "torch"

    def __init__(self, model: nn.Module, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        if options.num_threads is not None:
            if options.num_threads < 1:
                raise UsageError(f"num_threads must be >= 1, got {options.num_threads}")
            torch.set_num_threads(options.num_threads)
        self.channels_last = options.channels_last
        self.crop_size: int = int(getattr(model, "crop_size", 96))
        model.eval()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        self.model = model
        if not self.channels_last:
            self.name = "torch-eager"

    def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, mels, self.crop_size)
        faces = torch.from_numpy(network_input_nhwc(crops)).permute(0, 3, 1, 2)
        if not self.channels_last:
            faces = faces.contiguous()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(mels)), faces)
            # NCHW -> NHWC is free for a channels_last result; round-to-nearest, then clamp for safety.
            pixels = out.permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        return np.ascontiguousarray(pixels.numpy())

    def run_network(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        x = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32)), x)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)
