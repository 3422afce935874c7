"""``lipsync models export``: a checkpoint to an ONNX model with a dynamic batch axis, checked against torch.

The file is written to a temporary name beside the output and renamed only after ONNX Runtime loaded it and
its output matched the torch model's, so a failed export never leaves a file that looks valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipsync_tools._atomic import atomic_replace, temp_path
from lipsync_tools.errors import OutputExistsError, OutputNotWritableError, UsageError
from lipsync_tools.models.families import LoadedNetwork, get_family, load_network, random_network

CHECK_BATCH = 2
MAX_ABS_DIFF = 1e-3  # float32 [0, 1] outputs; ONNX Runtime's fused kernels differ from torch by ~1e-6


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What was exported and how closely ONNX Runtime reproduces torch on a random batch."""

    output: Path
    family: str
    audio_mode: str
    source: str
    is_random: bool
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    max_abs_diff: float
    size_bytes: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "family": self.family,
            "audio_mode": self.audio_mode,
            "source": self.source,
            "is_random": self.is_random,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "max_abs_diff": self.max_abs_diff,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
        }


def export_model(
    checkpoint: str | Path,
    output: str | Path,
    *,
    family: str | None = None,
    audio_mode: str | None = None,
    seed: int = 0,
    force: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` (a path, or ``"random"`` for random weights of ``family``) to ONNX at ``output``.

    The family is detected from the checkpoint unless given. Raises :class:`OutputExistsError`,
    :class:`OutputNotWritableError`, :class:`UsageError` (ONNX output differs from torch by more than
    :data:`MAX_ABS_DIFF`) and the checkpoint loader's errors.
    """
    started = time.perf_counter()
    output = Path(output)
    if output.exists() and not force:
        raise OutputExistsError(f"{output} already exists; pass --force to overwrite it or choose another -o")
    if not output.parent.is_dir():
        raise OutputNotWritableError(f"output folder {output.parent} does not exist; create it first")
    network: LoadedNetwork
    if str(checkpoint) == "random":
        network = random_network(get_family(family), audio_mode, seed)
    else:
        network = load_network(Path(checkpoint), family=family, audio_mode=audio_mode)
    import onnxruntime as ort

    from lipsync_tools.models.backends import call_network
    from lipsync_tools.models.onnx_backend import export_onnx

    fam, mode = network.family, network.audio_mode
    tmp = temp_path(output)
    try:
        try:
            export_onnx(network.module, str(tmp), fam)
        except OSError as exc:
            raise OutputNotWritableError(f"cannot write {tmp}: {exc.strerror}") from exc
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        n = fam.network_size
        image = rng.random((CHECK_BATCH, 6, n, n), dtype=np.float32)
        audio = rng.standard_normal((CHECK_BATCH, *mode.network_shape), dtype=np.float32)
        image_name, audio_name, output_name = fam.onnx_names
        (onnx_out,) = session.run([output_name], {image_name: image, audio_name: audio})
        import torch

        with torch.inference_mode():
            torch_out = call_network(
                network.module, fam, torch.from_numpy(image), torch.from_numpy(audio)
            ).numpy()
        diff = float(np.abs(np.asarray(onnx_out) - torch_out).max())
        if not diff <= MAX_ABS_DIFF:
            raise UsageError(
                f"the ONNX export differs from the torch model by {diff:.3g} (limit {MAX_ABS_DIFF}); "
                "nothing was written. Report this with the checkpoint's family and torch version"
            )
        inputs = {i.name: list(i.shape) for i in session.get_inputs()}
        outputs = {o.name: list(o.shape) for o in session.get_outputs()}
        try:
            atomic_replace(tmp, output)
        except OSError as exc:
            raise OutputNotWritableError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        output=output,
        family=fam.name,
        audio_mode=mode.name,
        source=network.source,
        is_random=network.is_random,
        inputs=inputs,
        outputs=outputs,
        max_abs_diff=diff,
        size_bytes=output.stat().st_size,
        seconds=time.perf_counter() - started,
    )
