"""A real server (uvicorn on 127.0.0.1) over a fake engine: transport and connection tests without a model.

The fake engine answers every ``frame_request`` with a frame of the size the test chooses, counts what it
rendered, and can be slowed down; the store holds one package ``fake``. Everything else (the ASGI app,
uvicorn, the codecs, sessions, limits) is the real server, so what these tests see is what clients see.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lipsync_tools.engine.capacity import Capacity
from lipsync_tools.engine.requests import EngineRequest, EngineResult, ImageKind, Reason
from lipsync_tools.errors import ProtocolError, RequestError
from lipsync_tools.server import Components, LipsyncServer, Metrics, ServerConfig, SessionLimits

FAKE_PACKAGE = "fake"


@dataclass
class FakeInfo:
    id: str = FAKE_PACKAGE
    n_frames: int = 50
    fps: float = 25.0
    width: int = 1280
    height: int = 720
    load_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "n_frames": self.n_frames, "fps": self.fps, "width": self.width,
                "height": self.height}


@dataclass
class FakePackage:
    info: FakeInfo


class FakeStore:
    """One package, ``fake`` (1280x720 by default, 50 frames at 25 fps)."""

    def __init__(self, info: FakeInfo) -> None:
        self.packages = {info.id: FakePackage(info)}

    def load(self, package_id: str, path: Any) -> FakeInfo:
        raise ProtocolError("forbidden", "the fake store loads nothing")

    def unload(self, package_id: str) -> None:
        self.packages.pop(package_id, None)

    def get(self, package_id: str) -> FakePackage:
        if package_id not in self.packages:
            raise RequestError(Reason.UNKNOWN_PACKAGE, f"package {package_id!r} is not loaded")
        return self.packages[package_id]

    def infos(self) -> list[FakeInfo]:
        return [p.info for p in self.packages.values()]

    def __contains__(self, package_id: object) -> bool:
        return package_id in self.packages


@dataclass
class FakeModelInfo:
    name: str = "fake"
    is_random: bool = False
    warnings: list[str] = field(default_factory=list)
    load_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "source": "fake", "backend": "none"}


@dataclass
class FakeModel:
    key: str = "fake-model"
    capacity: Capacity = field(default_factory=lambda: Capacity({1: 0.001}))


class FakeEngine:
    """Renders a frame of the package's size in ``delay`` seconds (a fresh buffer each time, as the real
    engine does); ``rendered`` counts the frames it made. Thread-safe counters: tests read them from their
    own thread."""

    def __init__(self, info: FakeInfo, delay: float = 0.0) -> None:
        self.info = info
        self.delay = delay
        self.post_seconds = 0.0
        self._lock = threading.Lock()
        self._rendered = 0

    @property
    def rendered(self) -> int:
        with self._lock:
            return self._rendered

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _frame(self, index: int, image: ImageKind, silence: bool) -> EngineResult:
        with self._lock:
            self._rendered += 1
        width, height = self.info.width, self.info.height
        if image in (ImageKind.RAW_BGR, ImageKind.CROP_ONLY):
            payload = b"\x07" * (width * height * 3)  # touched memory, not calloc's lazy zero pages
            rect = (0, 0, width, height) if image is ImageKind.CROP_ONLY else None
        else:
            payload, rect = b"\xff\xd8\xff\xd9", None
            if image in (ImageKind.CROP_JPEG,):
                rect = (0, 0, width, height)
        return EngineResult(frame_index=index, image=image, width=width, height=height, rect=rect,
                            silence=silence, payload=payload)

    async def process(self, request: EngineRequest, *, stream: Any | None = None, stream_frame: int = 0,
                      deadline: float | None = None) -> EngineResult:
        if request.frame_index >= self.info.n_frames:
            raise RequestError(Reason.FRAME_OUT_OF_RANGE, f"frame {request.frame_index} is out of range")
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._frame(request.frame_index, request.image, False)

    async def open_stream(self, package_id: str) -> None:
        return None

    async def model_for(self, package_id: str) -> FakeModel:
        return FakeModel()

    def expected_latency(self, model: Any) -> float:
        return self.delay

    async def original_frame(self, package_id: str, frame_index: int, image_format: ImageKind,
                             jpeg_quality: int) -> EngineResult:
        return self._frame(frame_index, image_format, True)


def fake_components(info: FakeInfo | None = None, delay: float = 0.0) -> tuple[Components, list[FakeEngine]]:
    """Components of a server over :class:`FakeEngine`; the list gets the engine once the server made it."""
    info = info or FakeInfo()
    engines: list[FakeEngine] = []

    def make_engine(store: Any, model: Any, config: ServerConfig, metrics: Metrics) -> FakeEngine:
        engine = FakeEngine(info, delay)
        engines.append(engine)
        return engine

    components = Components(make_store=lambda: FakeStore(info),
                            load_model=lambda config, store: (None, FakeModelInfo()),
                            make_engine=make_engine)
    return components, engines


FAST_LIMITS = SessionLimits(slow_client_seconds=1.0, close_timeout_seconds=0.5, max_inflight_requests=2)
"""Limits small enough that slow-client tests finish in seconds."""


@contextlib.contextmanager
def fake_server(info: FakeInfo | None = None, delay: float = 0.0,
                **overrides: Any) -> Iterator[tuple[LipsyncServer, FakeEngine]]:
    """A ready server over a fake engine on 127.0.0.1 (a free port); ``overrides`` go to ServerConfig."""
    components, engines = fake_components(info, delay)
    options: dict[str, Any] = {"port": 0, "sessions": FAST_LIMITS, "warmup_frames": 0}
    options.update(overrides)
    server = LipsyncServer(ServerConfig(**options), components=components)
    try:
        server.start_in_thread(ready_timeout=30)
        yield server, engines[0]
    finally:
        server.stop(join_timeout=15)
