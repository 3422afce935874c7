"""A real server for the client tests: the astronaut package and the identity model (fast to load)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_tools.server import PackageSpec, ServerConfig
from tests.server.servers import PACKAGE_ID, TEST_LIMITS, build_avatar, running_server


@pytest.fixture(scope="session")
def client_server_url(astronaut_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a ready server with ``astro`` loaded; the identity model returns its input crop."""
    package = build_avatar(astronaut_mp4, tmp_path_factory.mktemp("client-package"))
    config = ServerConfig(packages=(PackageSpec(id=PACKAGE_ID, path=package),), port=0, model="identity",
                          backend="torch", sessions=TEST_LIMITS)
    with running_server(config) as server:
        yield server.url
