"""lipsync-tools: build a sanders package once per avatar, then serve and render lip-synced frames from it.

The public API (docs/api.md shows each in a few lines)::

    from lipsync_tools import build_package, LipsyncServer, ServerConfig, PackageSpec, render_video

Names are imported on first use (PEP 562), so ``import lipsync_tools`` stays cheap: torch, ONNX Runtime and
the web stack load only when what needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lipsync_tools._version import __version__

_EXPORTS: dict[str, str] = {
    # build and inspect packages
    "build_package": "lipsync_tools.pipeline.build",
    "BuildOptions": "lipsync_tools.pipeline.build",
    "BuildResult": "lipsync_tools.pipeline.build",
    "open_package": "lipsync_tools.package",
    "validate_package": "lipsync_tools.package",
    # serve
    "LipsyncServer": "lipsync_tools.server",
    "ServerConfig": "lipsync_tools.server",
    "PackageSpec": "lipsync_tools.server",
    "run": "lipsync_tools.server",
    # render
    "render_video": "lipsync_tools.render",
    "RenderResult": "lipsync_tools.render",
    "RuntimeChoice": "lipsync_tools.engine.model_loader",
    # talk to a server
    "LipsyncClient": "lipsync_tools.client",
    "AsyncLipsyncClient": "lipsync_tools.client",
    # errors
    "LipsyncError": "lipsync_tools.errors",
    "UsageError": "lipsync_tools.errors",
}

__all__ = [  # the names of _EXPORTS (a test keeps them equal), written out for readers and linters
    "AsyncLipsyncClient",
    "BuildOptions",
    "BuildResult",
    "LipsyncClient",
    "LipsyncError",
    "LipsyncServer",
    "PackageSpec",
    "RenderResult",
    "RuntimeChoice",
    "ServerConfig",
    "UsageError",
    "__version__",
    "build_package",
    "open_package",
    "render_video",
    "run",
    "validate_package",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipsync_tools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from lipsync_tools.client import AsyncLipsyncClient, LipsyncClient
    from lipsync_tools.engine.model_loader import RuntimeChoice
    from lipsync_tools.errors import LipsyncError, UsageError
    from lipsync_tools.package import open_package, validate_package
    from lipsync_tools.pipeline.build import BuildOptions, BuildResult, build_package
    from lipsync_tools.render import RenderResult, render_video
    from lipsync_tools.server import LipsyncServer, PackageSpec, ServerConfig, run
