"""The ingress deployment: the plain server's HTTP and WebSocket API in front of the frame deployment.

Clients need no change: the ingress reads each request's package id and routes it to the replica Ray Serve
picks for that multiplexed id (one that already holds the avatar when there is one):

* ``POST /v1/frame``: the body is decoded only to read ``package_id``, then handed as it came to
  :meth:`AvatarReplica.frame <lipsync_tools.cluster.replica.AvatarReplica.frame>`; the replica's answer
  (status, body, error replies included) comes back with an ``X-Lipsync-Replica`` header.
* ``WebSocket /v1/stream``: ``frame_request`` messages are routed one by one like POST; a
  ``session_start`` asks :meth:`~lipsync_tools.cluster.replica.AvatarReplica.locate` once, then the socket
  is proxied both ways to that replica's own server for the session's life: a session sticks to its
  replica, whose admission rule decides (its ``overloaded`` refusal reaches the client as it is).
* ``GET /healthz``, ``/readyz``, ``/v1/packages`` (every catalog id, its facts as a plain server lists them,
  and the replicas holding it),
  ``/v1/cluster`` (every replica and what it holds).

A replica that dies mid-request (its process killed, its node lost) is answered with the protocol's
retryable error: ``overloaded`` (HTTP 503, ``Retry-After: 1``), "the replica serving 'x' was lost; retry";
a proxied session gets the same ``error_reply`` and the socket closes with 1013 (*Try Again Later*). Ray
replaces the replica; the router sends new requests to live ones, which load the avatar when asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, cast

import ray
from ray.exceptions import RayActorError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CLOSING_ERROR_CODES,
    CODECS,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameRequest,
    SessionStart,
    codec_for_content_type,
)
from lipsync_tools.server.app import BearerAuth
from lipsync_tools.server.config import MAX_BINARY_REQUEST_BYTES, MAX_JSON_REQUEST_BYTES
from lipsync_tools.server.connection import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    accepted_subprotocol,
    check_client_size,
    received_message,
)
from lipsync_tools.server.endpoints import error_response, read_body
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.state import FORBIDDEN

from .replica import REPLICA_DEPLOYMENT, ClusterSettings

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from lipsync_tools.server.app import ServerState

log = logging.getLogger("lipsync.cluster")

REPLICA_HEADER: Final = "X-Lipsync-Replica"
"""The response header naming the replica that answered a ``POST /v1/frame``."""

LIST_TIMEOUT_SECONDS: Final = 5.0
"""How long ``GET /v1/cluster`` waits for each replica to describe itself."""

_SERVE_NAMESPACE: Final = "serve"
_REPLICA_ACTOR_PREFIX: Final = "SERVE_REPLICA::"  # ray/serve/_private/common.py, ReplicaID.to_full_id_str


class ReplicaLostError(ProtocolError):
    """The replica serving an avatar died while answering: a retryable ``overloaded``."""

    def __init__(self, avatar_id: str) -> None:
        super().__init__(ErrorCode.OVERLOADED, f"the replica serving {avatar_id!r} was lost; retry")


class LipsyncIngress:
    """The ingress deployment: routes by avatar id to the frame deployment (``replicas``, a handle)."""

    def __init__(self, replicas: DeploymentHandle, settings: ClusterSettings) -> None:
        from lipsync_tools.remote import load_catalog

        self.replicas = replicas
        self.settings = settings
        self.config = settings.config  # with metrics: what the token check reads (server.app.BearerAuth)
        self.metrics = Metrics()
        if settings.config.catalog is None:
            raise ProtocolError(ErrorCode.INTERNAL, "a cluster needs a catalog")
        self.catalog = load_catalog(settings.config.catalog)
        self._facts: dict[str, dict[str, Any]] = {}  # avatar id -> its manifest's facts (catalog_facts)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """Serve's hook: the ASGI app, built once this ingress exists (ray/serve/api.py, ``ingress``)."""
        return create_ingress_app(self)

    # --- routing ------------------------------------------------------------------------------------------

    def _check_avatar(self, avatar_id: str) -> None:
        if avatar_id not in self.catalog:
            raise ProtocolError(ErrorCode.UNKNOWN_PACKAGE, f"package {avatar_id!r} is not in this cluster's "
                                f"catalog (it has {len(self.catalog)}: see GET /v1/packages)")

    async def frame(self, avatar_id: str, body: bytes, content_type: str) -> tuple[int, str, bytes, str]:
        """Route one encoded ``frame_request`` to a replica holding ``avatar_id``: its answer.

        Raises :class:`ReplicaLostError` when the replica died meanwhile."""
        self._check_avatar(avatar_id)
        try:
            answer = await self.replicas.options(multiplexed_model_id=avatar_id).frame.remote(
                body, content_type)
        except RayActorError:  # ActorDiedError, ActorUnavailableError: the process or its node is gone
            raise ReplicaLostError(avatar_id) from None
        return cast("tuple[int, str, bytes, str]", tuple(answer))

    async def locate(self, avatar_id: str) -> dict[str, Any]:
        """Where a session on ``avatar_id`` connects (the replica holds the avatar from now on)."""
        self._check_avatar(avatar_id)
        try:
            located = await self.replicas.options(multiplexed_model_id=avatar_id).locate.remote()
        except RayActorError:
            raise ReplicaLostError(avatar_id) from None
        return cast("dict[str, Any]", located)

    async def catalog_facts(self, avatar_id: str) -> dict[str, Any]:
        """What ``GET /v1/packages`` says of an avatar no replica holds: its manifest's facts (frames, size,
        fps, family, audio) when the catalog names a local file, read once; only the id for a URL entry
        not pulled yet (a client that needs the facts asks for one frame first, which loads it)."""
        facts = self._facts.get(avatar_id)
        if facts is None:
            facts = await asyncio.to_thread(_manifest_facts, avatar_id, self.catalog[avatar_id].package)
            if len(facts) > 1:
                self._facts[avatar_id] = facts
        return facts

    async def replica_list(self) -> list[dict[str, Any]]:
        """Every live replica of the frame deployment, as it describes itself (id, pid, url, holding).

        Replicas are Serve's named actors; each answers Serve's ``record_routing_stats`` hook with its
        description. One that does not answer in time (dying, starting) is left out."""
        prefix = f"{_REPLICA_ACTOR_PREFIX}{self.settings.app_name}#{REPLICA_DEPLOYMENT}#"
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a.get("namespace") == _SERVE_NAMESPACE and str(a.get("name", "")).startswith(prefix)]

        async def describe(name: str) -> dict[str, Any] | None:
            try:
                actor = ray.get_actor(name, namespace=_SERVE_NAMESPACE)
                asked: Any = actor.record_routing_stats.remote()
                described: Any = await asyncio.wait_for(asked, LIST_TIMEOUT_SECONDS)
            except (Exception, TimeoutError):  # gone, or not initialised yet
                return None
            return described if isinstance(described, dict) and "replica" in described else None

        found = await asyncio.gather(*(describe(n) for n in sorted(names)))
        return sorted((f for f in found if f is not None), key=lambda f: str(f["replica"]))


