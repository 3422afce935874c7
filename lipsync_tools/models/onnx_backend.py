"""ONNX Runtime backend: the torch generator exported to ONNX once, cached by a hash of its weights.

Export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs only
the ``onnx`` package, which is already a dependency, whereas the newer dynamo exporter would add
``onnxscript``. The batch axis is dynamic, so one file serves every batch size.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipsync_tools.errors import BackendUnavailableError, OutputNotWritableError
from lipsync_tools.models.backends import BackendOptions, check_batch, network_input_nhwc
from lipsync_tools.models.wav2lip import FACE_CHANNELS, MEL_BINS, MEL_STEPS

ONNX_OPSET = 17
# Bump when the export changes (names, axes, opset handling) so stale cache files are not reused.
EXPORT_REVISION = 1
INPUT_MEL = "mel"
INPUT_FACE = "face"
OUTPUT_CROP = "crop"


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


def export_onnx(model: nn.Module, target: str | os.PathLike[str] | io.BytesIO) -> None:
    """Export ``model`` (``forward(mel, face)``) to ONNX at ``target`` with a dynamic batch axis.

    Inputs ``mel`` float32 ``(B, 1, 80, 16)`` and ``face`` float32 ``(B, 6, S, S)``; output ``crop`` float32
    ``(B, 3, S, S)``. An input the model ignores (the identity model's ``mel``) is dropped by the exporter.
    """
    size = int(getattr(model, "crop_size", 96))
    # Batch 2 in the example so that nothing in the traced graph specialises on a batch of one.
    example = (torch.zeros(2, 1, MEL_BINS, MEL_STEPS), torch.zeros(2, FACE_CHANNELS, size, size))
    model.eval()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is what we choose, see module doc.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            target,  # type: ignore[arg-type]  # the TorchScript exporter also writes to a file object
            dynamo=False,
            input_names=[INPUT_MEL, INPUT_FACE],
            output_names=[OUTPUT_CROP],
            dynamic_axes={INPUT_MEL: {0: "batch"}, INPUT_FACE: {0: "batch"}, OUTPUT_CROP: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )


def cached_onnx(model: nn.Module, cache_dir: Path) -> Path:
    """Return the path of ``model``'s ONNX export in ``cache_dir``, exporting it first if it is not there.

    The file is ``<architecture>-<digest[:20]>.onnx``; it is written to a temporary name and renamed, so a
    crash or a concurrent start never leaves a half-written file under the final name.
    Raises :class:`OutputNotWritableError` when ``cache_dir`` cannot be created or written.
    """
    arch = str(getattr(model, "architecture", type(model).__name__.lower()))
    path = cache_dir / f"{arch}-{weights_digest(model)[:20]}.onnx"
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
        export_onnx(model, tmp)
        os.replace(tmp, path)
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


class OnnxBackend:
    """ONNX Runtime (CPUExecutionProvider) inference; same contract as :class:`InferenceBackend`."""

    name = "onnx"

    def __init__(self, model: nn.Module, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        ort = _import_onnxruntime()
        self.crop_size: int = int(getattr(model, "crop_size", 96))
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.num_threads is not None:
            session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1  # the graph is a single chain; no parallel branches to run
        source: str | bytes
        if options.onnx_cache_dir is None:
            buffer = io.BytesIO()
            export_onnx(model, buffer)
            source = buffer.getvalue()
        else:
            source = str(cached_onnx(model, options.onnx_cache_dir))
        self.model_path = None if isinstance(source, bytes) else Path(source)
        self._session = ort.InferenceSession(source, session_options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def run_network(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        feed = {INPUT_FACE: np.ascontiguousarray(faces, dtype=np.float32)}
        if INPUT_MEL in self._inputs:
            feed[INPUT_MEL] = np.ascontiguousarray(mels, dtype=np.float32)
        (out,) = self._session.run([OUTPUT_CROP], feed)
        return np.asarray(out, dtype=np.float32)

    def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, mels, self.crop_size)
        faces = network_input_nhwc(crops).transpose(0, 3, 1, 2)
        out = self.run_network(faces, mels)  # (B, 3, S, S)
        pixels = np.rint(out * np.float32(255.0))
        np.clip(pixels, 0.0, 255.0, out=pixels)
        return pixels.transpose(0, 2, 3, 1).astype(np.uint8, order="C")
