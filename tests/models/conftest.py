"""Shared fixtures for the model tests: models are big (36 M parameters), so build each once per module."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.models import Wav2Lip, random_wav2lip


@pytest.fixture(scope="package")
def random_model() -> Wav2Lip:
    """``random_wav2lip(0)``; tests must not modify it (backends get their own copies)."""
    return random_wav2lip(0)


@pytest.fixture(scope="package")
def batch8() -> tuple[np.ndarray, np.ndarray]:
    """Eight face-like uint8 BGR crops (smooth gradients plus noise) and eight matching mel windows."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    base = np.stack([60 + xx, 90 + yy, 140 + 0.5 * (xx + yy) / 2], axis=-1)
    crops = np.clip(base[None] + rng.normal(0, 12, (8, 96, 96, 3)), 0, 255).astype(np.uint8)
    mels = rng.uniform(-4.0, 4.0, (8, 1, 80, 16)).astype(np.float32)  # Wav2Lip's mel range is [-4, 4]
    return crops, mels
