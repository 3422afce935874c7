"""The serving engine: loaded packages, per-frame features, batched inference, compositing, encoding.

Rendering an mp4 (locally with this engine, or through a server with the client) is one level up, in
:mod:`lipsync_tools.render`, so the engine does not depend on the client.
"""

from .batcher import Batcher
from .compositor import composite_crop, composite_frame, encode_frame_image
from .engine import SILENT_STAGES, STAGES, Engine, EngineOptions, Observer
from .model_loader import MODEL_NAMES, RANDOM_WEIGHTS_WARNING, ModelInfo, load_inference_backend
from .pacing import is_silent, pingpong_index, window_dbfs
from .store import LoadedPackage, PackageInfo, PackageStore

__all__ = [
    "MODEL_NAMES",
    "RANDOM_WEIGHTS_WARNING",
    "SILENT_STAGES",
    "STAGES",
    "Batcher",
    "Engine",
    "EngineOptions",
    "LoadedPackage",
    "ModelInfo",
    "Observer",
    "PackageInfo",
    "PackageStore",
    "composite_crop",
    "composite_frame",
    "encode_frame_image",
    "is_silent",
    "load_inference_backend",
    "pingpong_index",
    "window_dbfs",
]