def _manifest_facts(avatar_id: str, source: Any) -> dict[str, Any]:
    """The facts a plain server lists of a package, from the manifest of a local catalog file (no frame is
    read); ``{"id"}`` alone for a URL entry or a file that cannot be read here."""
    from lipsync_tools.errors import LipsyncError
    from lipsync_tools.package import open_package

    if source.is_remote or source.path is None:
        return {"id": avatar_id}
    try:
        package = open_package(source.path, load_frames=False)
    except (LipsyncError, OSError):
        return {"id": avatar_id}
    video = package.manifest.video
    return {"id": avatar_id, "path": str(source.path), "n_frames": package.n_frames, "fps": package.fps,
            "width": video.width, "height": video.height, "crop_size": package.crop_size,
            "family": package.family, "audio_mode": package.audio_mode}


# --- the ASGI app ------------------------------------------------------------------------------------------


def create_ingress_app(ingress: LipsyncIngress) -> ASGIApp:
    """The ingress's Starlette app behind the plain server's token check."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        replicas = await ingress.replica_list()
        body = {"ready": bool(replicas), "replicas": len(replicas), "packages": list(ingress.catalog.ids)}
        if not replicas:
            body["reason"] = "no replica of the frame deployment answers yet"
        return JSONResponse(body, status_code=200 if replicas else 503)

    async def cluster(request: Request) -> Response:
        return JSONResponse({"replicas": await ingress.replica_list(),
                             "max_packages_per_replica": ingress.settings.max_packages_per_replica})

    async def packages(request: Request) -> Response:
        replicas = await ingress.replica_list()
        listed = []
        for avatar_id in ingress.catalog.ids:
            held = [r for r in replicas if avatar_id in r["holding"]]
            info = next((p for r in held for p in r.get("packages", ()) if p.get("id") == avatar_id), None)
            if info is None:
                info = await ingress.catalog_facts(avatar_id)
            listed.append({**info, "held": bool(held), "replicas": [r["replica"] for r in held]})
        return JSONResponse({"packages": listed})

    async def package_api(request: Request) -> Response:
        error = ProtocolError(FORBIDDEN, "a cluster loads its catalog's avatars where they are asked for; "
                              "it does not load or unload packages on request (change the catalog instead)")
        return error_response(error, status=403)

    async def frame(request: Request) -> Response:
        try:
            codec = codec_for_content_type(request.headers.get("content-type"))
        except ProtocolError as exc:
            return error_response(exc, status=415)
        request_id = 0
        try:
            limit = MAX_BINARY_REQUEST_BYTES if codec.name == "binary" else MAX_JSON_REQUEST_BYTES
            body = await read_body(request, limit)
            message = codec.decode(body)
            if not isinstance(message, FrameRequest):
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                    f"POST /v1/frame takes a frame_request, got {message.TYPE.wire_name}; "
                                    "sessions run on the /v1/stream WebSocket")
            request_id = message.request_id
            status, content_type, answer, replica = await ingress.frame(message.package_id, body,
                                                                        codec.content_type)
        except ClientDisconnect:
            return Response(status_code=400)
        except ProtocolError as exc:
            response = error_response(exc, codec, request_id=request_id)
            if exc.code == ErrorCode.OVERLOADED:
                response.headers["Retry-After"] = "1"
            return response
        except Exception as exc:
            log.exception("POST /v1/frame failed")
            error = ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return error_response(error, codec, request_id=request_id)
        return Response(answer, status_code=status, media_type=content_type or None,
                         headers={REPLICA_HEADER: replica})

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=accepted_subprotocol(websocket.scope))
        await StreamProxy(websocket, ingress).serve()

    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/cluster", cluster, methods=["GET"]),
        Route("/v1/packages", packages, methods=["GET"]),
        Route("/v1/packages", package_api, methods=["POST"]),
        Route("/v1/packages/{package_id}", package_api, methods=["DELETE"]),
        Route("/v1/frame", frame, methods=["POST"]),
        WebSocketRoute("/v1/stream", stream),
    ])
    # The plain server's token check reads only ``config.token`` and ``metrics`` of its state.
    return BearerAuth(app, cast("ServerState", ingress))


# --- WebSocket /v1/stream -----------------------------------------------------------------------------------


class StreamProxy:
    """One client WebSocket: frame requests routed one by one; a session proxied to its replica's server."""

    def __init__(self, websocket: WebSocket, ingress: LipsyncIngress) -> None:
        self.ws = websocket
        self.ingress = ingress
        self.limits = ingress.config.sessions
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.limits.max_inflight_requests)
        self._tasks: set[asyncio.Task[None]] = set()
        self._upstream: ClientConnection | None = None
        self._done = asyncio.Event()
        self._closing = False

    async def serve(self) -> None:
        """Read and answer (or forward) messages until either side ends the connection."""
        reader = asyncio.create_task(self._read_loop())
        done = asyncio.create_task(self._done.wait())
        try:
            await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [reader, done, *self._tasks]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._upstream is not None:
                with contextlib.suppress(Exception):
                    await self._upstream.close()

    async def _read_loop(self) -> None:
        while True:
            event = await self.ws.receive()
            if event["type"] == "websocket.disconnect":
                return
            data: bytes | str
            data, codec = received_message(event)
            upstream = self._upstream
            if upstream is not None:  # a session runs: everything goes to its replica's server
                with contextlib.suppress(ConnectionClosed):  # the pump tells the client why
                    await upstream.send(data)
                continue
            try:
                check_client_size(codec, data)
                message = codec.decode(data)
            except ProtocolError as exc:
                await self._fail(exc, codec, 0)
                continue
            if isinstance(message, FrameRequest):
                await self._slots.acquire()
                task = asyncio.create_task(self._answer(message, data, codec))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(message, SessionStart):
                await self._start_session(message, data, codec)
            else:
                what = message.TYPE.wire_name
                await self._fail(ProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"got {what} without a running session; see the session rules in docs/protocol.md"),
                    codec, message.request_id)

    async def _answer(self, request: FrameRequest, data: bytes | str, codec: Codec) -> None:
        try:
            body = data.encode("utf-8") if isinstance(data, str) else data
            try:
                _, _, answer, _ = await self.ingress.frame(request.package_id, body, codec.content_type)
            except ProtocolError as exc:
                await self._fail(exc, codec, request.request_id)
                return
            await self._write(answer.decode("utf-8") if codec.name == "json" else answer)
        except Exception as exc:
            log.exception("frame request %d failed", request.request_id)
            await self._fail(ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), codec,
                             request.request_id)
        finally:
            self._slots.release()

    async def _start_session(self, start: SessionStart, data: bytes | str, codec: Codec) -> None:
        avatar_id = start.package_id
        try:
            located = await self.ingress.locate(avatar_id)
            if "error" in located:  # the replica could not load the avatar: its answer, as it is
                _, _, answer = located["error"]
                reply = CODECS["json"].decode(answer)
                raise reply.to_error() if isinstance(reply, ErrorReply) else ProtocolError(
                    ErrorCode.INTERNAL, f"replica {located.get('replica')} answered {answer[:200]!r}")
            headers = {"Authorization": f"Bearer {self.ingress.settings.internal_token}"}
            try:
                upstream = await connect(located["ws_url"], additional_headers=headers, max_size=None,
                                         compression=None, open_timeout=10)
            except (OSError, TimeoutError, WebSocketException):
                raise ReplicaLostError(avatar_id) from None
        except ProtocolError as exc:
            await self._fail(exc, codec, start.request_id)
            return
        self._upstream = upstream
        with contextlib.suppress(ConnectionClosed):  # the pump reports it
            await upstream.send(data)
        task = asyncio.create_task(self._pump(upstream, avatar_id, codec, start.request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, upstream: ClientConnection, avatar_id: str, codec: Codec, request_id: int) -> None:
        """The replica's messages to the client, then its close (or, when it was lost, ours)."""
        try:
            async for data in upstream:
                await self._write(data, bounded=True)
        except ConnectionClosed:
            pass
        except TimeoutError:
            await self._fail(ProtocolError(ErrorCode.TOO_SLOW, f"the client took no message for "
                                           f"{self.limits.slow_client_seconds:g} s"), codec, request_id)
            return
        received = upstream.protocol.close_rcvd
        if received is None or received.code in (1005, 1006):  # no close frame: the replica is gone
            await self._fail(ReplicaLostError(avatar_id), codec, request_id)
            await self._close(CLOSE_TRY_AGAIN_LATER, "replica lost")
            return
        await self._close(received.code, received.reason)

    async def _write(self, data: bytes | str, *, bounded: bool = True) -> None:
        limit = self.limits.slow_client_seconds if bounded else self.limits.close_timeout_seconds
        async with self._send_lock, asyncio.timeout(limit):
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)

    async def _fail(self, error: ProtocolError, codec: Codec, request_id: int) -> None:
        if self._closing:
            return
        closing = error.code in CLOSING_ERROR_CODES
        data = codec.encode_error(ErrorReply.from_error(error, request_id), None)
        try:
            await self._write(data, bounded=not closing)
        except Exception:  # a gone or stuck client: nothing more to tell it
            closing = True
        if closing:
            await self._close(CLOSE_NORMAL if error.code == ErrorCode.IDLE_TIMEOUT else CLOSE_POLICY,
                              error.code)

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.limits.close_timeout_seconds):
                await self.ws.close(code, reason)
        self._done.set()
