"""A summary of a package for people (``lipsync inspect``) and scripts (``--json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .reader import open_hdf5, read_manifest


def describe_package(path: str | Path) -> dict[str, Any]:
    """Manifest facts plus every dataset's shape, dtype, storage and size in bytes (no checksums run)."""
    path = Path(path)
    with open_hdf5(path) as f:
        manifest = read_manifest(f, path)
        datasets: dict[str, Any] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                storage = (
                    "contiguous"
                    if obj.chunks is None
                    else f"chunked{'+' + obj.compression if obj.compression else ''}"
                )
                vlen = obj.dtype.kind == "O"
                # a vlen dataset's storage holds only heap references; count the encoded bytes themselves
                size = (
                    sum(int(obj[i].size) for i in range(obj.shape[0]))
                    if vlen
                    else int(obj.id.get_storage_size())
                )
                datasets[name] = {
                    "shape": list(obj.shape),
                    "dtype": "vlen-uint8" if vlen else str(obj.dtype),
                    "storage": storage,
                    "bytes": size,
                }

        f.visititems(visit)
        filled = np.flatnonzero(f["filled"][...]).tolist() if "filled" in f else []
    m = manifest.to_dict()
    return {
        "path": str(path),
        "format_version": manifest.format_version,
        "tool_version": manifest.tool.version,
        "file_bytes": path.stat().st_size,
        "duration_seconds": manifest.video.frame_count / manifest.video.fps,
        "audio_seconds": manifest.audio.samples / manifest.audio.sample_rate,
        "video": m["video"],
        "frames": m["frames"],
        "faces": m["faces"],
        "crop": m["crop"],
        # 1.0 packages have no model section: they are Wav2Lip packages
        "model": m.get("model") or {"family": "wav2lip", "audio_mode": "mel", "audio_encoder": "none",
                                     "audio_encoder_seed": None, "features": "none", "feature_row_shape": []},
        "audio": m["audio"],
        "source_video": m["source_video"],
        "source_audio": m["source_audio"],
        "build_options": m["build_options"],
        "filled_frame_indices": filled,
        "datasets": datasets,
    }
