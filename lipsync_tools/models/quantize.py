"""Lower precisions of an exported ONNX model: int8 (static, calibrated) and fp16, cached beside fp32.

int8 (``--precision int8``, issue 12) is ONNX Runtime's static quantization in QDQ form: per-channel int8
weights, per-tensor activation ranges measured on a :class:`CalibrationSet` of the avatar's own network
inputs. Random or synthetic inputs would give ranges the real crops never reach (or miss ones they do), so
the set is built from the package's crops and audio features (:meth:`CalibrationSet.from_crops`).
Two layouts, one per runtime:

* CPU (``for_tensorrt=False``): uint8 activations with a zero point, int8 weights, the combination ONNX
  Runtime's x86 and ARM int8 kernels (``QLinearConv`` fused from ``DequantizeLinear -> Conv ->
  QuantizeLinear``) run fastest; transposed convolutions and unfolded batch norms stay float;
* TensorRT (``for_tensorrt=True``): int8 activations, symmetric (zero point 0), float biases: what TensorRT
  accepts in a Q/DQ ("explicitly quantized") network.

fp16 (``--precision fp16``, GPUs only) converts the fp32 graph with ONNX Runtime's
``convert_float_to_float16(keep_io_types=True)``: inputs and outputs stay float32, so the array contract
does not change.

Every file is written to a temporary name in the cache folder and renamed (:mod:`lipsync_tools._atomic`), so
a crash or a concurrent start never leaves a half-written model under the final name, and a second start
finds the file and skips the work.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync_tools._atomic import atomic_replace
from lipsync_tools.errors import BackendUnavailableError, OutputNotWritableError, UsageError

if TYPE_CHECKING:
    import onnx

    from lipsync_tools.models.family import ModelFamily

# Bump when the quantization recipe changes (method, options, pre-processing) so stale files are not reused.
QUANT_REVISION = 1
# Bump when the fp16 conversion changes (block lists, options).
FP16_REVISION = 1

INT8_MIN_PSNR_DB = 30.0
"""The project's floor for an int8 model's output against its fp32 model on held-out inputs, in dB."""

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "minmax"  # measured best of the three on both families: see docs/models.md
CALIBRATION_BATCH = 4  # inputs per calibration run: bounds the memory of the instrumented model
DEFAULT_CALIBRATION_SIZE = 32  # frames :meth:`CalibrationSet.from_crops` keeps


@dataclass(frozen=True, kw_only=True, eq=False)
class CalibrationSet:
    """Network inputs that stand for what the model will see: the avatar's own crops and audio features.

    ``faces``: float32 ``(N, 6, n, n)``, exactly what :meth:`ModelFamily.network_input` makes of ``N`` crops.
    ``audio``: float32 ``(N, *audio shape)``, the matching audio windows. Raises :class:`UsageError` when the
    arrays have the wrong dtype, rank or disagree on ``N``.
    """

    faces: np.ndarray
    audio: np.ndarray

    def __post_init__(self) -> None:
        faces, audio = self.faces, self.audio
        if not isinstance(faces, np.ndarray) or faces.dtype != np.float32 or faces.ndim != 4:
            raise UsageError(
                f"calibration faces must be a float32 (N, 6, n, n) array, got {_describe(faces)}"
            )
        if faces.shape[0] == 0 or faces.shape[1] != 6 or faces.shape[2] != faces.shape[3]:
            raise UsageError(f"calibration faces must have shape (N, 6, n, n) with N >= 1, got {faces.shape}")
        if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim < 2:
            raise UsageError(f"calibration audio must be a float32 (N, ...) array, got {_describe(audio)}")
        if audio.shape[0] != faces.shape[0]:
            raise UsageError(
                f"calibration audio must have one window per face: {faces.shape[0]} faces, "
                f"{audio.shape[0]} audio windows"
            )

    def __len__(self) -> int:
        return int(self.faces.shape[0])

    @classmethod
    def from_crops(
        cls,
        family: ModelFamily,
        crops: np.ndarray,
        audio: np.ndarray,
        *,
        size: int = DEFAULT_CALIBRATION_SIZE,
    ) -> CalibrationSet:
        """Up to ``size`` evenly spaced frames of uint8 ``crops`` ``(N, S, S, 3)`` with their float32 audio
        windows ``(N, *audio shape)`` (a package's own crops and features), as network inputs of ``family``.
        """
        if crops.shape[0] != audio.shape[0] or crops.shape[0] == 0:
            raise UsageError(
                f"calibration needs one audio window per crop and at least one crop: {crops.shape[0]} crops, "
                f"{audio.shape[0]} audio windows"
            )
        pick = np.unique(np.linspace(0, crops.shape[0] - 1, min(size, crops.shape[0])).round().astype(int))
        return cls(
            faces=family.network_input(np.ascontiguousarray(crops[pick])),
            audio=np.ascontiguousarray(audio[pick], dtype=np.float32),
        )

    def digest(self) -> str:
        """sha256 hex digest of both arrays' shapes and bytes: the same set names the same int8 file."""
        h = hashlib.sha256()
        for array in (self.faces, self.audio):
            contiguous = np.ascontiguousarray(array)
            h.update(f"{contiguous.dtype}|{contiguous.shape}|".encode())
            h.update(contiguous.reshape(-1).view(np.uint8).data)
        return h.hexdigest()

    def check_for(self, family: ModelFamily, audio_shape: tuple[int, ...]) -> None:
        """Raise :class:`UsageError` unless the set fits ``family``'s network and ``audio_shape``."""
        n = family.network_size
        if self.faces.shape[1:] != (6, n, n):
            raise UsageError(
                f"the calibration faces have shape {self.faces.shape[1:]} per item; the {family.name} "
                f"network takes (6, {n}, {n}): build the set from this family's crops"
            )
        if self.audio.shape[1:] != audio_shape:
            raise UsageError(
                f"the calibration audio has shape {self.audio.shape[1:]} per item; this network takes "
                f"{audio_shape}: build the set from the package's own audio features"
            )

    def batches(self, image_name: str, audio_name: str | None, size: int) -> Iterator[dict[str, np.ndarray]]:
        """ONNX Runtime feeds of at most ``size`` items; ``audio_name`` ``None`` leaves the audio out."""
        for start in range(0, len(self), size):
            feed = {image_name: np.ascontiguousarray(self.faces[start : start + size])}
            if audio_name is not None:
                feed[audio_name] = np.ascontiguousarray(self.audio[start : start + size])
            yield feed


class _CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` interface (it accepts any object with ``get_next``) over a
    :class:`CalibrationSet`, in batches of :data:`CALIBRATION_BATCH`."""

    def __init__(self, calibration: CalibrationSet, image_name: str, audio_name: str | None) -> None:
        self._rewind = lambda: calibration.batches(image_name, audio_name, CALIBRATION_BATCH)
        self._feeds = self._rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = self._rewind()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._feeds

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._feeds)


def conv_transpose_as_conv(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``ConvTranspose2d`` replaced by the same operation written as a
    ``Conv2d`` and a pixel shuffle (:class:`SubPixelConvTranspose`), the ``BatchNorm2d`` that follows one
    in an ``nn.Sequential`` folded into it. ``model`` itself is not changed.

    ONNX Runtime's CPU provider has no int8 ``ConvTranspose``, so the CPU's int8 model is quantized from
    this form, in which every layer of Wav2Lip's decoder is an int8 convolution. Outputs agree with the
    original's to ~1e-6; the convolution does 16/9 of the transposed one's multiply-adds (zeros where a
    phase has no tap), which int8 more than repays. Eval mode only: batch norms are folded as they stand.
    """
    rewritten = copy.deepcopy(model).eval()
    for parent in list(rewritten.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.ConvTranspose2d):
                continue
            norm: nn.BatchNorm2d | None = None
            if isinstance(parent, nn.Sequential):
                names = [n for n, _ in parent.named_children()]
                after = names.index(name) + 1
                candidate = parent[after] if after < len(names) else None
                if isinstance(candidate, nn.BatchNorm2d):
                    norm = candidate
                    parent[after] = nn.Identity()
            setattr(parent, name, SubPixelConvTranspose(child, norm))
    return rewritten


class SubPixelConvTranspose(nn.Module):
    """``ConvTranspose2d`` (then an optional eval-mode ``BatchNorm2d``) as ``Conv2d`` + ``pixel_shuffle``.

    Output pixel ``o = s*m + a`` of a transposed convolution with stride ``s`` and padding ``p`` gathers
    input pixel ``m + d`` through kernel tap ``t = a + p - s*d``: one small convolution per phase ``a``. The
    phases' kernels are stacked (zeros where a phase has no tap) into one ``Conv2d`` with ``s*s*C_out``
    outputs, which ``pixel_shuffle`` interleaves; padding (or cropping) the input makes every phase cover
    the output, which is then cut to the transposed convolution's size. Raises :class:`UsageError` for
    grouped, dilated or non-square-stride convolutions.
    """

    def __init__(self, conv: nn.ConvTranspose2d, norm: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        if (
            conv.groups != 1
            or conv.dilation != (1, 1)
            or conv.stride[0] != conv.stride[1]
            or isinstance(conv.padding, str)
        ):
            raise UsageError(f"cannot rewrite {conv} as a convolution: groups, dilation, stride or padding")
        s = conv.stride[0]
        weight = conv.weight.detach().float()  # (C_in, C_out, kH, kW)
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[1])
        if norm is not None:
            mean, var = norm.running_mean, norm.running_var
            if mean is None or var is None:
                raise UsageError(f"cannot fold {norm}: it keeps no running statistics")
            gain = torch.rsqrt(var.float() + norm.eps)
            if norm.weight is not None:
                gain = gain * norm.weight.detach().float()
            weight = weight * gain[None, :, None, None]
            bias = (bias - mean.float()) * gain
            if norm.bias is not None:
                bias = bias + norm.bias.detach().float()
        k = tuple(int(v) for v in conv.kernel_size)
        p = tuple(int(v) for v in conv.padding)
        taps = [  # taps[dim][phase]: (input offset d, kernel tap t) pairs
            [[((a + p[dim] - t) // s, t) for t in range(k[dim]) if (a + p[dim] - t) % s == 0]
             for a in range(s)]
            for dim in (0, 1)
        ]
        self.d_min = [min(d for phase in taps[dim] for d, _ in phase) for dim in (0, 1)]
        self.d_max = [max(d for phase in taps[dim] for d, _ in phase) for dim in (0, 1)]
        size = [self.d_max[dim] - self.d_min[dim] + 1 for dim in (0, 1)]
        c_in, c_out = weight.shape[0], weight.shape[1]
        kernel = torch.zeros(c_out, s, s, c_in, size[0], size[1])
        for a in range(s):
            for b in range(s):
                for dy, ty in taps[0][a]:
                    for dx, tx in taps[1][b]:
                        kernel[:, a, b, :, dy - self.d_min[0], dx - self.d_min[1]] = weight[:, :, ty, tx].t()
        self.weight = nn.Parameter(kernel.reshape(c_out * s * s, c_in, *size), requires_grad=False)
        self.bias = nn.Parameter(bias.repeat_interleave(s * s), requires_grad=False)
        self.stride = s
        self.kernel = k
        self.padding = p
        self.output_padding = tuple(int(v) for v in conv.output_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        with warnings.catch_warnings():
            # Exported, the height and width become constants: right, as only the batch axis is dynamic
            # (a family's network sizes are fixed), so the tracer's warning about it is noise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            sizes = (int(x.shape[2]), int(x.shape[3]))
        out = [
            (n - 1) * s - 2 * self.padding[i] + self.kernel[i] + self.output_padding[i]
            for i, n in enumerate(sizes)
        ]
        phases = [-(-o // s) for o in out]  # positions per phase: ceil(out / s)
        before = [-self.d_min[i] for i in (0, 1)]  # rows/columns to add (negative: to cut) on each side
        after = [phases[i] + self.d_max[i] - sizes[i] for i in (0, 1)]
        rows = slice(max(0, -before[0]), sizes[0] - max(0, -after[0]))
        columns = slice(max(0, -before[1]), sizes[1] - max(0, -after[1]))
        pad = [max(0, before[1]), max(0, after[1]), max(0, before[0]), max(0, after[0])]  # last dim first
        x = F.pad(x[:, :, rows, columns], pad)
        y = F.pixel_shuffle(F.conv2d(x, self.weight, self.bias), s)
        return y[:, :, : out[0], : out[1]]


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 ``test`` against uint8 ``reference`` (same shape), in dB.

    ``10 * log10(255**2 / MSE)``; ``inf`` when the arrays are equal. Raises :class:`UsageError` for other
    dtypes or mismatched shapes.
    """
    if not isinstance(reference, np.ndarray) or not isinstance(test, np.ndarray):
        raise UsageError(f"psnr compares two uint8 arrays, got {_describe(reference)} and {_describe(test)}")
    if reference.dtype != np.uint8 or test.dtype != np.uint8 or reference.shape != test.shape:
        raise UsageError(
            f"psnr compares two uint8 arrays of one shape, got {_describe(reference)} and {_describe(test)}"
        )
    diff = reference.astype(np.float64) - test.astype(np.float64)
    mse = float(np.mean(diff * diff)) if diff.size else 0.0
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def int8_path(
    fp32_model: Path,
    calibration: CalibrationSet,
    cache_dir: Path,
    *,
    for_tensorrt: bool = False,
    method: str = DEFAULT_CALIBRATION_METHOD,
) -> Path:
    """Where :func:`quantize_int8` keeps the int8 model of ``fp32_model`` for ``calibration``:
    ``<fp32 name>-int8[trt]-<method>-<calibration digest[:16]>-q<QUANT_REVISION>.onnx``."""
    layout = "int8trt" if for_tensorrt else "int8"
    digest = calibration.digest()[:16]
    return cache_dir / f"{fp32_model.stem}-{layout}-{method}-{digest}-q{QUANT_REVISION}.onnx"


def quantize_int8(
    fp32_model: Path,
    calibration: CalibrationSet,
    cache_dir: Path,
    *,
    for_tensorrt: bool = False,
    method: str = DEFAULT_CALIBRATION_METHOD,
) -> Path:
    """Return the path of ``fp32_model``'s int8 QDQ model calibrated on ``calibration``, quantizing it first
    unless ``cache_dir`` already holds it (:func:`int8_path`: the fp32 file's name, the calibration digest,
    the method and :data:`QUANT_REVISION`).

    ``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, activations uint8
    (CPU) or symmetric int8 (``for_tensorrt``), ``method`` ``"minmax"``, ``"percentile"`` or ``"entropy"``
    ranges measured on ``calibration`` in batches of :data:`CALIBRATION_BATCH`. Takes seconds (Wav2Lip) to
    a minute (UNet-328 on 2 cores).

    Raises :class:`UsageError` (unknown method), :class:`BackendUnavailableError` (onnxruntime missing) and
    :class:`OutputNotWritableError` (``cache_dir`` cannot be written).
    """
    if method not in CALIBRATION_METHODS:
        raise UsageError(
            f"unknown calibration method {method!r}; expected one of: {', '.join(CALIBRATION_METHODS)}"
        )
    path = int8_path(fp32_model, calibration, cache_dir, for_tensorrt=for_tensorrt, method=method)
    if path.is_file():
        return path
    quantization = _import_quantization()
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    # The exporter writes the image input first, then the audio, and drops an input the network ignores
    # (the identity stand-in's audio).
    inputs = [i.name for i in graph.input if i.name not in initializers]
    reader = _CalibrationReader(calibration, inputs[0], inputs[1] if len(inputs) > 1 else None)
    # Left in float: ONNX Runtime's CPU provider has no int8 ConvTranspose, so a quantized one runs in float
    # anyway, after dequantizing its weights on every run (Wav2Lip's six: a third of the int8 model's time;
    # TensorRT has int8 deconvolution, so its layout quantizes them). The batch norms the exporter could not
    # fold (those after a ConvTranspose) stay float too: quantized, they cost 1.1 dB on Wav2Lip and time.
    float_ops = {"BatchNormalization"} if for_tensorrt else {"BatchNormalization", "ConvTranspose"}
    keep_float = [n.name for n in graph.node if n.op_type in float_ops and n.name]
    # TensorRT takes int8 Q/DQ with zero point 0 only, and adds biases in float (no int32 bias DQ).
    tensorrt = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    # Not CalibMaxIntermediateOutputs: onnxruntime 1.32's MinMax calibrator drops (instead of merging) the
    # ranges collected when that count is reached ("No data is collected." for 8 batches of 8). Its
    # instrumented model returns per-tensor minima and maxima only, so memory stays small without it.
    extra: dict[str, Any] = dict(tensorrt) if for_tensorrt else {}
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "percentile": quantization.CalibrationMethod.Percentile,
        "entropy": quantization.CalibrationMethod.Entropy,
    }

    def write(tmp: Path) -> None:
        quantization.quantize_static(
            str(fp32_model),
            str(tmp),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QInt8 if for_tensorrt else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep_float,
            extra_options=extra,
        )

    with _without_preprocessing_advice():
        _write_atomically(path, write)
    return path


class _PreprocessingAdvice(logging.Filter):
    """Drops two onnxruntime quantizer warnings that are only noise here: "Please consider to run
    pre-processing before quantization" (we measured ``quant_pre_process`` and do not use it:
    docs/models.md) and "Axis 1 is out-of-range for weight ... with rank 1" (per-channel quantization
    meeting a 1-D weight, such as a batch norm's scale, which it then quantizes per tensor, as it should)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pre-processing" not in message and "is out-of-range for weight" not in message


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    root = logging.getLogger()  # onnxruntime.quantization logs with logging.warning(), on the root logger
    advice = _PreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def float16_model(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """``fp32`` converted to float16 inside, float32 at its inputs and outputs (``keep_io_types=True``).

    Uses ``onnxruntime.transformers.float16`` (in every onnxruntime wheel), else ``onnxconverter_common``.
    Raises :class:`BackendUnavailableError` when neither is importable.
    """
    convert = _float16_converter()
    converted: onnx.ModelProto = convert(fp32, keep_io_types=True)
    return converted


def cached_float16(fp32_model: Path) -> Path:
    """Return the path of ``fp32_model``'s fp16 conversion (:func:`float16_model`), beside it as
    ``<name>-fp16-h<FP16_REVISION>.onnx``, converting it first unless the file is there.

    Raises :class:`BackendUnavailableError` and :class:`OutputNotWritableError`.
    """
    path = fp32_model.with_name(f"{fp32_model.stem}-fp16-h{FP16_REVISION}.onnx")
    if path.is_file():
        return path
    convert = _float16_converter()
    import onnx

    def write(tmp: Path) -> None:
        onnx.save(convert(onnx.load(str(fp32_model)), keep_io_types=True), str(tmp))

    _write_atomically(path, write)
    return path


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write the model cache folder {folder}: {exc.strerror}; pass a writable folder"
        ) from exc
    tmp = Path(name)
    try:
        write(tmp)
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _import_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise BackendUnavailableError(
            "--precision int8 needs onnxruntime (its quantization tools), which is not installed: "
            "pip install onnxruntime, or use --precision fp32"
        ) from exc
    return quantization


def _float16_converter() -> Any:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError as exc:
            raise BackendUnavailableError(
                "--precision fp16 with the onnx backend converts the model with onnxruntime.transformers "
                "(part of onnxruntime-gpu) or onnxconverter-common, and neither is importable: "
                "pip install 'lipsync-tools[gpu]' (or pip install onnxconverter-common), or use "
                "--backend torch"
            ) from exc
    return convert_float_to_float16


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
