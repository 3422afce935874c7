"""The serving engine: loaded packages, per-frame features, batched inference, compositing, encoding.

It speaks its own request and result types (:mod:`.requests`), not the wire format: the server translates.

Rendering an mp4 (locally with this engine, or through a server with the client) is one level up, in
:mod:`lipsync_tools.render`, so the engine does not depend on the client.

Names are imported on first use (PEP 562): the server imports the light modules it needs (the batcher's
``Expired``, pacing) without loading torch and the model families, which load when a server starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Batcher": ".batcher",
    "composite_crop": ".compositor",
    "composite_frame": ".compositor",
    "encode_frame_image": ".compositor",
    "SILENT_STAGES": ".engine",
    "STAGES": ".engine",
    "Engine": ".engine",
    "EngineOptions": ".engine",
    "Observer": ".engine",
    "MODEL_NAMES": ".model_loader",
    "RANDOM_WEIGHTS_WARNING": ".model_loader",
    "ModelInfo": ".model_loader",
    "load_inference_backend": ".model_loader",
    "is_silent": ".pacing",
    "pingpong_index": ".pacing",
    "window_dbfs": ".pacing",
    "AudioKind": ".requests",
    "ImageKind": ".requests",
    "Reason": ".requests",
    "EngineRequest": ".requests",
    "EngineResult": ".requests",
    "LoadedPackage": ".store",
    "PackageInfo": ".store",
    "PackageStore": ".store",
}

__all__ = [
    "MODEL_NAMES",
    "RANDOM_WEIGHTS_WARNING",
    "SILENT_STAGES",
    "STAGES",
    "AudioKind",
    "Batcher",
    "Engine",
    "EngineOptions",
    "EngineRequest",
    "EngineResult",
    "ImageKind",
    "LoadedPackage",
    "ModelInfo",
    "Observer",
    "PackageInfo",
    "PackageStore",
    "Reason",
    "composite_crop",
    "composite_frame",
    "encode_frame_image",
    "is_silent",
    "load_inference_backend",
    "pingpong_index",
    "window_dbfs",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipsync_tools.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .batcher import Batcher
    from .compositor import composite_crop, composite_frame, encode_frame_image
    from .engine import SILENT_STAGES, STAGES, Engine, EngineOptions, Observer
    from .model_loader import MODEL_NAMES, RANDOM_WEIGHTS_WARNING, ModelInfo, load_inference_backend
    from .pacing import is_silent, pingpong_index, window_dbfs
    from .requests import AudioKind, EngineRequest, EngineResult, ImageKind, Reason
    from .store import LoadedPackage, PackageInfo, PackageStore
