"""The state the endpoints and connections share, and what they do with it.

:class:`SharedState` holds the config, metrics, package store, engine (once started), admission and
readiness, and answers what a request needs: the running engine, a package (loaded from the catalog on
first use), holds on packages while sessions run, per-client session counts. It is built once per server
(as :class:`lipsync_tools.server.app.ServerState`, which adds startup and shutdown) and passed down; nothing
is kept in module globals, so tests can run several servers in one process.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import ErrorCode
from lipsync_tools.server.admission import Admission
from lipsync_tools.server.components import (
    Components,
    ManagedEngine,
    ModelInfoLike,
    default_components,
)
from lipsync_tools.server.config import ServerConfig, SessionLimits
from lipsync_tools.server.memory import HeapTrimmer
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import EngineLike, PackageInfoLike
from lipsync_tools.server.translate import wire_error, wire_errors

if TYPE_CHECKING:
    from lipsync_tools.engine.capacity import Batching

# Error codes of the package API beside the protocol's (new codes are allowed; docs/protocol.md lists them).
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
BAD_PACKAGE = "bad_package"
API_STATUS = {NOT_FOUND: 404, FORBIDDEN: 403, CONFLICT: 409, BAD_PACKAGE: 422}


class SharedState:
    """Everything the endpoints and connections share: config, metrics, package store, engine (once
    started), readiness. :class:`lipsync_tools.server.app.ServerState` adds startup and shutdown."""

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

    # --- what connections need (connection.ServerLike) ------------------------------------------------------

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
        from lipsync_tools.errors import LipsyncError, RequestError

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
        except RequestError as exc:
            raise wire_error(exc) from exc
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
        with wire_errors():
            info: PackageInfoLike = self.store.get(package_id).info
        return info

    @property
    def load_lock(self) -> asyncio.Lock:
        # Created on first use, inside the server's event loop.
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        return self._load_lock

    async def trim_heap(self) -> None:
        """Hand free C heap memory back to the OS (a worker thread walks glibc's arenas)."""
        if self.heap.available and self.config.heap_trim_seconds > 0:
            await asyncio.to_thread(self.heap.trim)
