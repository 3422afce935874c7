"""Engine fixtures: one real package built from the talking-head video, shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync_tools.engine import Engine, EngineOptions, PackageStore
from lipsync_tools.models import IdentityModel, InferenceBackend, create_backend
from lipsync_tools.pipeline.build import build_package

PACKAGE_ID = "head"


@pytest.fixture(scope="session")
def head_package(talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from the carphone talking head with speech (120 frames, 176x144, 96-px crops)."""
    out = tmp_path_factory.mktemp("engine") / "head.sanders"
    build_package(talking_head_mp4, out)
    return out


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
