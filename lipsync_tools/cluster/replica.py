"""The frame deployment: each replica is a real lipsync server holding avatars by ``serve.multiplexed``.

A replica starts a :class:`~lipsync_tools.server.LipsyncServer` in its own process (a thread of the Ray
actor), with the cluster's catalog, no startup package and an internal bearer token, and forwards to it:
POST ``/v1/frame`` bodies as they came (:meth:`AvatarReplica.frame`), and live sessions by telling the
ingress where to connect (:meth:`AvatarReplica.locate`). The server does all the lip-sync work, its
admission rule and its limits; the replica adds only which avatars it holds.

Holding: the avatar id is Ray Serve's multiplexed model id. The multiplexed loader loads the catalog entry
into the replica's server (``POST /v1/packages {"id"}``) and returns a :class:`HeldAvatar`; when Ray
evicts it (least recently used, beyond ``max_packages_per_replica``) it calls the holder's ``__del__``
(ray/serve/multiplex.py), which unloads the avatar once no live session runs on it: a session's streaming
state stays where it started. Ray's router prefers a replica that already holds the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx
from ray import serve

from lipsync_tools.errors import LipsyncError, ProtocolError
from lipsync_tools.protocol import CODECS, ErrorCode, ErrorReply, codec_for_content_type
from lipsync_tools.server import LipsyncServer, ServerConfig

log = logging.getLogger("lipsync.cluster")

REPLICA_DEPLOYMENT: Final = "AvatarReplica"
"""The frame deployment's name (the ingress finds its replicas by it)."""

INGRESS_DEPLOYMENT: Final = "LipsyncIngress"

UNLOAD_POLL_SECONDS: Final = 0.5
"""How often an evicted avatar with live sessions is looked at again before it is unloaded."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSettings:
    """What the ingress and every replica are built from (pickled by Ray into each actor).

    ``config``: the plain server's options (catalog, model, limits, the clients' ``token``); ``replicas``
    and ``max_packages_per_replica``: the frame deployment's size and each replica's avatar limit;
    ``internal_token``: the bearer token of the replicas' own servers (only the ingress knows it);
    ``replica_host``: the interface those servers bind ("" = this node's IP, for clusters of several
    machines); ``app_name``: the Serve application's name.
    """

    config: ServerConfig
    replicas: int
    max_packages_per_replica: int
    internal_token: str
    replica_host: str = "127.0.0.1"
    app_name: str = "lipsync"
    ready_timeout_seconds: float = 300.0

    def replica_config(self, host: str) -> ServerConfig:
        """The config of one replica's own server: the cluster's catalog and model options, no startup
        package, any free port on ``host``, run-time loading on, the internal token."""
        per_replica = self.max_packages_per_replica
        return replace(
            self.config, packages=(), host=host, port=0, token=self.internal_token, insecure=False,
            allow_runtime_loading=True, freeze_startup_objects=False,
            # A safety net under the multiplexer's own limit: an avatar a session (re)loaded outside it is
            # evicted by the server when idle, so a replica never holds more than one extra.
            max_packages=per_replica + 1 if self.config.max_packages is None else self.config.max_packages,
        )


class AvatarLoadError(LipsyncError):
    """The replica's server refused to load an avatar: its HTTP answer, passed on to the client."""

    def __init__(self, avatar_id: str, status: int, content_type: str, body: bytes) -> None:
        super().__init__(f"loading {avatar_id!r} failed with HTTP {status}: {body[:200]!r}")
        self.status, self.content_type, self.body = status, content_type, body

    def reply_in(self, content_type: str) -> tuple[int, str, bytes]:
        """The refusal as an ``error_reply`` in the request's encoding (binary for a binary request)."""
        try:
            codec = codec_for_content_type(content_type)
            reply = CODECS["json"].decode(self.body)
            if not isinstance(reply, ErrorReply):
                raise ProtocolError(ErrorCode.INTERNAL, "not an error_reply")
        except ProtocolError:
            return self.status, self.content_type, self.body
        data = codec.encode(reply)
        return self.status, codec.content_type, data.encode("ascii") if isinstance(data, str) else data


class HeldAvatar:
    """An avatar a replica holds for the multiplexer; ``__del__`` (Ray's eviction, or garbage collection)
    lets it go: unloaded from the replica's server once no session runs on it."""

    def __init__(self, replica: AvatarReplica, avatar_id: str) -> None:
        self.replica = replica
        self.avatar_id = avatar_id
        self._released = False

    def __del__(self) -> None:
        # Ray calls it on eviction (in a worker thread), and the interpreter again when the object is
        # collected: only the first counts.
        if self._released:
            return
        self._released = True
        with contextlib.suppress(Exception):
            self.replica.release_soon(self.avatar_id)


