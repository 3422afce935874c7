"""The benchmark's baseline: the "original" per-frame path, every pipeline stage run again per request.

What a server without packages does, and what ``lipsync bench --compare`` measures the package path against
(:mod:`.original`). It reuses the build pipeline's stages and the engine's compositor, request types and
checks; the engine package holds only the production path.
"""

from lipsync_tools.baseline.original import (
    ORIGINAL_STAGES,
    OriginalEngine,
    OriginalOptions,
    VideoSource,
    VideoSourceInfo,
    VideoStore,
)

__all__ = [
    "ORIGINAL_STAGES", "OriginalEngine", "OriginalOptions", "VideoSource", "VideoSourceInfo", "VideoStore",
]
