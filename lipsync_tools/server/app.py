"""The server's lifecycle and its ASGI app: state, startup, readiness, shutdown, routes, and the middleware.

State lives in one :class:`ServerState` built by :func:`lipsync_tools.server.run.LipsyncServer` and passed
to :func:`create_app`; nothing is kept in module globals, so tests can run several servers in one process.
How the engine parts are made is a :class:`Components` object, so tests can swap in a fake engine.

:func:`create_app` routes ``WebSocket /v1/stream`` to :mod:`lipsync_tools.server.connection`, the HTTP
endpoints to :mod:`lipsync_tools.server.endpoints` and the demo to :mod:`lipsync_tools.server.demo`, behind
two middlewares: :class:`ConnectionLimit` (``--max-connections``) and :class:`BearerAuth` (``--token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import numpy as np
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from lipsync_tools.engine.requests import PCM_WINDOW_SAMPLES, AudioKind, EngineRequest, ImageKind
from lipsync_tools.errors import LipsyncError, ProtocolError
from lipsync_tools.protocol import CODECS, ErrorCode, ErrorReply
from lipsync_tools.server.components import Components, ManagedEngine, ModelInfoLike
from lipsync_tools.server.config import ServerConfig
from lipsync_tools.server.connection import (
    CLOSE_TRY_AGAIN_LATER,
    accepted_subprotocol,
    offered_subprotocols,
    serve_stream,
)
from lipsync_tools.server.demo import demo_routes
from lipsync_tools.server.endpoints import Endpoints, error_response
from lipsync_tools.server.memory import freeze_startup_objects
from lipsync_tools.server.state import SharedState

if TYPE_CHECKING:
    from lipsync_tools.engine.capacity import Batching

log = logging.getLogger("lipsync.server")


@dataclass
class StartupReport:
    """What startup cost: seconds per phase, the model, the packages, and the process RSS afterwards;
    ``batching``: the engine's batch size and wait, measured or given (``None``: an engine that does not
    batch by measurement)."""

    url: str
    seconds: dict[str, float]
    model: ModelInfoLike
    packages: list[dict[str, Any]]
    rss_bytes: int
    warnings: list[str] = field(default_factory=list)
    batching: Batching | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``lipsync serve --json`` prints it as the ``ready`` event)."""
        return {
            "url": self.url,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "model": self.model.to_dict(),
            "packages": self.packages,
            "rss_bytes": self.rss_bytes,
            "warnings": self.warnings,
            "batching": self.batching.to_dict() if self.batching is not None else None,
        }