class AvatarReplica:
    """One replica of the frame deployment (see the module docstring). Made a deployment by
    :func:`lipsync_tools.cluster.serve.build_application`."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        host = settings.replica_host
        if not host:
            import ray

            host = ray.util.get_node_ip_address()
        self.server = LipsyncServer(settings.replica_config(host))
        self.server.start_in_thread(ready_timeout=settings.ready_timeout_seconds)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.pid = os.getpid()
        self.ws_url = self.server.url.replace("http://", "ws://", 1) + "/v1/stream"
        self._headers = {"Authorization": f"Bearer {settings.internal_token}"}
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._held: set[str] = set()

        async def load_avatar(avatar_id: str) -> HeldAvatar:
            return await self._load(avatar_id)

        # Made here, not as a decorated method, because the limit is a setting (Ray detects multiplexing
        # wired at init time: ray/serve/_private/utils.py, _callable_uses_multiplexing).
        self._avatar = serve.multiplexed(max_num_models_per_replica=settings.max_packages_per_replica)(
            load_avatar)

    # --- what the ingress calls ---------------------------------------------------------------------------

    async def frame(self, body: bytes, content_type: str) -> tuple[int, str, bytes, str]:
        """POST ``body`` (a ``frame_request`` for the request's multiplexed avatar) to this replica's
        server: ``(status, content type, body, replica id)`` of its answer, error replies included."""
        try:
            await self._avatar(serve.get_multiplexed_model_id())
        except AvatarLoadError as exc:
            return (*exc.reply_in(content_type), self.replica_id)
        response = await self._client().post("/v1/frame", content=body,
                                             headers={"Content-Type": content_type})
        return (response.status_code, response.headers.get("content-type", ""), response.content,
                self.replica_id)

    async def locate(self) -> dict[str, Any]:
        """Hold the request's avatar, and say where a session on it connects: ``{"ws_url", "replica"}``, or
        ``{"error": [status, content type, body]}`` when the avatar cannot be loaded here."""
        try:
            await self._avatar(serve.get_multiplexed_model_id())
        except AvatarLoadError as exc:
            return {"error": list(exc.reply_in(CODECS["json"].content_type)), "replica": self.replica_id}
        return {"ws_url": self.ws_url, "replica": self.replica_id}

    def holding(self) -> list[str]:
        """The avatars the multiplexer holds here, sorted."""
        return sorted(self._held)

    def describe(self) -> dict[str, Any]:
        """This replica: its id, process id, server URL and the avatars it holds."""
        return {"replica": self.replica_id, "pid": self.pid, "url": self.server.url,
                "holding": self.holding()}

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve's per-replica stats hook; the ingress also calls it on every replica actor to list them
        (``GET /v1/cluster``, ``/v1/packages``): :meth:`describe` and ``packages``, the server's info of
        each avatar held here (frames, size, fps, family, sessions: what a plain server lists)."""
        described = self.describe()
        try:
            listed = (await self._client().get("/v1/packages", timeout=5.0)).json().get("packages", [])
        except (httpx.HTTPError, ValueError):
            listed = []
        held = set(described["holding"])
        described["packages"] = [p for p in listed if isinstance(p, dict) and p.get("id") in held]
        return described

    def check_health(self) -> None:
        """Serve's health check: a replica whose server stopped or whose engine failed is replaced."""
        state = self.server.state
        if state.startup_error is not None or not state.ready or state.engine_failure is not None:
            raise LipsyncError(f"replica {self.replica_id}: its server is not serving "
                               f"({state.startup_error or state.engine_failure or 'not ready'})")

    def __del__(self) -> None:
        # Serve calls it when the replica shuts down.
        with contextlib.suppress(Exception):
            self.server.stop(join_timeout=5)

    # --- holding ------------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # made in the replica's event loop, where it is used
            self._http = httpx.AsyncClient(base_url=self.server.url, headers=self._headers,
                                           timeout=httpx.Timeout(60.0, connect=5.0))
        return self._http

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._loop = asyncio.get_running_loop()
        return self._lock

    async def _load(self, avatar_id: str) -> HeldAvatar:
        """The multiplexed loader: load ``avatar_id`` from the catalog into this replica's server."""
        async with self._guard():
            self._held.add(avatar_id)  # also stops an unload still waiting for its sessions
            response = await self._client().post("/v1/packages", json={"id": avatar_id},
                                                 timeout=self.settings.ready_timeout_seconds)
            # 409: still loaded (evicted with live sessions, asked for again before they ended)
            if response.status_code not in (201, 409):
                self._held.discard(avatar_id)
                raise AvatarLoadError(avatar_id, response.status_code,
                                      response.headers.get("content-type", ""), response.content)
        log.info("replica %s holds %s", self.replica_id, avatar_id)
        return HeldAvatar(self, avatar_id)

    def release_soon(self, avatar_id: str) -> None:
        """Ray evicted ``avatar_id`` (from any thread): unload it once no session runs on it."""
        self._held.discard(avatar_id)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._unload_when_idle(avatar_id), loop)

    async def _unload_when_idle(self, avatar_id: str) -> None:
        client = self._client()
        while True:
            async with self._guard():
                if avatar_id in self._held:  # asked for again meanwhile
                    return
                listed = (await client.get("/v1/packages")).json().get("packages", [])
                entry = next((p for p in listed if p.get("id") == avatar_id), None)
                if entry is None:
                    return
                if not entry.get("sessions"):
                    await client.delete(f"/v1/packages/{avatar_id}")
                    log.info("replica %s let %s go", self.replica_id, avatar_id)
                    return
            await asyncio.sleep(UNLOAD_POLL_SECONDS)
