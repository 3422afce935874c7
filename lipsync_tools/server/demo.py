"""The browser demo (``GET /demo``) and the avatar frames it composites crops over.

``/demo`` serves plain HTML, JavaScript and CSS from ``static/`` (shipped in the wheel, no build step,
nothing loaded from another origin). The page speaks the binary protocol on ``/v1/stream`` itself; its
codec is checked against the Python one by ``tests/server/test_demo.py``. ``/demo`` and everything below it
is public (``app.PUBLIC_PATHS``): the page holds no data and sends the token the user types with its own
requests.

``GET /v1/packages/{package_id}/frames`` (token required like every API route) answers a package's own
stored full frames in one response, so a client asking for ``crop_only`` frames can composite each crop
over the avatar frame it belongs to. Content type ``application/x-lipsync-frames``; all integers
little-endian::

    offset      size  type  field
         0         4  bytes magic           b"LSFR"
         4         1  u8    version         FRAMES_VERSION (1)
         5         1  u8    codec           1 jpeg, 2 png (the package's stored frame codec)
         6         2  u16   reserved        0
         8         4  u32   count N         the package's frame count
        12         4  u32   width           frame width in pixels
        16         4  u32   height          frame height in pixels
        20         8  f64   fps             the package's frame rate
        28     4 x N  u32   lengths         byte length of each encoded frame, in frame order
    28+4N   sum(len)  bytes images          the N encoded images, concatenated, in frame order

The body is exactly ``28 + 4N + sum(lengths)`` bytes (also sent as ``Content-Length``). Errors are JSON
``error_reply`` bodies like every API endpoint's: ``unknown_package`` (404) for an id the server neither
has loaded nor can load from its catalog (a catalog id is loaded first), ``bad_field`` (400) for an invalid
id or a package loaded without its full frames (``--frames none``), ``bad_package`` (422) for a catalog
package that fails to load.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import ErrorCode, check_package_id
from lipsync_tools.server.endpoints import error_response
from lipsync_tools.server.state import SharedState
from lipsync_tools.server.translate import wire_errors

STATIC_DIR: Final = Path(__file__).parent / "static"
"""The demo's files: ``demo.html``, ``demo.js``, ``demo.css``, ``capture-worklet.js``."""

FRAMES_CONTENT_TYPE: Final = "application/x-lipsync-frames"
FRAMES_MAGIC: Final = b"LSFR"
FRAMES_VERSION: Final = 1
FRAMES_CODECS: Final = {"jpeg": 1, "png": 2}
"""Codec byte of the frames container, by the package's stored frame codec."""

FRAMES_HEADER: Final = struct.Struct("<4sBBHIIId")  # magic, version, codec, reserved, count, w, h, fps
assert FRAMES_HEADER.size == 28  # import-time guard on the layout above, not input validation

NO_CACHE: Final = {"Cache-Control": "no-cache"}
"""The demo's files change with the installed version; the browser revalidates them on every load."""

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""The page loads nothing from another origin; the policy makes the browser hold it to that."""


def frames_header(
    count: int, width: int, height: int, fps: float, codec: str, lengths: Sequence[int]
) -> bytes:
    """The container's fixed header and length table (everything before the first image).

    Raises ``ProtocolError(bad_field)`` for a codec the container has no byte for.
    """
    codec_byte = FRAMES_CODECS.get(codec)
    if codec_byte is None:
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"frame codec {codec!r} has no frames-container code; known: {sorted(FRAMES_CODECS)}",
        )
    head = FRAMES_HEADER.pack(FRAMES_MAGIC, FRAMES_VERSION, codec_byte, 0, count, width, height, fps)
    return head + struct.pack(f"<{len(lengths)}I", *lengths)


class _NoCacheStaticFiles(StaticFiles):
    """StaticFiles whose answers carry ``Cache-Control: no-cache`` and the page's security policy."""

    def file_response(
        self, full_path: Any, stat_result: Any, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update({**NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY})
        return response


def demo_routes(state: SharedState) -> list[BaseRoute]:
    """The demo page's routes and ``GET /v1/packages/{package_id}/frames`` for ``state``'s packages."""

    async def page(request: Request) -> Response:
        headers = {**NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY}
        return FileResponse(STATIC_DIR / "demo.html", media_type="text/html; charset=utf-8", headers=headers)

    async def frames(request: Request) -> Response:
        package_id = request.path_params["package_id"]
        try:
            check_package_id(package_id)
            await state.ensure_package(package_id)
            with wire_errors():
                loaded = state.store.get(package_id)
            encoded: list[bytes] | None = getattr(loaded, "encoded_frames", None)
            if not encoded:
                raise ProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"package {package_id!r} was loaded without its full frames (--frames none), so the "
                    "server has none to send; composite its crops over your own copy of the avatar's "
                    "frames, or have the server load it with --frames all",
                )
            info = loaded.info
            head = frames_header(
                len(encoded),
                info.width,
                info.height,
                info.fps,
                loaded.frame_codec,
                [len(image) for image in encoded],
            )
        except ProtocolError as exc:
            state.metrics.error(exc.code)
            return error_response(exc)
        size = len(head) + sum(len(image) for image in encoded)

        async def body() -> AsyncIterator[bytes]:
            # The stored bytes objects themselves, one by one: no joined copy of a package's frames.
            yield head
            for image in encoded:
                yield image

        headers = {"Content-Length": str(size), **NO_CACHE}
        return StreamingResponse(body(), media_type=FRAMES_CONTENT_TYPE, headers=headers)

    return [
        Route("/demo", page, methods=["GET"]),
        Route("/demo/", page, methods=["GET"]),
        Mount("/demo", app=_NoCacheStaticFiles(directory=STATIC_DIR), name="demo"),
        Route("/v1/packages/{package_id}/frames", frames, methods=["GET"]),
    ]
