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

from lipsync_tools._atomic import atomic_replace
from lipsync_tools.errors import BackendUnavailableError, OutputNotWritableError
from lipsync_tools.models.backends import BackendOptions, audio_mode_of, check_batch
from lipsync_tools.models.families import get_family
from lipsync_tools.models.family import ModelFamily, pixels_from_prediction

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


class OnnxBackend:
    """ONNX Runtime (CPUExecutionProvider) inference; same contract as :class:`InferenceBackend`."""

    name = "onnx"

    def __init__(
        self, model: nn.Module, options: BackendOptions | None = None, family: ModelFamily | None = None
    ) -> None:
        options = options or BackendOptions()
        ort = _import_onnxruntime()
        self.family = family or get_family(None)
        self.crop_size: int = self.family.crop_size
        self.audio_mode = audio_mode_of(model, self.family)
        self.audio_shape = self.audio_mode.network_shape
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.num_threads is not None:
            session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1  # the graph is a single chain; no parallel branches to run
        # Idle ONNX Runtime threads spin for a while after each run; on a few cores that starves the work
        # between model calls (AVE features in torch, compositing), measured 2.8 ms -> ~400 ms per frame.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source: str | bytes
        if options.onnx_cache_dir is None:
            buffer = io.BytesIO()
            export_onnx(model, buffer, self.family)
            source = buffer.getvalue()
        else:
            source = str(cached_onnx(model, options.onnx_cache_dir, self.family))
        self.model_path = None if isinstance(source, bytes) else Path(source)
        self._session = ort.InferenceSession(source, session_options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._names = self.family.onnx_names

    def run_network(self, faces: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.run_network`."""
        image_name, audio_name, output_name = self._names
        feed = {image_name: np.ascontiguousarray(faces, dtype=np.float32)}
        if audio_name in self._inputs:
            feed[audio_name] = np.ascontiguousarray(audio, dtype=np.float32)
        (out,) = self._session.run([output_name], feed)
        return np.asarray(out, dtype=np.float32)

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """See :meth:`InferenceBackend.infer`."""
        check_batch(crops, audio, self.family, self.audio_shape)
        out = self.run_network(self.family.network_input(crops), audio)
        return self.family.paste(crops, pixels_from_prediction(out))
