"""Engine fixtures over the session's ``head_package`` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync_tools.engine import Engine, EngineOptions, PackageStore
from lipsync_tools.models import IdentityModel, InferenceBackend, create_backend

PACKAGE_ID = "head"


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
