"""``lipsync models quantize``: make a package's int8 model ahead of time, and say how close it is to fp32.

A server asked for ``--precision int8`` makes the int8 model on first use (calibrating on the package whose
request loads it); that costs seconds to minutes at the first start. :func:`quantize_package` does the same
work offline, into the ONNX cache folder a server is given with ``--onnx-cache``, so every later start finds
the file (its name carries the fp32 model's digest and the calibration set's: the same package and model
give the same file). It chooses the model exactly as ``lipsync serve PACKAGE`` would: ``checkpoint``, else
``model`` (``random``), else the package's embedded checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..package.reader import open_package
from .model_loader import AudioEncoderChoice, PackageModelHints, RuntimeChoice, load_model


@dataclass(frozen=True, kw_only=True)
class QuantizeResult:
    """What :func:`quantize_package` made: the int8 file, its quality against fp32, and the time it took."""

    package: Path
    model_path: Path | None
    family: str
    source: str
    is_random: bool
    quality: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.quality.get("passed"))

    def summary(self) -> dict[str, Any]:
        return {
            "package": str(self.package), "model_path": str(self.model_path) if self.model_path else None,
            "family": self.family, "source": self.source, "is_random": self.is_random,
            "quality": self.quality, "passed": self.passed, "seconds": round(self.seconds, 3),
        }


def quantize_package(
    package_path: str | Path,
    cache_dir: Path | None,
    *,
    model: str | None = None,
    checkpoint: Path | None = None,
    seed: int = 0,
    audio_encoder: str | None = None,
) -> QuantizeResult:
    """Make (or find) the int8 model of ``package_path``'s model in ``cache_dir`` and check it.

    Raises what :func:`~lipsync_tools.engine.model_loader.load_model` raises (no weights, a checkpoint of
    another family, ONNX Runtime missing, ...) and :class:`UsageError` when the cache folder is not given.
    The int8 model is made whatever its quality; :attr:`QuantizeResult.passed` says whether a server would
    serve it (``--force-precision`` otherwise).
    """
    if cache_dir is None:
        raise UsageError(
            "give the ONNX cache folder the server uses (--onnx-cache DIR): the int8 model goes there"
        )
    started = time.perf_counter()
    package = open_package(package_path, mmap=True, load_frames=False)
    loaded = load_model(
        model, checkpoint, seed, "onnx", cache_dir, family=package.family, audio_mode=package.audio_mode,
        audio_encoder=AudioEncoderChoice.parse(audio_encoder, seed) if package.audio_mode == "ave" else None,
        hints=PackageModelHints.for_weights(package, model, checkpoint, str(package_path)),
        runtime=RuntimeChoice(precision="int8", force_precision=True), warmup_batches=(),
    )
    info = loaded.info
    assert info.quality is not None  # int8 always checks
    return QuantizeResult(
        package=Path(package_path), model_path=getattr(loaded.backend, "model_path", None),
        family=info.family, source=info.source, is_random=info.is_random, quality=info.quality,
        seconds=time.perf_counter() - started,
    )


__all__ = ["QuantizeResult", "quantize_package"]
