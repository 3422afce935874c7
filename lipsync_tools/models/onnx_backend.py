"""ONNX Runtime backend: the torch generator exported to ONNX once, cached by a hash of its weights.

Export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs only
the ``onnx`` package, which is already a dependency, whereas the newer dynamo exporter would add
``onnxscript``. The batch axis is dynamic, so one file serves every batch size.

Precisions (:mod:`lipsync_tools.models.quantize`): fp32 runs the export; int8 runs its static QDQ
quantization, calibrated on the avatar's own inputs; fp16 (GPU) runs its float16 conversion. Each is cached
beside the fp32 file. Devices (:mod:`lipsync_tools.models.devices`): the CPU provider, or on CUDA TensorRT
(when ONNX Runtime offers it and can load it) then CUDA, with the inputs and the output bound on the host
(one copy each way per batch).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipsync_tools._atomic import atomic_replace
from lipsync_tools.errors import BackendUnavailableError, OutputNotWritableError, UsageError
from lipsync_tools.models.backends import (
    BackendOptions,
    ReusedBatch,
    audio_mode_of,
    check_batch,
    crops_with_prediction,
)
from lipsync_tools.models.devices import ProviderList, onnx_providers, parse_device
from lipsync_tools.models.families import get_family
from lipsync_tools.models.family import ModelFamily
from lipsync_tools.models.quantize import (
    cached_float16,
    conv_transpose_as_conv,
    float16_model,
    quantize_int8,
)

ONNX_OPSET = 17
# Bump when the export changes (names, axes, opset handling) so stale cache files are not reused.
EXPORT_REVISION = 2


def weights_digest(model: nn.Module) -> str:
    """Return a sha256 hex digest of ``model``'s class, state-dict names, dtypes, shapes and values.

    Together with the torch version, opset and :data:`EXPORT_REVISION` it names the cached ``.onnx`` file:
    the same weights exported by the same exporter give the same digest on every start.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__qualname__}|{torch.__version__}|{ONNX_OPSET}|{EXPORT_REVISION}".encode())
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        h.update(f"|{key}|{array.dtype}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


class _ImageAudio(nn.Module):
    """``forward(image, audio)`` around a network whose own order may be ``(audio, image)`` (Wav2Lip)."""

    def __init__(self, model: nn.Module, family: ModelFamily) -> None:
        super().__init__()
        self.model = model
        self.image_first = family.image_first

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.model(image, audio) if self.image_first else self.model(audio, image)


def export_onnx(
    model: nn.Module, target: str | os.PathLike[str] | io.BytesIO, family: ModelFamily | None = None
) -> None:
    """Export ``model`` of ``family`` to ONNX at ``target`` with a dynamic batch axis.

    Inputs, named by ``family.onnx_names``: the image float32 ``(B, 6, n, n)`` and the audio float32
    ``(B, *audio_shape)``; output float32 ``(B, 3, n, n)``. SyncTalk_2D-328: ``input`` ``[B, 6, 320, 320]``,
    ``audio`` ``[B, 32, 16, 16]`` -> ``output`` ``[B, 3, 320, 320]`` (the names the original servers'
    packages used); Wav2Lip: ``face``, ``mel`` -> ``crop``. An input the model ignores (the identity
    model's audio) is dropped by the exporter.
    """
    family = family or get_family(None)
    image_name, audio_name, output_name = family.onnx_names
    n = family.network_size
    # Batch 2 in the example so that nothing in the traced graph specialises on a batch of one.
    example = (torch.zeros(2, 6, n, n), torch.zeros(2, *audio_mode_of(model, family).network_shape))
    model.eval()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is what we choose, see module doc.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _ImageAudio(model, family).eval(),  # a fresh module is in train mode, and export restores it
            example,
            target,  # type: ignore[arg-type]  # the TorchScript exporter also writes to a file object
            dynamo=False,
            input_names=[image_name, audio_name],
            output_names=[output_name],
            dynamic_axes={image_name: {0: "batch"}, audio_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )


def cached_onnx(model: nn.Module, cache_dir: Path, family: ModelFamily | None = None) -> Path:
    """Return the path of ``model``'s ONNX export in ``cache_dir``, exporting it first if it is not there.

    The file is ``<architecture>-<digest[:20]>.onnx``; it is written to a temporary name and renamed, so a
    crash or a concurrent start never leaves a half-written file under the final name.
    Raises :class:`OutputNotWritableError` when ``cache_dir`` cannot be created or written.
    """
    family = family or get_family(None)
    arch = str(getattr(model, "architecture", type(model).__name__.lower()))
    # The family and audio shape are part of the name: an identity network has no weights to tell them apart.
    shape = "x".join(map(str, audio_mode_of(model, family).network_shape))
    path = cache_dir / f"{family.name}-{arch}-{shape}-{weights_digest(model)[:20]}.onnx"
    if path.is_file():
        return path
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=cache_dir)
        os.close(fd)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write the ONNX cache folder {cache_dir}: {exc.strerror}; pass a writable folder"
        ) from exc
    try:
        export_onnx(model, tmp, family)
        atomic_replace(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the onnx backend needs onnxruntime, which is not installed: pip install onnxruntime "
            "(or use --backend torch)"
        ) from exc
    return onnxruntime


