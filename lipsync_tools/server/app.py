"""The ASGI application: endpoints, bearer-token check, and the state they share.

State lives in one :class:`ServerState` built by :func:`lipsync_tools.server.run.LipsyncServer` and passed
to :func:`create_app`; nothing is kept in module globals, so tests can run several servers in one process.
How the engine parts are made is a :class:`Components` object, so tests can swap in a fake engine.

Endpoints (docs/protocol.md, *Transport*): ``WebSocket /v1/stream``, ``POST /v1/frame``,
``GET|POST /v1/packages``, ``DELETE /v1/packages/{id}``, ``GET /v1/models``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``.
Every error body is an ``error_reply`` (JSON, or binary when answering a binary ``/v1/frame`` request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from lipsync_tools.errors import InputNotFoundError, LipsyncError, PackageFormatError, ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    HTTP_STATUS,
    PCM_WINDOW_SAMPLES,
    AudioFormat,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameRequest,
    ImageFormat,
    UnsupportedVersionError,
    check_package_id,
    codec_for_content_type,
)
from lipsync_tools.server.admission import Admission
from lipsync_tools.server.components import (
    Components,
    ManagedEngine,
    ModelInfoLike,
    default_components,
)
from lipsync_tools.server.config import (
    MAX_BINARY_REQUEST_BYTES,
    MAX_JSON_REQUEST_BYTES,
    MAX_PACKAGE_API_BODY,
    ServerConfig,
    SessionLimits,
)
from lipsync_tools.server.demo import demo_routes
from lipsync_tools.server.memory import HeapTrimmer, freeze_startup_objects
from lipsync_tools.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import (
    CLOSE_TRY_AGAIN_LATER,
    EngineLike,
    PackageInfoLike,
    StreamConnection,
    decode_message,
    encode_body,
)

if TYPE_CHECKING:
    from lipsync_tools.engine.capacity import Batching

log = logging.getLogger("lipsync.server")

# Error codes of the package API beside the protocol's (new codes are allowed; docs/protocol.md lists them).
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
BAD_PACKAGE = "bad_package"
API_STATUS = {NOT_FOUND: 404, FORBIDDEN: 403, CONFLICT: 409, BAD_PACKAGE: 422}


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


class ServerState:
    """Everything the endpoints share: config, metrics, package store, engine (once started), readiness."""

    def __init__(self, config: ServerConfig, components: Components | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.components = components or default_components()
        self.store = self.components.make_store()
        self.engine: ManagedEngine | None = None
        self.model: ModelInfoLike | None = None
        self.batching: Batching | None = None  # chosen at startup (engine/capacity.py: choose_batching)
        self.ready = False
        self.startup_error: BaseException | None = None
        self.startup_report: StartupReport | None = None
        self.url = f"http://{config.host}:{config.port}"
        self.on_ready: Callable[[StartupReport], None] | None = None
        self.request_shutdown: Callable[[], None] = lambda: None
        self._load_lock: asyncio.Lock | None = None
        self.catalog: Any = None  # remote.Catalog, read at startup
        self._catalog_loads: dict[str, asyncio.Future[None]] = {}
        self.admission = Admission(
            min_session_fps=config.min_session_fps, max_sessions=config.max_sessions,
            # until startup chose the batch size (no session is admitted before ready)
            max_batch=config.max_batch or 1, post_seconds=self._post_seconds,
        )
        self._client_sessions: dict[str, int] = {}  # live sessions by client address
        self.heap = HeapTrimmer(self.metrics)  # free C heap memory back to the OS (server/memory.py)
        # Large JSON messages are encoded/decoded here, off the event loop. Its own pool, not asyncio's
        # default one, which catalog downloads and package loads may keep busy for minutes. The codecs hold
        # the GIL most of the time, so more threads than cores would only queue.
        self.codec_pool: Executor | None = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="lipsync-codec"
        )

    def _post_seconds(self) -> float:
        return float(getattr(self.engine, "post_seconds", 0.0) or 0.0)

    @property
    def engine_failure(self) -> BaseException | None:
        """Why the running engine's batching loop died, if it did (``/readyz`` then answers 503)."""
        return getattr(self.engine, "failure", None) if self.engine is not None else None

    # --- what sessions need (sessions.ServerLike) ---------------------------------------------------------

    @property
    def limits(self) -> SessionLimits:
        return self.config.sessions

    @property
    def silence_dbfs(self) -> float:
        return self.config.silence_dbfs

    def require_engine(self) -> EngineLike:
        """The running engine; ``ProtocolError(overloaded)`` while the server is still starting."""
        if self.engine is None or not self.ready:
            reason = f"startup failed: {self.startup_error}" if self.startup_error else "still loading"
            raise ProtocolError(ErrorCode.OVERLOADED, f"the server is not ready ({reason}); wait until GET "
                                "/readyz answers 200")
        return self.engine

    async def ensure_package(self, package_id: str) -> None:
        """Load ``package_id`` from the catalog when it is not loaded (downloading it first for a URL).

        Concurrent callers for one id share one load; a failed load answers every one of them with the same
        ``ProtocolError`` (``bad_package``, or ``unknown_package`` for an id the catalog lacks is left to the
        caller's own lookup). Without a catalog, or for a loaded id, it returns at once.
        """
        if package_id in self.store or self.catalog is None or package_id not in self.catalog:
            return
        loading = self._catalog_loads.get(package_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_from_catalog(package_id))
            self._catalog_loads[package_id] = loading
            loading.add_done_callback(lambda _: self._catalog_loads.pop(package_id, None))
        await asyncio.shield(loading)

    async def _load_from_catalog(self, package_id: str) -> None:
        from lipsync_tools.errors import LipsyncError

        entry = self.catalog[package_id]
        started = time.perf_counter()
        try:
            path = await asyncio.to_thread(self.fetch_source, entry.package)
            checkpoint = None
            if entry.checkpoint is not None:
                checkpoint = await asyncio.to_thread(self.fetch_source, entry.checkpoint)
            async with self.load_lock:
                if package_id in self.store:
                    return
                models = getattr(self.engine, "models", None)
                if checkpoint is not None:
                    if models is None:
                        raise ProtocolError(BAD_PACKAGE, "this server cannot take a catalog checkpoint")
                    models.set_checkpoint(package_id, checkpoint)
                await asyncio.to_thread(self.load_package, package_id, path, entry.frames)
        except ProtocolError:
            raise
        except LipsyncError as exc:
            raise ProtocolError(BAD_PACKAGE, f"catalog package {package_id!r}: {exc}") from None
        except OSError as exc:
            message = f"catalog package {package_id!r}: cannot read it ({exc})"
            raise ProtocolError(BAD_PACKAGE, message) from None
        self.metrics.add_gauge("lipsync_packages_loaded", 1)
        self.metrics.inc("lipsync_catalog_loads_total")
        self.metrics.observe("lipsync_catalog_load_seconds", time.perf_counter() - started)

    def load_package(self, package_id: str, path: Path, frames: str) -> Any:
        """Load a package into the store; ``frames="none"`` for crop-only serving (package stores only)."""
        if frames == "all":
            return self.store.load(package_id, path)
        load: Any = self.store.load
        return load(package_id, path, frames=frames)

    def fetch_source(self, source: Any) -> Path:
        """A catalog source's local file: its path, or its URL pulled into the cache (verified)."""
        from lipsync_tools.remote import default_cache_dir, pull

        if not source.is_remote:
            return Path(source.path)
        cache = self.config.cache_dir or default_cache_dir()
        target = source.local_path(cache)
        if target.is_file():
            return Path(target)  # only a verified download is ever renamed there
        cache.mkdir(parents=True, exist_ok=True)
        return Path(pull(source.url, target, sha256=source.sha256).path)

    def hold_package(self, package_id: str) -> None:
        """A session runs on ``package_id``: the memory budget must not evict it meanwhile."""
        hold = getattr(self.store, "hold", None)
        if hold is not None:
            hold(package_id)

    def release_package(self, package_id: str) -> None:
        release = getattr(self.store, "release", None)
        if release is not None:
            release(package_id)

    def claim_client_session(self, host: str) -> None:
        """Count a live session of client address ``host``; ``ProtocolError(overloaded)`` when that address
        already runs ``--max-sessions-per-ip`` sessions (one client cannot take every session)."""
        limit = self.config.max_sessions_per_ip
        running = self._client_sessions.get(host, 0)
        if running >= limit:
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                f"client address {host} already runs {running} live sessions, this server's "
                f"--max-sessions-per-ip {limit}; end one of them first (clients behind one proxy share its "
                "address: the server's operator can raise the limit)",
            )
        self._client_sessions[host] = running + 1

    def release_client_session(self, host: str) -> None:
        """A session of ``host`` counted by :meth:`claim_client_session` ended."""
        left = self._client_sessions.get(host, 0) - 1
        if left > 0:
            self._client_sessions[host] = left
        else:
            self._client_sessions.pop(host, None)

    def package_info(self, package_id: str) -> PackageInfoLike:
        """Info of a loaded package; ``ProtocolError(unknown_package)`` otherwise."""
        info: PackageInfoLike = self.store.get(package_id).info
        return info

    @property
    def load_lock(self) -> asyncio.Lock:
        # Created on first use, inside the server's event loop.
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        return self._load_lock

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

    async def trim_heap(self) -> None:
        """Hand free C heap memory back to the OS (a worker thread walks glibc's arenas)."""
        if self.heap.available and self.config.heap_trim_seconds > 0:
            await asyncio.to_thread(self.heap.trim)

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
            request = FrameRequest(request_id=0, package_id=infos[0].id, frame_index=i % infos[0].n_frames,
                                   audio=AudioFormat.PCM16, image=ImageFormat.JPEG, payload=noise.tobytes())
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


