"""Avatar folders made by other tools -> sanders packages, keeping their own crops, landmarks and features.

``import_avatar(folder)`` detects the folder's kind (:data:`KINDS`: a SyncTalk_2D/Ultralight dataset, the
original servers' mp4 video package, a LiveTalking avatar), reads it with that kind's module and writes the
package through :class:`~lipsync_tools.package.writer.PackageWriter`. See :mod:`.base` for the choices every
kind shares and each kind's module for exactly what it reads.
"""

from __future__ import annotations

from .base import (
    KINDS,
    RECT_CORNERS,
    AvatarKind,
    ImportOptions,
    ImportResult,
    KindSpec,
    default_blend_mask,
    detect_kind,
    import_avatar,
)

__all__ = [
    "KINDS",
    "RECT_CORNERS",
    "AvatarKind",
    "ImportOptions",
    "ImportResult",
    "KindSpec",
    "default_blend_mask",
    "detect_kind",
    "import_avatar",
]