INT8_NEEDS_CALIBRATION = (
    "--precision int8 needs a calibration set made from the package's own crops and audio features "
    "(BackendOptions(calibration=CalibrationSet.from_crops(family, crops, audio)); the engine builds it when "
    "it loads a package); without one use --precision fp32"
)


class OnnxBackend:
    """ONNX Runtime inference; same contract as :class:`InferenceBackend`.

    ``precision`` and ``device`` come from :class:`BackendOptions`; after construction ``self.precision``,
    ``self.device`` and ``self.providers`` (the providers the session really got, best first) say what runs,
    and ``self.model_path`` which file (``None`` when the model lives only in memory: no ``onnx_cache_dir``).
    Raises :class:`UsageError` (int8 without calibration, or one that does not fit the network) and
    :class:`BackendUnavailableError` (onnxruntime missing, no usable CUDA provider, int8 on CUDA without
    TensorRT: ONNX Runtime's CUDA provider runs a QDQ model in float32 with extra steps, slower than fp32).
    """

    name = "onnx"

    def __init__(
        self, model: nn.Module, options: BackendOptions | None = None, family: ModelFamily | None = None
    ) -> None:
        options = options or BackendOptions()
        self.family = family or get_family(None)
        self.crop_size: int = self.family.crop_size
        self.audio_mode = audio_mode_of(model, self.family)
        self.audio_shape = self.audio_mode.network_shape
        self.precision = options.precision
        self.device = parse_device(options.device)
        if self.precision == "int8":
            if options.calibration is None:
                raise UsageError(INT8_NEEDS_CALIBRATION)
            options.calibration.check_for(self.family, self.audio_shape)
        ort = _import_onnxruntime()
        providers = onnx_providers(
            self.device,
            list(ort.get_available_providers()),
            precision=self.precision,
            cache_dir=options.onnx_cache_dir,
        )
        tensorrt = _names(providers)[0] == "TensorrtExecutionProvider"
        if self.precision == "int8" and self.device.is_cuda and not tensorrt:
            raise BackendUnavailableError(
                _int8_needs_tensorrt(self.device, "onnxruntime offers no TensorrtExecutionProvider")
            )
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.num_threads is not None:
            session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1  # the graph is a single chain; no parallel branches to run
        # Idle ONNX Runtime threads spin for a while after each run; on a few cores that starves the work
        # between model calls (AVE features in torch, compositing), measured 2.8 ms -> ~400 ms per frame.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = self._model_source(model, options, for_tensorrt=tensorrt)
        self.model_path = None if isinstance(source, bytes) else Path(source)
        self._session, self.tensorrt_error = _start_session(
            ort, source, session_options, providers, self.device
        )
        self.providers: list[str] = list(self._session.get_providers())
        if self.precision == "int8" and tensorrt and "TensorrtExecutionProvider" not in self.providers:
            raise BackendUnavailableError(_int8_needs_tensorrt(self.device, self.tensorrt_error or "unknown"))
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._names = self.family.onnx_names
        n = self.family.network_size
        # Page-locked host memory makes the copies to and from the GPU one DMA each; it needs a CUDA torch.
        pinned = self.device.is_cuda and torch.cuda.is_available()
        self._faces = ReusedBatch((6, n, n), pinned=pinned)  # NCHW, C-contiguous: what ONNX Runtime takes
        self._output = ReusedBatch((3, n, n), pinned=pinned) if self.device.is_cuda else None
        self._lock = threading.Lock()

    def _model_source(self, model: nn.Module, options: BackendOptions, *, for_tensorrt: bool) -> str | bytes:
        """The model file (its path when cached, else its bytes) for this backend's precision."""
        cache = options.onnx_cache_dir
        if self.precision == "int8":
            assert options.calibration is not None  # checked in __init__
            # The CPU has no int8 ConvTranspose: quantize the same network with those written as Conv2d.
            source = model if for_tensorrt else conv_transpose_as_conv(model)
            if cache is None:
                with tempfile.TemporaryDirectory(prefix="lipsync-int8-") as tmp:
                    fp32 = cached_onnx(source, Path(tmp), self.family)
                    int8 = quantize_int8(fp32, options.calibration, Path(tmp), for_tensorrt=for_tensorrt)
                    return int8.read_bytes()
            fp32 = cached_onnx(source, cache, self.family)
            return str(quantize_int8(fp32, options.calibration, cache, for_tensorrt=for_tensorrt))
        if cache is not None:
            fp32 = cached_onnx(model, cache, self.family)
            return str(cached_float16(fp32) if self.precision == "fp16" else fp32)
        buffer = io.BytesIO()
        export_onnx(model, buffer, self.family)
        if self.precision == "fp16":
            import onnx

            return bytes(float16_model(onnx.load_model_from_string(buffer.getvalue())).SerializeToString())
        return buffer.getvalue()

    def run_network(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        with self._lock:
            out = self._run(np.ascontiguousarray(faces, dtype=np.float32), audio)
            return out.copy() if self._output is not None else np.asarray(out, dtype=np.float32)

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, audio, self.family, self.audio_shape)
        with self._lock:
            faces = self.family.network_input(crops, out=self._faces.array(crops.shape[0]))
            return crops_with_prediction(self.family, crops, self._run(faces, audio))

    def _run(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """One run on contiguous float32 ``faces``; on CUDA the result is a view of a reused buffer."""
        image_name, audio_name, output_name = self._names
        feed = {image_name: faces}
        if audio_name in self._inputs:
            feed[audio_name] = np.ascontiguousarray(audio, dtype=np.float32)
        if self._output is None:
            (out,) = self._session.run([output_name], feed)
            return np.asarray(out)
        binding = self._session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)  # copied to the GPU once, inside the run
        out = self._output.array(faces.shape[0])
        binding.bind_output(output_name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding)
        return out