class ServerState(SharedState):
    """One server's state (:class:`~lipsync_tools.server.state.SharedState`) and its lifecycle: startup
    (packages, model, batching, engine, warm-up), readiness, heap trimming, shutdown."""

    def __init__(self, config: ServerConfig, components: Components | None = None) -> None:
        super().__init__(config, components)
        self.startup_report: StartupReport | None = None
        self.url = f"http://{config.host}:{config.port}"
        self.on_ready: Callable[[StartupReport], None] | None = None
        self.request_shutdown: Callable[[], None] = lambda: None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Load the startup packages and the model, start and warm the engine, then report ready.

        Runs as a background task so ``/healthz`` answers (and ``/readyz`` says 503) while it works. A failure
        is kept in ``startup_error`` and asks the server to shut down (``lipsync serve`` then exits non-zero).
        """
        started = time.perf_counter()
        seconds: dict[str, float] = {"package_open": 0.0, "frame_preload": 0.0, "feature_mapping": 0.0}
        try:
            if self.config.catalog is not None:
                from lipsync_tools.remote import load_catalog

                self.catalog = await asyncio.to_thread(load_catalog, self.config.catalog)
            async with self.load_lock:
                infos = []
                for spec in self.config.packages:
                    info = await asyncio.to_thread(self.load_package, spec.id, spec.path, self.config.frames)
                    infos.append(info)
                    for key, phase in (("package_open", "open"), ("frame_preload", "frame_preload"),
                                       ("feature_mapping", "feature_mapping")):
                        seconds[key] += float(info.load_seconds.get(phase, 0.0))
                    self.metrics.add_gauge("lipsync_packages_loaded", 1)
                loaded, model = await asyncio.to_thread(self.components.load_model, self.config, self.store)
                seconds["model_load"] = model.load_seconds
                self.model = model
                if self.on_ready is None:  # with on_ready, the report carries the warnings
                    for warning in model.warnings:
                        log.warning(warning)
                config = self.config
                if self.components.startup_capacity is not None:
                    measured = self.components.startup_capacity(loaded, self.store)
                    if measured is None:  # e.g. no startup package: nothing was measured
                        self.batching = config.batching(None)
                    else:
                        self.batching = config.batching(measured[1], measured_on=measured[0])
                    config = config.with_batching(self.batching)
                    self.admission.max_batch = self.batching.max_batch
                    log.info("batching: %s", self.batching.reason)
                engine = self.components.make_engine(self.store, loaded, config, self.metrics)
                t = time.perf_counter()
                await engine.start()
                self.engine = engine
                await self._warm_up(engine)
                seconds["warmup"] = time.perf_counter() - t
            seconds["total"] = time.perf_counter() - started
            if self.config.freeze_startup_objects:
                freeze_startup_objects()
            await self.trim_heap()  # what loading the model and the packages freed (imports, the export)
            self.ready = True
            self.metrics.set_gauge("lipsync_ready", 1)
            import psutil

            self.startup_report = StartupReport(
                url=self.url, seconds=seconds, model=model, packages=[i.to_dict() for i in infos],
                rss_bytes=int(psutil.Process().memory_info().rss),
                warnings=list(model.warnings), batching=self.batching,
            )
            if self.on_ready is not None:
                self.on_ready(self.startup_report)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.startup_error = exc
            # our own errors are clear in one line; only an unexpected one gets its traceback
            log.error("startup failed: %s", exc, exc_info=not isinstance(exc, LipsyncError))  # noqa: TRY400
            self.request_shutdown()

    async def trim_heap_periodically(self) -> None:
        """Every ``heap_trim_seconds``, :meth:`trim_heap`: what packages, sessions and replies freed would
        otherwise stay in glibc's arenas and grow RSS over hours (server/memory.py). Runs until cancelled."""
        interval = self.config.heap_trim_seconds
        if interval <= 0 or not self.heap.available:
            return
        while True:
            await asyncio.sleep(interval)
            await self.trim_heap()

    async def _warm_up(self, engine: ManagedEngine) -> None:
        """Run ``warmup_frames`` real (loud-noise, so not silent) frames through the whole path."""
        infos = self.store.infos()
        if not infos or self.config.warmup_frames <= 0:
            return
        noise = np.random.default_rng(0).integers(-8000, 8000, PCM_WINDOW_SAMPLES, dtype=np.int16)
        for i in range(self.config.warmup_frames):
            request = EngineRequest(package_id=infos[0].id, frame_index=i % infos[0].n_frames,
                                    audio=AudioKind.PCM16, samples=noise, image=ImageKind.JPEG)
            await engine.process(request)

    async def shutdown(self) -> None:
        """Stop the engine (pending frames are dropped)."""
        self.ready = False
        self.metrics.set_gauge("lipsync_ready", 0)
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.stop()
        if self.codec_pool is not None:
            self.codec_pool.shutdown(wait=False, cancel_futures=True)
            self.codec_pool = None  # encoding falls back to the event loop for whatever still runs


# --- middleware -------------------------------------------------------------------------------------------


BEARER_SUBPROTOCOL_PREFIX = "bearer."
"""A WebSocket subprotocol ``bearer.<token>`` carries the token for clients that cannot set a header."""

PUBLIC_PATHS = ("/healthz", "/demo")
"""Paths served without a token: liveness, and the demo page itself (it holds no data; the page asks for
the token and sends it with its own requests)."""


def _is_public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS)


