from __future__ import annotations

from pathlib import Path

import pytest

from lipsync_tools.pipeline.build import build_package


@pytest.fixture(scope="session")
def head_package(talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from the real carphone talking head with speech."""
    out = tmp_path_factory.mktemp("pkg") / "head.sanders"
    build_package(talking_head_mp4, out)
    return out
