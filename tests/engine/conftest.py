"""Engine fixtures over the session's ``head_package`` (tests/conftest.py), and a reader of raw results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.engine import Engine, EngineOptions, EngineResult, ImageKind, PackageStore
from lipsync_tools.models import IdentityModel, InferenceBackend, create_backend

PACKAGE_ID = "head"


def raw_pixels(result: EngineResult) -> np.ndarray:
    """A RAW_BGR or CROP_ONLY result's payload as uint8 ``(height, width, 3)`` (no copy)."""
    assert result.image in (ImageKind.RAW_BGR, ImageKind.CROP_ONLY), f"{result.image} payload is encoded"
    return np.frombuffer(result.payload, np.uint8).reshape(result.height, result.width, 3)


@pytest.fixture(scope="session")
def store(head_package: Path) -> PackageStore:
    """A store with ``head_package`` loaded as ``"head"``; tests must not unload it."""
    s = PackageStore()
    s.load(PACKAGE_ID, head_package)
    return s


@pytest.fixture(scope="session")
def identity_backend() -> InferenceBackend:
    """The identity model on the torch backend: returns its input crops."""
    return create_backend("torch", IdentityModel())


@pytest.fixture
def engine(store: PackageStore, identity_backend: InferenceBackend) -> Engine:
    return Engine(store, identity_backend, EngineOptions(max_batch=4, max_wait_ms=20.0, queue_limit=16))
