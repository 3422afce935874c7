"""The lipsync server: ASGI app, sessions, metrics, and ``run(config)`` (spec: docs/protocol.md).

>>> from lipsync_tools.server import ServerConfig, PackageSpec, run
>>> config = ServerConfig(packages=(PackageSpec.parse("alice.sanders"),), model="random")  # doctest: +SKIP
>>> run(config)  # doctest: +SKIP

Importing this package loads Starlette and uvicorn but not the engine (torch): that happens at startup.
"""

from lipsync_tools.server.app import ServerState, StartupReport, create_app
from lipsync_tools.server.components import Components, engine_components
from lipsync_tools.server.config import PackageSpec, ServerConfig, SessionLimits
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.run import LipsyncServer, format_startup, run

__all__ = [
    "Components",
    "LipsyncServer",
    "Metrics",
    "PackageSpec",
    "ServerConfig",
    "ServerState",
    "SessionLimits",
    "StartupReport",
    "create_app",
    "engine_components",
    "format_startup",
    "run",
]