def _int8_needs_tensorrt(device: object, reason: str) -> str:
    return (
        f"--precision int8 on --device {device} runs on TensorRT, which ONNX Runtime cannot use ({reason}); "
        "its CUDA provider would run the int8 model in float32 with extra steps, slower than fp32. Install "
        "TensorRT 10 for your CUDA (e.g. pip install tensorrt-cu12, its libraries on LD_LIBRARY_PATH), or "
        "use --precision fp16"
    )


def _names(providers: ProviderList) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def _start_session(
    ort: Any, source: str | bytes, options: Any, providers: ProviderList, device: Any
) -> tuple[Any, str | None]:
    """An ``InferenceSession`` on ``providers``; TensorRT that fails to start (``onnxruntime-gpu`` lists it
    even without the TensorRT libraries) is dropped and the reason returned. ONNX Runtime's own fallback (to
    the CPU, with a print) is turned off: a CUDA session that cannot start raises
    :class:`BackendUnavailableError` instead of running on the CPU unnoticed."""
    tensorrt_error = None
    if "TensorrtExecutionProvider" in _names(providers):
        try:
            return ort.InferenceSession(source, options, providers=providers, enable_fallback=0), None
        except (RuntimeError, ValueError) as exc:
            tensorrt_error = _first_line(exc)
            providers = [p for p in providers if _names([p])[0] != "TensorrtExecutionProvider"]
    try:
        session = ort.InferenceSession(source, options, providers=providers, enable_fallback=0)
    except (RuntimeError, ValueError) as exc:
        if not device.is_cuda:
            raise
        raise BackendUnavailableError(
            f"ONNX Runtime could not start its CUDA provider on {device}: {_first_line(exc)}; check that the "
            "onnxruntime-gpu build matches your CUDA and cuDNN (see onnxruntime.ai's CUDA requirements) and "
            "that the GPU exists, or use --device cpu"
        ) from exc
    if device.is_cuda and "CUDAExecutionProvider" not in session.get_providers():
        raise BackendUnavailableError(
            f"ONNX Runtime started without its CUDA provider on {device} (providers: "
            f"{', '.join(session.get_providers())}); check that onnxruntime-gpu matches your CUDA and cuDNN, "
            "or use --device cpu"
        )
    return session, tensorrt_error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
