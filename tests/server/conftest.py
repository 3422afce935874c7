"""Server fixtures: a real package from the astronaut video and one random-weights server for the module tree.

Model frames cost about 0.2 s each on a 2-core CPU, so tests use silence (original frames, no model) wherever
the model is not the point, and the shared server is started once per test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_tools.server import LipsyncServer
from tests.server.servers import build_avatar, random_model_config, running_server


@pytest.fixture(scope="session")
def avatar_package(astronaut_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``astro.sanders``: built once per test session from the astronaut video."""
    return build_avatar(astronaut_mp4, tmp_path_factory.mktemp("server-package"))


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports shared by every server of the session (the second start skips the export)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def live_server(
    avatar_package: Path, onnx_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LipsyncServer]:
    """A ready server with ``astro`` loaded and random weights, on 127.0.0.1 at a free port; run-time loads
    by path from the session's temporary folders (its --package-dir)."""
    config = random_model_config(avatar_package, onnx_cache, package_dir=tmp_path_factory.getbasetemp())
    with running_server(config) as server:
        yield server


@pytest.fixture
def url(live_server: LipsyncServer) -> str:
    return live_server.url
