"""Helpers to run real servers on 127.0.0.1 in a background thread, shared by the server and client tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lipsync_tools.pipeline.build import build_package
from lipsync_tools.protocol import PCM_WINDOW_SAMPLES
from lipsync_tools.server import Components, LipsyncServer, PackageSpec, ServerConfig, SessionLimits

PACKAGE_ID = "astro"

TEST_LIMITS = SessionLimits(max_skipped_frames=5, slow_client_seconds=2.0, close_timeout_seconds=1.0)
"""Session limits small enough that the slow-client tests finish in seconds."""


def build_avatar(video: Path, folder: Path) -> Path:
    """A real package built from ``video`` (the astronaut clip: 50 frames, 320x240, 25 fps)."""
    return build_package(video, folder / f"{PACKAGE_ID}.sanders").output


@contextlib.contextmanager
def running_server(config: ServerConfig, components: Components | None = None,
                   ready_timeout: float | None = 120.0) -> Iterator[LipsyncServer]:
    """Serve ``config`` from a thread (port 0 → a free port, see ``server.url``); stop it afterwards."""
    server = LipsyncServer(config, components=components)
    try:
        server.start_in_thread(ready_timeout=ready_timeout)
        yield server
    finally:
        server.stop(join_timeout=15)


def random_model_config(package: Path, onnx_cache: Path, **overrides: object) -> ServerConfig:
    """Random Wav2Lip weights (seed 0) on ONNX Runtime, the package as ``astro``, test session limits."""
    options: dict[str, object] = {
        "packages": (PackageSpec(id=PACKAGE_ID, path=package),), "port": 0, "model": "random", "seed": 0,
        "backend": "onnx", "onnx_cache_dir": onnx_cache, "sessions": TEST_LIMITS, "max_wait_ms": 2.0,
    }
    options.update(overrides)
    return ServerConfig(**options)  # type: ignore[arg-type]


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Loud noise (about -13 dBFS): never silent, so every frame runs the model."""
    return np.random.default_rng(seed).integers(-8000, 8000, int(seconds * 16000), dtype=np.int16)


def noise_window(seed: int = 0) -> np.ndarray:
    """One PCM window of :func:`speech_like` audio."""
    return speech_like(PCM_WINDOW_SAMPLES / 16000, seed)
