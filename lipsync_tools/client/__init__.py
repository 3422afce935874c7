"""Python client of the lipsync server, sync and async, for both wire encodings (spec: docs/protocol.md).

Uses only :mod:`lipsync_tools.protocol` (no engine, no server): ``LipsyncClient`` (httpx + websockets.sync)
and ``AsyncLipsyncClient`` (httpx.AsyncClient + websockets.asyncio). Server error replies are raised as
:class:`~lipsync_tools.errors.ProtocolError` carrying the server's code.
"""

from lipsync_tools.client.aio import AsyncFrameStream, AsyncLipsyncClient, AsyncSession
from lipsync_tools.client.sync import FrameStream, LipsyncClient, Session

__all__ = [
    "AsyncFrameStream",
    "AsyncLipsyncClient",
    "AsyncSession",
    "FrameStream",
    "LipsyncClient",
    "Session",
]