class BearerAuth:
    """ASGI middleware: with a token configured, every request but ``/healthz`` and ``/demo`` must carry it.

    HTTP: ``Authorization: Bearer <token>``; else 401 with an ``unauthorized`` error_reply. WebSocket: the
    header, or (browsers cannot set headers on a WebSocket) the subprotocol ``bearer.<token>`` or the query
    parameter ``?token=<token>``; else accepted, then the error_reply as a JSON text frame and close 1008
    (docs/protocol.md, *Transport*), so a client learns why instead of seeing a bare handshake failure.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        token = state.config.token
        self._token = token.encode() if token else None

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        expected = b"Bearer " + self._token
        given = [dict(scope.get("headers") or []).get(b"authorization", b"")]
        if scope["type"] == "websocket":
            tokens = [p.removeprefix(BEARER_SUBPROTOCOL_PREFIX) for p in offered_subprotocols(scope)
                      if p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
            tokens += parse_qs((scope.get("query_string") or b"").decode("latin-1")).get("token", [])
            given += [b"Bearer " + t.encode("utf-8", "replace") for t in tokens]
        # compare_digest: the time taken does not reveal how much of the token was right
        return any(hmac.compare_digest(g, expected) for g in given)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self._token is None or scope["type"] not in ("http", "websocket")
                or _is_public(str(scope.get("path", "")))):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        self.state.metrics.error(ErrorCode.UNAUTHORIZED)
        error = ProtocolError(ErrorCode.UNAUTHORIZED, "missing or wrong bearer token; send the header "
                              "'Authorization: Bearer <token>' with the server's --token (WebSocket clients "
                              "without headers: the subprotocol 'bearer.<token>' or '?token=<token>')")
        if scope["type"] == "http":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            codec = CODECS["binary"] if content_type.startswith(CODECS["binary"].content_type) else None
            await error_response(error, codec)(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": accepted_subprotocol(scope)})
        await send({"type": "websocket.send", "text": CODECS["json"].encode(ErrorReply.from_error(error))})
        await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})


MONITORING_PATHS = ("/healthz", "/readyz", "/metrics")
"""Paths the connection limit does not count or refuse: small, quick answers an operator (or a load balancer)
needs most when the server is full."""


class ConnectionLimit:
    """ASGI middleware: at most ``max_connections`` open WebSockets and HTTP requests being answered at once.

    One more is refused at once, with the protocol's ``overloaded`` error_reply (docs/protocol.md, *Errors*):
    HTTP 503 with ``Retry-After: 1`` (binary body for a binary ``Content-Type``, else JSON), or a WebSocket
    accepted, sent the error as a JSON text frame and closed with 1013 (*Try Again Later*), so a client
    learns why. Each refusal is counted as an ``overloaded`` error. :data:`MONITORING_PATHS` are neither
    counted nor refused. It sits outside the token check, so the limit also bounds work for clients without
    a token.

    An HTTP connection idling between requests (keep-alive) is not counted: it holds no request; uvicorn
    closes it after its keep-alive timeout.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.limit = state.config.max_connections
        self.open = 0  # one event loop: a plain counter is enough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or str(scope.get("path", "")) in MONITORING_PATHS:
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            await self._refuse(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.metrics.error(ErrorCode.OVERLOADED)
        self.state.metrics.inc("lipsync_connections_refused_total")
        error = ProtocolError(ErrorCode.OVERLOADED, f"the server has {self.open} connections open, its "
                              f"--max-connections {self.limit}; retry in a second")
        if scope["type"] == "http":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            codec = CODECS["binary"] if content_type.startswith(CODECS["binary"].content_type) else None
            response = error_response(error, codec)
            response.headers["Retry-After"] = "1"
            await response(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": accepted_subprotocol(scope)})
        await send({"type": "websocket.send", "text": CODECS["json"].encode(ErrorReply.from_error(error))})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": "overloaded"})


def create_app(state: ServerState) -> ASGIApp:
    """The ASGI app for ``state``; its lifespan runs :meth:`ServerState.startup` in the background."""
    ep = Endpoints(state)

    async def stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(state.startup()), asyncio.create_task(state.trim_heap_periodically())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.shutdown()

    app = Starlette(
        routes=[
            Route("/healthz", ep.healthz, methods=["GET"]),
            Route("/readyz", ep.readyz, methods=["GET"]),
            Route("/metrics", ep.metrics_text, methods=["GET"]),
            Route("/v1/frame", ep.frame, methods=["POST"]),
            Route("/v1/packages", ep.list_packages, methods=["GET"]),
            Route("/v1/models", ep.list_models, methods=["GET"]),
            Route("/v1/packages", ep.load_package, methods=["POST"]),
            Route("/v1/packages/{package_id}", ep.unload_package, methods=["DELETE"]),
            WebSocketRoute("/v1/stream", stream),
            *demo_routes(state),
        ],
        lifespan=lifespan,
    )
    return ConnectionLimit(BearerAuth(app, state), state)
