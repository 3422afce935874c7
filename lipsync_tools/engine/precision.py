"""int8 from a package's own frames: the calibration set, the held-out frames, and the quality gate.

Static int8 quantization (``models/quantize.py``, ONNX Runtime QDQ) needs inputs that look like what the
model will see, to choose each activation's range. Nothing is more like it than the avatar's own crops and
audio features, which its package stores. So the engine takes them from the package:

* **calibration**: :data:`CALIBRATION_FRAMES` frames spread evenly over the package (the network inputs
  built exactly as a served frame's: the family's masked crop and reference, and the audio window the
  package's own audio gives that frame);
* **held out**: :data:`HELD_OUT_FRAMES` other frames, never used to calibrate, on which the int8 model's
  output is compared with fp32's (PSNR over the uint8 crops the engine composites).

The gate: a PSNR below :data:`~lipsync_tools.models.quantize.INT8_MIN_PSNR_DB` (30 dB) means the int8 model
visibly departs from fp32 on this avatar; the engine then serves fp32 and warns, unless told to force int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.mel import mel_window
from ..models.family import AudioMode, ModelFamily
from ..models.quantize import INT8_MIN_PSNR_DB, CalibrationSet, psnr
from .features import package_rows

CALIBRATION_FRAMES = 32
"""Frames of the package that calibrate int8 (fewer when the package is short)."""

HELD_OUT_FRAMES = 16
"""Other frames on which int8 is compared with fp32 (fewer when the package is short)."""


@dataclass(frozen=True)
class PrecisionSamples:
    """A package's frames as model inputs: uint8 crops ``(N, S, S, 3)`` and float32 audio ``(N, *shape)``."""

    crops: np.ndarray
    audio: np.ndarray
    frames: tuple[int, ...]

    def calibration(self, family: ModelFamily) -> CalibrationSet:
        """These frames as network inputs (what ONNX Runtime's calibration feeds the fp32 model)."""
        return CalibrationSet.from_crops(family, self.crops, self.audio, size=len(self.frames))


@dataclass(frozen=True, kw_only=True)
class QualityCheck:
    """int8 against fp32 on a package's held-out frames."""

    psnr_db: float
    frames: int
    threshold_db: float = INT8_MIN_PSNR_DB

    @property
    def passed(self) -> bool:
        return self.psnr_db >= self.threshold_db

    def to_dict(self) -> dict[str, Any]:
        value = self.psnr_db if np.isfinite(self.psnr_db) else None  # JSON has no infinity: equal outputs
        return {"psnr_db": None if value is None else round(value, 2), "identical": value is None,
                "frames": self.frames, "threshold_db": self.threshold_db, "passed": self.passed}


def split_frames(n_frames: int, calibration: int = CALIBRATION_FRAMES,
                 held_out: int = HELD_OUT_FRAMES) -> tuple[list[int], list[int]]:
    """Frame indices to calibrate on and to hold out: both spread over the whole package, disjoint.

    With fewer than ``calibration + held_out`` frames, the frames alternate between the two (a package of
    one frame is calibrated and checked on that frame: nothing else exists).
    """
    if n_frames < 1:
        raise ValueError("a package has at least one frame")
    if n_frames == 1:
        return [0], [0]
    wanted = min(n_frames, calibration + held_out)
    spread = np.unique(np.linspace(0, n_frames - 1, wanted).round().astype(int)).tolist()
    step = max(2, round((calibration + held_out) / max(1, held_out)))
    held = spread[1::step]  # every step-th frame: both sets cover the package from end to end
    taken = set(held)
    calib = [f for f in spread if f not in taken]
    return calib, held


def package_samples(package: Any, family: ModelFamily, mode: AudioMode, encoder: Any | None,
                    frames: list[int]) -> PrecisionSamples:
    """The network inputs of ``frames`` of ``package`` (a :class:`~lipsync_tools.package.reader.Package`):
    its crops and the audio window its own audio gives each frame (mel, AVE rows stored or computed with
    ``encoder``, or imported rows)."""
    crops = np.ascontiguousarray(np.asarray(package.crops)[frames])
    if mode.name == "mel":
        mel, starts = np.asarray(package.mel), np.asarray(package.mel_index)
        windows = [mel_window(mel, int(starts[f])) for f in frames]
        audio = np.stack(windows).astype(np.float32).reshape(len(frames), *mode.network_shape)
    else:
        rows = package_rows(package, mode, encoder)
        if rows is None:  # no rows stored and no encoder: calibrate on silence, as replay would have none
            rows = np.zeros((package.n_frames + 2, *mode.row_shape), np.float32)
        audio = np.stack([mode.window(rows, f) for f in frames]).astype(np.float32)
    return PrecisionSamples(crops=crops, audio=np.ascontiguousarray(audio), frames=tuple(frames))


def compare_outputs(reference: Any, candidate: Any, held: PrecisionSamples) -> QualityCheck:
    """PSNR of ``candidate``'s output crops against ``reference``'s (two inference backends) on ``held``."""
    expected = reference.infer(held.crops, held.audio)
    found = candidate.infer(held.crops, held.audio)
    return QualityCheck(psnr_db=psnr(expected, found), frames=len(held.frames))


__all__ = ["CALIBRATION_FRAMES", "HELD_OUT_FRAMES", "PrecisionSamples", "QualityCheck", "compare_outputs",
           "package_samples", "split_frames"]
