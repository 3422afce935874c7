"""The HTTP endpoints: their handlers, the ``error_reply`` bodies they answer with, and body limits.

Endpoints (docs/protocol.md, *Transport*): ``POST /v1/frame``, ``GET|POST /v1/packages``,
``DELETE /v1/packages/{id}``, ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``
(``WebSocket /v1/stream`` is :mod:`lipsync_tools.server.connection`; the routes are put together by
:func:`lipsync_tools.server.app.create_app`). Every error body is an ``error_reply`` (JSON, or binary when
answering a binary ``/v1/frame`` request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from lipsync_tools.errors import InputNotFoundError, PackageFormatError, ProtocolError, RequestError
from lipsync_tools.protocol import (
    CODECS,
    HTTP_STATUS,
    Codec,
    ErrorCode,
    ErrorReply,
    FrameRequest,
    UnsupportedVersionError,
    check_package_id,
    codec_for_content_type,
)
from lipsync_tools.server.config import MAX_BINARY_REQUEST_BYTES, MAX_JSON_REQUEST_BYTES, MAX_PACKAGE_API_BODY
from lipsync_tools.server.connection import decode_message, encode_body
from lipsync_tools.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lipsync_tools.server.state import API_STATUS, BAD_PACKAGE, CONFLICT, FORBIDDEN, NOT_FOUND, SharedState
from lipsync_tools.server.translate import engine_request, frame_reply, wire_error, wire_errors

log = logging.getLogger("lipsync.server")


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


# --- endpoints --------------------------------------------------------------------------------------------


class Endpoints:
    """The HTTP route handlers, bound to one server's :class:`~lipsync_tools.server.state.SharedState`."""

    def __init__(self, state: SharedState) -> None:
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
            with wire_errors():
                result = await engine.process(engine_request(message))
            reply = frame_reply(result, request_id)
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
        except RequestError as exc:  # the store's own refusals (an id it holds meanwhile, ...)
            return self._api_error(wire_error(exc))
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
                with wire_errors():
                    self.state.store.unload(package_id)
            self.metrics.add_gauge("lipsync_packages_loaded", -1)
        except ProtocolError as exc:
            return self._api_error(exc)
        await self.state.trim_heap()  # its frames go back to the OS, not only to malloc's free lists
        return JSONResponse({"unloaded": package_id})
