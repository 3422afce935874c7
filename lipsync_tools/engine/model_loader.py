"""Choosing and loading the lip-sync model for the engine: real weights, embedded weights, random, identity.

Precedence (documented in docs/engine.md):

1. ``checkpoint`` given: Wav2Lip from that file, strictly checked (``model`` must be ``None`` or
   ``"wav2lip"``);
2. ``model == "random"``: deterministic random Wav2Lip weights from ``seed`` (even if the package embeds a
   checkpoint: that is "told otherwise"). This is NOT lip-sync; callers must say so loudly;
3. ``model == "identity"``: returns the input crop (tests of everything around the model);
4. otherwise (``None`` or ``"wav2lip"``): the checkpoint embedded in the package, if there is one;
5. else a :class:`UsageError` saying which option to pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import UsageError
from ..models import (
    DEFAULT_BACKEND,
    BackendOptions,
    IdentityModel,
    InferenceBackend,
    create_backend,
    load_wav2lip,
    random_wav2lip,
)

MODEL_NAMES: tuple[str, ...] = ("random", "wav2lip", "identity")

RANDOM_WEIGHTS_WARNING = (
    "WARNING: the model has RANDOM weights (--model random): its output is NOT lip-sync. Use it for demos, "
    "tests and benchmarks only; pass --checkpoint wav2lip.pth (or a package with an embedded checkpoint) for "
    "real lip-sync."
)
"""What servers and ``render`` print when :attr:`ModelInfo.is_random` is true."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Which model the engine runs and what loading it cost.

    ``name``: ``"random"``, ``"wav2lip"`` or ``"identity"``. ``source``: where the weights came from
    (``"seed 0"``, a checkpoint path, ``"embedded in PATH"``, ``"built-in"``). ``backend``: the inference
    backend's name (``"torch"``, ``"onnx"``). ``load_seconds``: weights plus backend construction (ONNX
    export included); ``warmup_seconds``: the first model calls made before serving.
    """

    name: str
    source: str
    is_random: bool
    backend: str
    load_seconds: float
    warmup_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "source": self.source, "is_random": self.is_random, "backend": self.backend,
            "load_seconds": round(self.load_seconds, 6), "warmup_seconds": round(self.warmup_seconds, 6),
        }


def load_inference_backend(
    model: str | None = None,
    checkpoint: Path | None = None,
    seed: int = 0,
    backend: str | None = None,
    package_checkpoint: bytes | None = None,
    cache_dir: Path | None = None,
    *,
    package_label: str = "the package",
    num_threads: int | None = None,
    warmup_batches: tuple[int, ...] = (1,),
) -> tuple[InferenceBackend, ModelInfo]:
    """Build the inference backend the options ask for; see the module docstring for the precedence.

    ``backend`` defaults to :data:`lipsync_tools.models.DEFAULT_BACKEND` (the faster one by measurement).
    ``cache_dir`` keeps ONNX exports between starts. ``warmup_batches``: batch sizes run once on zeros
    before returning, so the first real frame does not pay for lazy initialisation (empty: no warm-up).

    Raises :class:`UsageError` (unknown model name, conflicting options, no weights at all),
    :class:`~lipsync_tools.errors.InputNotFoundError` / :class:`~lipsync_tools.errors.CheckpointError`
    for a missing or mismatching checkpoint, and
    :class:`~lipsync_tools.errors.BackendUnavailableError` when the backend's runtime is missing.
    """
    if model is not None and model not in MODEL_NAMES:
        raise UsageError(f"unknown model {model!r}; expected one of: {', '.join(MODEL_NAMES)}")
    if checkpoint is not None and model not in (None, "wav2lip"):
        raise UsageError(f"--checkpoint loads Wav2Lip weights; it cannot be combined with --model {model}")
    started = time.perf_counter()
    network: nn.Module
    if checkpoint is not None:
        network = load_wav2lip(checkpoint)
        name, source = "wav2lip", str(checkpoint)
    elif model == "random":
        network = random_wav2lip(seed)
        name, source = "random", f"seed {seed}"
    elif model == "identity":
        network = IdentityModel()
        name, source = "identity", "built-in"
    elif package_checkpoint is not None:
        network = load_wav2lip(package_checkpoint, name=f"the checkpoint embedded in {package_label}")
        name, source = "wav2lip", f"embedded in {package_label}"
    else:
        wanted = "--model wav2lip needs --checkpoint PATH" if model == "wav2lip" else "no model weights given"
        raise UsageError(
            f"{wanted} and {package_label} embeds no checkpoint: pass --checkpoint wav2lip.pth for real "
            "lip-sync, or --model random --seed 0 for a demo with random weights (not lip-sync)"
        )
    chosen = backend or DEFAULT_BACKEND
    runtime_options = BackendOptions(num_threads=num_threads, onnx_cache_dir=cache_dir)
    runtime = create_backend(chosen, network, runtime_options)
    loaded = time.perf_counter()
    size = int(runtime.crop_size)
    for batch in warmup_batches:
        runtime.infer(np.zeros((batch, size, size, 3), np.uint8), np.zeros((batch, 1, 80, 16), np.float32))
    warm = time.perf_counter()
    info = ModelInfo(
        name=name, source=source, is_random=name == "random", backend=runtime.name,
        load_seconds=loaded - started, warmup_seconds=warm - loaded,
    )
    return runtime, info
