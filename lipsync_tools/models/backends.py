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

Precision and device (issue 12, ``BackendOptions.precision`` / ``.device``) change what runs, never the
contract: inputs and outputs stay float32 and uint8 on the host whatever the network computes in.

The per-frame work around the network is kept small: ``infer`` builds the network input into a float32
buffer the backend keeps (grown when a bigger batch comes; page-locked on CUDA, so the copy to the GPU is
one DMA) and writes the rounded prediction straight into the array it returns. A backend therefore serves
one thread at a time: concurrent calls are serialised by a lock, not run in parallel (the engine gives each
model one worker thread anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn

from lipsync_tools._registry import load_attr
from lipsync_tools.errors import UsageError
from lipsync_tools.models.devices import Device, check_precision, parse_device, torch_device
from lipsync_tools.models.families import get_family
from lipsync_tools.models.family import AudioMode, ModelFamily, pixels_from_prediction
from lipsync_tools.models.quantize import CalibrationSet

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
    so a second start skips the export (and the int8 quantization, the fp16 conversion and TensorRT's engine
    build). ``None`` exports into memory (int8: into a temporary folder) every time.
    ``precision``: what the network computes in. ``"fp32"`` everywhere; ``"int8"`` on ONNX Runtime only
    (static quantization calibrated on ``calibration``; on CUDA it needs TensorRT); ``"fp16"`` on GPUs only.
    ``device``: ``"cpu"``, ``"cuda"`` (= ``"cuda:0"``) or ``"cuda:N"``.
    ``calibration``: the network inputs int8 calibrates on: the package's own crops and audio features
    (:meth:`CalibrationSet.from_crops`); required for int8, ignored otherwise.

    Raises :class:`UsageError` for an unknown precision or device, and for fp16 on the CPU.
    """

    num_threads: int | None = None
    channels_last: bool = True
    onnx_cache_dir: Path | None = None
    precision: str = "fp32"
    device: str = "cpu"
    calibration: CalibrationSet | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision, parse_device(self.device))


class InferenceBackend(Protocol):
    """Runs a lip-sync network on batches of crops; see the module docstring for the array contract.

    ``precision`` (``"fp32"``, ``"int8"``, ``"fp16"``) and ``device`` say what runs where.
    """

    name: str
    family: ModelFamily
    audio_mode: AudioMode
    crop_size: int
    precision: str
    device: Device

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
    backend_class = cast(
        "Callable[[nn.Module, BackendOptions, ModelFamily], InferenceBackend]",
        load_attr(target, what=f"the {name} inference backend"),
    )
    return backend_class(model, options or BackendOptions(), family or get_family(None))


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


def crops_with_prediction(family: ModelFamily, crops: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``family.paste(crops, pixels_from_prediction(predicted))`` without the intermediate uint8 array.

    ``predicted``: float32 ``(B, 3, n, n)`` (any strides). Returns a new C-contiguous uint8 ``(B, S, S, 3)``
    array: the crops, their inner region replaced by the rounded prediction, written in place.
    """
    s, m = family.crop_size, family.inner_margin
    if m == 0:
        out = np.empty((predicted.shape[0], s, s, 3), np.uint8)
    else:
        out = np.array(crops, dtype=np.uint8, copy=True, order="C")
    pixels_from_prediction(predicted, out=out[:, m : s - m, m : s - m])
    return out


class ReusedBatch:
    """A float32 ``(B, *item)`` array kept across calls and grown when a bigger ``B`` comes.

    ``nhwc``: for an image item ``(C, H, W)``, the memory is ``(B, H, W, C)`` and :meth:`array` /
    :meth:`tensor` show it as ``(B, C, H, W)`` (a channels_last tensor, no copy). ``pinned``: page-locked
    host memory (torch's ``pin_memory``), so a non-blocking copy to a GPU is one DMA. Not thread-safe: its
    owner serialises the calls.
    """

    def __init__(self, item: tuple[int, ...], *, nhwc: bool = False, pinned: bool = False) -> None:
        self.item = item
        self.nhwc = nhwc and len(item) == 3
        self.pinned = pinned
        self.capacity = 0
        self._tensor = torch.empty(0)
        self._array = np.empty((0, *item), np.float32)

    def _grow(self, batch: int) -> None:
        shape = (batch, *self.item[1:], self.item[0]) if self.nhwc else (batch, *self.item)
        memory = torch.empty(shape, dtype=torch.float32, pin_memory=self.pinned)
        if self.nhwc:
            memory = memory.permute(0, 3, 1, 2)
        self._tensor = memory
        self._array = memory.numpy()  # shares the memory, strides included
        self.capacity = batch

    def array(self, batch: int) -> np.ndarray:
        """The first ``batch`` items as a NumPy view (contents left from the last call)."""
        if batch > self.capacity:
            self._grow(batch)
        return self._array[:batch]

    def tensor(self, batch: int) -> torch.Tensor:
        """The same memory as :meth:`array`, as a torch tensor."""
        if batch > self.capacity:
            self._grow(batch)
        return self._tensor[:batch]


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


INT8_NEEDS_ONNX = "int8 runs on ONNX Runtime: use --backend onnx (the default)"


class TorchBackend:
    """PyTorch inference under ``torch.inference_mode``, by default in channels_last memory format.

    channels_last lets oneDNN's (CPU) and cuDNN's (GPU) convolutions use their preferred NHWC layout; the
    model's parameters are converted in place, and moved to the GPU in place for ``device="cuda"``. On CUDA
    the network input is built in a page-locked host buffer, copied to the GPU once per batch (non-blocking),
    cast to half and laid out channels_last there, and the output comes back once, as float32 NHWC, into
    another page-locked buffer. Precision ``int8`` is refused (:class:`UsageError`): it runs on ONNX Runtime.
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, options: BackendOptions | None = None, family: ModelFamily | None = None
    ) -> None:
        options = options or BackendOptions()
        if options.precision == "int8":
            raise UsageError(INT8_NEEDS_ONNX)
        self.device = parse_device(options.device)
        self._torch_device = torch_device(self.device)
        if options.num_threads is not None:
            if options.num_threads < 1:
                raise UsageError(f"num_threads must be >= 1, got {options.num_threads}")
            torch.set_num_threads(options.num_threads)
        self.precision = options.precision
        self.family = family or get_family(None)
        self.crop_size: int = self.family.crop_size
        self.audio_mode = audio_mode_of(model, self.family)
        self.audio_shape = self.audio_mode.network_shape
        self.channels_last = options.channels_last
        self._cuda = self.device.is_cuda
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32
        model.eval()
        if self._cuda:
            model.to(device=self._torch_device, dtype=self._dtype)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        self.model = model
        if not self.channels_last:
            self.name = "torch-eager"
        n = self.family.network_size
        # NCHW, as the family builds it fastest (an NHWC buffer seen as NCHW makes NumPy's inner loops three
        # elements long: measured 1.5x slower); torch re-lays it out for channels_last (on CUDA, on the GPU).
        self._faces = ReusedBatch((6, n, n), pinned=self._cuda)
        self._audio = ReusedBatch(self.audio_shape, pinned=True) if self._cuda else None
        self._output = ReusedBatch((3, n, n), nhwc=True, pinned=True) if self._cuda else None
        self._lock = threading.Lock()

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, audio, self.family, self.audio_shape)
        b = crops.shape[0]
        with self._lock:
            self.family.network_input(crops, out=self._faces.array(b))
            predicted = self._forward(b, audio)
            return crops_with_prediction(self.family, crops, predicted)

    def run_network(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        b = faces.shape[0]
        with self._lock:
            np.copyto(self._faces.array(b), faces, casting="same_kind")
            # A copy: the result may be a view of a reused buffer (the output buffer on CUDA, or the input
            # buffer itself for a network that returns part of its input).
            return np.array(self._forward(b, audio), dtype=np.float32, order="C", copy=True)

    def _forward(self, b: int, audio: np.ndarray) -> np.ndarray:
        """Run the network on the first ``b`` items of the faces buffer; float32 ``(b, 3, n, n)``, any
        strides, possibly a view of a reused buffer (valid until the next call)."""
        x = self._faces.tensor(b)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if not self._cuda:
            a = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
            with torch.inference_mode():
                # The output of a channels_last network is NHWC in memory: returned as it is, it makes the
                # conversion to uint8 NHWC pixels a plain copy.
                return call_network(self.model, self.family, x.contiguous(memory_format=layout), a).numpy()
        assert self._audio is not None and self._output is not None  # set together with _cuda
        np.copyto(self._audio.array(b), audio, casting="same_kind")
        with torch.inference_mode():
            # One host-to-device copy per input, then the cast to half and the channels_last layout on the
            # GPU, where they are nearly free.
            x = x.to(self._torch_device, non_blocking=True).to(self._dtype).contiguous(memory_format=layout)
            a = self._audio.tensor(b).to(self._torch_device, non_blocking=True).to(self._dtype)
            out = call_network(self.model, self.family, x, a)
            # Cast and lay out as the host buffer on the GPU, so that the copy back is one plain DMA.
            out = out.to(torch.float32).contiguous(memory_format=torch.channels_last)
            self._output.tensor(b).copy_(out, non_blocking=True)
            torch.cuda.current_stream(self._torch_device).synchronize()
        return self._output.array(b)
