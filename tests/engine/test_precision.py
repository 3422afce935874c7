"""engine/precision.py and load_model(runtime=...): int8 calibrated on the package's own frames, checked
against fp32 on other frames of it, served only when it passes the 30 dB gate (or when forced)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.engine import precision as precision_module
from lipsync_tools.engine.model_loader import PackageModelHints, RuntimeChoice, load_model
from lipsync_tools.engine.precision import PrecisionSamples, QualityCheck, package_samples, split_frames
from lipsync_tools.errors import UsageError
from lipsync_tools.models.families import get_family
from lipsync_tools.package.reader import open_package


@pytest.mark.parametrize("n", [1, 2, 3, 10, 48, 120, 5000])
def test_calibration_and_held_out_frames_are_disjoint_and_span_the_package(n: int) -> None:
    calibration, held = split_frames(n)
    assert calibration and held
    assert len(calibration) <= 32 and len(held) <= 16
    if n > 1:
        assert not set(calibration) & set(held)
        assert min(calibration + held) == 0 and max(calibration + held) == n - 1  # from end to end
    if n >= 48:
        assert (len(calibration), len(held)) == (32, 16)
        assert max(held) - min(held) > n // 2  # held-out frames are not bunched at one end


def test_samples_are_the_frames_network_inputs(head_package: Path) -> None:
    package = open_package(head_package, mmap=True, load_frames=False)
    family = get_family("wav2lip")
    mode = family.audio_mode(None)
    samples = package_samples(package, family, mode, None, [0, 5, 9])
    assert samples.crops.shape == (3, 96, 96, 3) and samples.crops.dtype == np.uint8
    np.testing.assert_array_equal(samples.crops[1], package.crops[5])
    start = int(package.mel_index[9])
    np.testing.assert_array_equal(samples.audio[2, 0], package.mel[:, start : start + 16])
    calibration = samples.calibration(family)
    assert calibration.faces.shape == (3, 6, 96, 96) and calibration.audio.shape == (3, 1, 80, 16)


def test_int8_is_calibrated_on_the_package_and_reports_its_quality(head_package: Path, tmp_path: Path):
    package = open_package(head_package, mmap=True, load_frames=False)
    loaded = load_model("random", seed=0, backend="onnx", cache_dir=tmp_path,
                        hints=PackageModelHints.from_package(package, with_checkpoint=False),
                        runtime=RuntimeChoice(precision="int8"), warmup_batches=())
    info = loaded.info
    assert info.precision_requested == "int8"
    assert info.quality is not None and info.quality["frames"] == 16
    assert info.quality["threshold_db"] == 30.0
    # whichever way the gate went, what runs is what the info says, and a refusal is said loudly
    assert info.precision == ("int8" if info.quality["passed"] else "fp32")
    assert loaded.backend.precision == info.precision  # type: ignore[attr-defined]
    if not info.quality["passed"]:
        assert any("serving fp32 instead" in w for w in info.warnings)
    assert info.to_dict()["precision"] == info.precision


@pytest.mark.parametrize("force", [False, True])
def test_below_the_gate_int8_falls_back_to_fp32_unless_forced(
    head_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    def poor(reference: object, candidate: object, held: PrecisionSamples) -> QualityCheck:
        return QualityCheck(psnr_db=21.5, frames=len(held.frames))

    monkeypatch.setattr(precision_module, "compare_outputs", poor)
    package = open_package(head_package, mmap=True, load_frames=False)
    loaded = load_model("random", seed=0, backend="onnx", cache_dir=tmp_path,
                        hints=PackageModelHints.from_package(package, with_checkpoint=False),
                        runtime=RuntimeChoice(precision="int8", force_precision=force), warmup_batches=())
    assert loaded.info.precision == ("int8" if force else "fp32")
    assert loaded.info.quality == {"psnr_db": 21.5, "identical": False, "frames": 16, "threshold_db": 30.0,
                                   "passed": False}
    warning = next(w for w in loaded.info.warnings if "PSNR 21.5 dB" in w)
    assert "--force-precision" in warning
    assert ("running int8 anyway" in warning) == force and ("serving fp32 instead" in warning) != force


def test_int8_without_a_package_and_bad_choices_are_refused_clearly() -> None:
    with pytest.raises(UsageError, match="calibrates the model on a package"):
        load_model("random", backend="onnx", runtime=RuntimeChoice(precision="int8"), warmup_batches=())
    with pytest.raises(UsageError, match="precision is 'int4'"):
        RuntimeChoice(precision="int4")
    with pytest.raises(UsageError):
        RuntimeChoice(device="gpu0")
