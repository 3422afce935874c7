"""Fixtures of the importer tests: real random-weight checkpoints, made once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``make(family, audio_mode)``: a ``.pth`` holding ``random_unet(family, audio_mode, 0).state_dict()``
    (a bare state dict, as LiveTalking's ultralight.pth and SyncTalk_2D's N.pth are), made once."""
    made: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("checkpoints")

    def make(family: str, audio_mode: str) -> Path:
        if (family, audio_mode) not in made:
            import torch

            from lipsync_tools.models.checkpoint import random_unet

            path = folder / f"{family}-{audio_mode}.pth"
            torch.save(random_unet(family, audio_mode, 0).state_dict(), path)
            made[family, audio_mode] = path
        return made[family, audio_mode]

    return make