# --- helpers ----------------------------------------------------------------------------------------------


def _status(code: str) -> int:
    return API_STATUS.get(code) or HTTP_STATUS.get(code, 500)


def error_response(error: ProtocolError, codec: Codec | None = None, status: int | None = None,
                   request_id: int = 0) -> Response:
    """An ``error_reply`` body (JSON unless ``codec`` is binary) with the code's HTTP status."""
    codec = codec or CODECS["json"]
    version = error.version if isinstance(error, UnsupportedVersionError) else None
    body = codec.encode_error(ErrorReply.from_error(error, request_id), version)
    headers = {"WWW-Authenticate": "Bearer"} if error.code == ErrorCode.UNAUTHORIZED else None
    return Response(body, status_code=status or _status(error.code), media_type=codec.content_type,
                    headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with ``oversize`` as soon as it is known to exceed ``limit`` bytes.

    The ``Content-Length`` header is checked first, and the stream is counted as it arrives, so a liar or a
    chunked upload cannot make the server buffer more than ``limit`` bytes.
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # "²".isdigit() is true, int("²") fails
            raise ProtocolError(ErrorCode.BAD_FIELD, f"Content-Length {length[:32]!r} is not a number")
        if int(length) > limit:
            raise ProtocolError(ErrorCode.OVERSIZE, f"body is {int(length)} bytes, the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProtocolError(ErrorCode.OVERSIZE, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


WS_SUBPROTOCOL = "lipsync"
"""The WebSocket subprotocol the server accepts (and echoes) when a client offers it (browsers need it)."""

BEARER_SUBPROTOCOL_PREFIX = "bearer."
"""A WebSocket subprotocol ``bearer.<token>`` carries the token for clients that cannot set a header."""

PUBLIC_PATHS = ("/healthz", "/demo")
"""Paths served without a token: liveness, and the demo page itself (it holds no data; the page asks for
the token and sends it with its own requests)."""


def offered_subprotocols(scope: Scope) -> list[str]:
    """The subprotocols a WebSocket client offered (``Sec-WebSocket-Protocol``), in order."""
    return [p for p in (s.strip() for s in scope.get("subprotocols") or []) if p]


def accepted_subprotocol(scope: Scope) -> str | None:
    """``lipsync`` when the client offered it, else None (a ``bearer.`` entry is never echoed)."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered_subprotocols(scope) else None


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


# --- endpoints --------------------------------------------------------------------------------------------


class Endpoints:
    """The route handlers, bound to one :class:`ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.metrics = state.metrics

    def _api_error(self, error: ProtocolError) -> Response:
        self.metrics.error(error.code)
        return error_response(error)

    async def healthz(self, request: Request) -> Response:
        """200 while the process serves HTTP (no token needed)."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 once every startup package and the model are loaded and warm; 503 before (or on failure)."""
        state = self.state
        failure = state.engine_failure
        if state.ready and failure is None:
            return JSONResponse({"ready": True, "packages": [i.id for i in state.store.infos()],
                                 "model": state.model.name if state.model else None,
                                 "sessions": state.admission.to_dict()})
        if failure is not None:
            reason = f"engine failed: {type(failure).__name__}: {failure}; restart the server"
        else:
            reason = f"startup failed: {state.startup_error}" if state.startup_error else "loading"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    async def metrics_text(self, request: Request) -> Response:
        """Prometheus text exposition of :class:`Metrics`."""
        models = getattr(self.state.engine, "models", None)
        if models is not None:
            self.metrics.set_models(models.infos(), models.loads, models.evictions)
        store: Any = self.state.store
        if hasattr(store, "used_bytes"):
            self.metrics.set_memory(store.used_bytes(), store.budget.max_bytes, store.evictions,
                                    store.describe())
        return PlainTextResponse(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def frame(self, request: Request) -> Response:
        """One ``frame_request`` in, one ``frame_reply`` (or ``error_reply``) out, in its encoding."""
        started = time.perf_counter()
        try:
            codec = codec_for_content_type(request.headers.get("content-type"))
        except ProtocolError as exc:
            return self._api_error_status(exc, 415)
        request_id = 0
        try:
            limit = MAX_BINARY_REQUEST_BYTES if codec.name == "binary" else MAX_JSON_REQUEST_BYTES
            message = await decode_message(codec, await read_body(request, limit), self.state.codec_pool)
            self.metrics.inc("lipsync_messages_total", protocol=codec.name, type=message.TYPE.wire_name)
            if not isinstance(message, FrameRequest):
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                    f"POST /v1/frame takes a frame_request, got {message.TYPE.wire_name}; "
                                    "sessions run on the /v1/stream WebSocket")
            request_id = message.request_id
            engine = self.state.require_engine()
            await self.state.ensure_package(message.package_id)
            reply = await engine.process(message)
        except ProtocolError as exc:
            self.metrics.error(exc.code)
            return error_response(exc, codec, request_id=request_id)
        except ClientDisconnect:
            return self._client_left()
        except Exception as exc:
            log.exception("POST /v1/frame failed")
            self.metrics.error(ErrorCode.INTERNAL)
            return error_response(ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), codec,
                                  request_id=request_id)
        body = await encode_body(codec, reply, self.state.codec_pool)
        self.metrics.frame_sent("http", reply.silence)
        self.metrics.observe("lipsync_request_seconds", time.perf_counter() - started, endpoint="frame")
        return Response(body, media_type=codec.content_type)

    def _client_left(self) -> Response:
        """The client went away while sending its body: nothing was done and nobody reads the answer. It is
        a disconnect, not a server error (the soak counted them as ``internal`` before)."""
        self.metrics.inc("lipsync_disconnects_total", pending="false")
        return Response(status_code=400)

    def _api_error_status(self, error: ProtocolError, status: int) -> Response:
        self.metrics.error(error.code)
        return error_response(error, status=status)

    async def list_packages(self, request: Request) -> Response:
        """``{"packages": [info, ...]}`` of every loaded package (with its sessions and idle time when the
        store tracks them)."""
        describe = getattr(self.state.store, "describe", None)
        listed = describe() if describe is not None else [i.to_dict() for i in self.state.store.infos()]
        return JSONResponse({"packages": listed})

    async def list_models(self, request: Request) -> Response:
        """``{"models": [info, ...], "batching": ...}``: every loaded model, the packages it serves and its
        counters, and how the engine batches (one batch size and wait for every model: each model's entry
        repeats the values and their sources; ``batching`` adds the curve they were chosen from)."""
        engine = self.state.engine
        models = getattr(engine, "models", None)
        if models is not None:
            listed = models.infos()
        else:  # the original path runs one model
            listed = [self.state.model.to_dict()] if self.state.model is not None else []
        batching = self.state.batching
        if batching is not None:
            listed = [{**info, "batching": batching.summary()} for info in listed]
        return JSONResponse({"models": listed, "batching": batching.to_dict() if batching else None})

    async def load_package(self, request: Request) -> Response:
        """Load a package at run time (201 + its info). The body is one of (docs/protocol.md):

        * ``{"id"}``: a catalog id (``--catalog``);
        * ``{"id", "path"}``: a file inside ``--package-dir`` (relative paths are relative to it);
        * ``{"id", "url", "sha256"}``: downloaded into the cache and verified, only with ``--allow-urls``.

        Off without ``--package-dir``/``--allow-urls``/``--catalog``. A refused path never says whether it
        exists.
        """
        config = self.state.config
        try:
            if not config.allow_runtime_loading:
                raise ProtocolError(FORBIDDEN, "this server does not load packages at run time")
            body = await read_body(request, MAX_PACKAGE_API_BODY)
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError) as exc:  # also numbers over 4300 digits, deep nesting
                raise ProtocolError(ErrorCode.INVALID_JSON, f"body is not JSON: {str(exc)[:200]}") from None
            shapes = ({"id"}, {"id", "path"}, {"id", "url", "sha256"})
            if not isinstance(obj, dict) or set(obj) not in shapes:
                raise ProtocolError(
                    ErrorCode.BAD_FIELD,
                    'send a JSON object {"id"} (a catalog id), {"id", "path"} or {"id", "url", "sha256"}',
                )
            package_id = obj["id"]
            check_package_id(package_id)
            if package_id in self.state.store:
                raise ProtocolError(CONFLICT, f"package id {package_id!r} is already loaded; DELETE "
                                    f"/v1/packages/{package_id} first or choose another id")
            if set(obj) == {"id"}:
                catalog = self.state.catalog
                if catalog is None or package_id not in catalog:
                    raise ProtocolError(NOT_FOUND, f"{package_id!r} is not in this server's catalog")
                await self.state.ensure_package(package_id)
                info = self.state.store.get(package_id).info
            else:
                path = await self._runtime_source(obj)
                async with self.state.load_lock:
                    if package_id in self.state.store:
                        raise ProtocolError(CONFLICT, f"package id {package_id!r} is already loaded")
                    try:
                        frames = config.frames
                        info = await asyncio.to_thread(self.state.load_package, package_id, path, frames)
                    except InputNotFoundError as exc:
                        raise ProtocolError(NOT_FOUND, str(exc)) from None
                    except PackageFormatError as exc:
                        raise ProtocolError(BAD_PACKAGE, str(exc)) from None
                    except OSError as exc:
                        raise ProtocolError(BAD_PACKAGE, f"{path}: cannot read it ({exc})") from None
                self.metrics.add_gauge("lipsync_packages_loaded", 1)
        except ProtocolError as exc:
            return self._api_error(exc)
        except ClientDisconnect:
            return self._client_left()
        return JSONResponse(info.to_dict(), status_code=201)

    async def _runtime_source(self, obj: dict[str, Any]) -> Path:
        """The local file of a ``{"id", "path"}`` or ``{"id", "url", "sha256"}`` load, checked."""
        config = self.state.config
        if "path" in obj:
            raw_path = obj["path"]
            if not isinstance(raw_path, str) or not raw_path or "\0" in raw_path:
                raise ProtocolError(ErrorCode.BAD_FIELD, '"path" must be a non-empty string')
            if config.package_dir is None:
                raise ProtocolError(FORBIDDEN, "this server loads packages by path only from its "
                                    "--package-dir, and none was given")
            return self._checked_path(Path(raw_path))
        if not config.allow_urls:
            raise ProtocolError(
                FORBIDDEN, "this server does not download packages (start it with --allow-urls)"
            )
        from lipsync_tools.errors import LipsyncError
        from lipsync_tools.remote.catalog import CatalogSource

        try:
            source = CatalogSource(url=obj["url"], sha256=obj["sha256"])
            return await asyncio.to_thread(self.state.fetch_source, source)
        except LipsyncError as exc:
            raise ProtocolError(BAD_PACKAGE, str(exc)) from None

    def _checked_path(self, path: Path) -> Path:
        """``path`` (relative: to ``package_dir``) resolved inside ``package_dir``, an existing file.

        A path outside the folder is refused with the same answer whether it exists or not; symlinks and
        ``..`` are resolved first, so they cannot lead outside.
        """
        folder = self.state.config.package_dir
        assert folder is not None  # checked by the caller
        root = folder.resolve()
        candidate = path if path.is_absolute() else root / path
        try:
            resolved = candidate.resolve(strict=False)
        except (OSError, RuntimeError, ValueError):  # ValueError: a lone surrogate cannot be a file name
            resolved = None
        if resolved is None or not resolved.is_relative_to(root):
            raise ProtocolError(FORBIDDEN, f"{path} is outside the server's package folder; this server "
                                "loads packages only from its --package-dir")
        try:
            is_file = resolved.is_file()
        except OSError:  # e.g. ENAMETOOLONG, which pathlib does not turn into False
            is_file = False
        if not is_file:
            raise ProtocolError(NOT_FOUND, f"{path} is not a file in the server's package folder")
        return resolved

    async def unload_package(self, request: Request) -> Response:
        """Forget a package (200 ``{"unloaded": id}``); sessions on it end with ``unknown_package``."""
        package_id = request.path_params["package_id"]
        try:
            if not self.state.config.allow_runtime_loading:
                raise ProtocolError(FORBIDDEN, "this server does not unload packages at run time")
            check_package_id(package_id)
            async with self.state.load_lock:
                self.state.store.unload(package_id)
            self.metrics.add_gauge("lipsync_packages_loaded", -1)
        except ProtocolError as exc:
            return self._api_error(exc)
        await self.state.trim_heap()  # its frames go back to the OS, not only to malloc's free lists
        return JSONResponse({"unloaded": package_id})

    async def stream(self, websocket: WebSocket) -> None:
        """``/v1/stream``: sessions and request/response frames (sessions.StreamConnection)."""
        await websocket.accept(subprotocol=accepted_subprotocol(websocket.scope))
        await StreamConnection(websocket, self.state).serve()


def create_app(state: ServerState) -> ASGIApp:
    """The ASGI app for ``state``; its lifespan runs :meth:`ServerState.startup` in the background."""
    ep = Endpoints(state)

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
            WebSocketRoute("/v1/stream", ep.stream),
            *demo_routes(state),
        ],
        lifespan=lifespan,
    )
    return ConnectionLimit(BearerAuth(app, state), state)
