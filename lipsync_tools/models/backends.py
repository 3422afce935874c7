"""Inference backends: one array contract, several runtimes (PyTorch, ONNX Runtime), every model family.

The contract the engine relies on (:class:`InferenceBackend`), for a backend built for family ``F``
(:class:`~lipsync_tools.models.family.ModelFamily`, crop side ``S``, network side ``n``):

``infer(crops, audio) -> crops_out``
    * ``crops``: uint8 ``(B, S, S, 3)`` BGR face crops, exactly as the package stores them (C-contiguous or
      not; read, never written).
    * ``audio``: float32 ``(B, *F.audio.network_shape)``: Wav2Lip mel windows ``(B, 1, 80, 16)``, AVE
      windows ``(B, 32, 16, 16)``, ...
    * returns a new C-contiguous uint8 ``(B, S, S, 3)`` BGR array: each crop with the network's prediction
      in its inner region (for Wav2Lip the whole crop), rounded to nearest.

The backend builds the network input itself (:meth:`ModelFamily.network_input`): the inner region, masked as
the family masks it, stacked with the unmasked reference in the family's channel order, scaled to ``[0, 1]``.
The public scripts truncate the ``[0, 255]`` output to uint8; we round, which is closer to the network's
output and keeps backends within one grey level of each other.

``run_network(faces, audio)`` exposes the float network call (``(B, 6, n, n)`` float32 in,
``(B, 3, n, n)`` float32 in ``[0, 1]`` out) for tests and tools that build their own input.
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
from lipsync_tools.models.families import get_family
from lipsync_tools.models.family import AudioMode, ModelFamily, pixels_from_prediction

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
    """Runs a lip-sync network on batches of crops; see the module docstring for the array contract."""

    name: str
    family: ModelFamily
    audio_mode: AudioMode
    crop_size: int

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S, 3)`` BGR crops + float32 audio windows -> uint8 ``(B, S, S, 3)`` BGR crops.

        Raises :class:`UsageError` on a wrong shape or dtype.
        """
        ...

    def run_network(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """float32 ``(B, 6, n, n)`` + audio windows -> float32 ``(B, 3, n, n)`` in ``[0, 1]``."""
        ...


def create_backend(
    name: str,
    model: nn.Module,
    options: BackendOptions | None = None,
    family: ModelFamily | None = None,
) -> InferenceBackend:
    """Build the backend called ``name`` (``"torch"`` or ``"onnx"``) around ``model`` of ``family``.

    ``model`` is the family's network (or :class:`IdentityNetwork`); ``family`` defaults to Wav2Lip.
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
    backend: InferenceBackend = cls(model, options or BackendOptions(), family or get_family(None))
    return backend


def check_batch(
    crops: np.ndarray, audio: np.ndarray, family: ModelFamily, audio_shape: tuple[int, ...]
) -> None:
    """Raise :class:`UsageError` unless ``crops`` and ``audio`` follow the ``infer`` contract."""
    s = family.crop_size
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4:
        raise UsageError(f"crops must be a uint8 (B, {s}, {s}, 3) array, got {_describe(crops)}")
    if crops.shape[1:] != (s, s, 3) or crops.shape[0] == 0:
        raise UsageError(
            f"crops must have shape (B, {s}, {s}, 3) for the {family.name} family with B >= 1, "
            f"got {crops.shape}"
        )
    want = (crops.shape[0], *audio_shape)
    if not isinstance(audio, np.ndarray) or audio.dtype != np.float32:
        raise UsageError(f"audio must be a float32 {want} array, got {_describe(audio)}")
    if audio.shape != want:
        raise UsageError(f"audio must have shape {want} to match {crops.shape[0]} crops, got {audio.shape}")


def network_input_nhwc(crops: np.ndarray) -> np.ndarray:
    """Wav2Lip's generator input from uint8 ``(B, S, S, 3)`` crops, channels last.

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


class IdentityNetwork(nn.Module):
    """A stand-in network of any family that returns the unmasked reference image it was given.

    Compositing tests use it: whatever the engine does around the model must give back the source frame.
    It takes the family's call order and channel order; it has no parameters.
    """

    architecture = "identity"

    def __init__(self, family: ModelFamily, audio_mode: str | None = None) -> None:
        super().__init__()
        audio_mode = family.audio_mode(audio_mode).name
        self.image_first = family.image_first
        self.reference = slice(0, 3) if family.reference_first else slice(3, 6)
        self.crop_size = family.crop_size
        self.audio_mode = audio_mode

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        image = first if self.image_first else second
        return image[:, self.reference]


def call_network(
    model: nn.Module, family: ModelFamily, faces: torch.Tensor, audio: torch.Tensor
) -> torch.Tensor:
    """``model(faces, audio)`` in the family's argument order."""
    return model(faces, audio) if family.image_first else model(audio, faces)


def audio_mode_of(model: nn.Module, family: ModelFamily) -> AudioMode:
    """The audio mode ``model`` takes (its ``audio_mode`` attribute, else the family's default)."""
    mode = getattr(model, "audio_mode", None)
    return family.audio_mode(mode if isinstance(mode, str) else None)


class TorchBackend:
    """PyTorch inference under ``torch.inference_mode``, by default in channels_last memory format.

    channels_last lets oneDNN's convolutions use their preferred NHWC layout on CPU. Its parameters are
    converted in place.
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, options: BackendOptions | None = None, family: ModelFamily | None = None
    ) -> None:
        options = options or BackendOptions()
        if options.num_threads is not None:
            if options.num_threads < 1:
                raise UsageError(f"num_threads must be >= 1, got {options.num_threads}")
            torch.set_num_threads(options.num_threads)
        self.family = family or get_family(None)
        self.crop_size: int = self.family.crop_size
        self.audio_mode = audio_mode_of(model, self.family)
        self.audio_shape = self.audio_mode.network_shape
        self.channels_last = options.channels_last
        model.eval()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        self.model = model
        if not self.channels_last:
            self.name = "torch-eager"

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, audio, self.family, self.audio_shape)
        out = self.run_network(self.family.network_input(crops), audio)
        return self.family.paste(crops, pixels_from_prediction(out))

    def run_network(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        x = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        a = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        with torch.inference_mode():
            out = call_network(self.model, self.family, x, a)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)
