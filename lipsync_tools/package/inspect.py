"""A summary of a package for people (``lipsync inspect``) and scripts (``--json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .manifest import FootageMeta, Manifest
from .reader import HDF5_DAMAGE, damaged, open_hdf5, read_manifest


def package_warnings(path: str | Path) -> list[str]:
    """The package's warnings (:meth:`Manifest.warnings`), reading only its manifest."""
    path = Path(path)
    with open_hdf5(path) as f:
        return read_manifest(f, path).warnings()


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

        try:
            f.visititems(visit)
            filled = np.flatnonzero(f["filled"][...]).tolist() if "filled" in f else []
        except HDF5_DAMAGE as exc:  # nothing in this block raises our errors
            raise damaged(path, exc) from exc
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
        "footage": {"fps": manifest.video.fps, **footage_summary(manifest)},
        "warnings": manifest.warnings(),
        "datasets": datasets,
    }


def footage_summary(m: Manifest) -> dict[str, Any]:
    """The honest account of what a package holds, as JSON-ready values: the source range stored, the
    segments found (and which was kept), detected and filled frames, the longest fill and the crop jitter.
    Packages without a ``footage`` section (before 1.2, or imported) give the counts they have."""
    fps = m.video.fps
    filled = m.faces.filled_frames
    base: dict[str, Any] = {
        "detected_frames": m.video.frame_count - filled,
        "filled_frames": filled,
        "filled_share": round(m.filled_share, 4),
    }
    footage = m.footage
    if footage is None:
        return base
    return {
        **base,
        "source_frames": footage.source_frames,
        "source_range": [footage.source_start, footage.source_end],
        "source_range_seconds": [round(footage.source_start / fps, 3), round(footage.source_end / fps, 3)],
        "analysed_range": [footage.range_start, footage.range_end],
        "segment_policy": footage.selection,
        "segments_found": footage.segments_found,
        "kept_segment": footage.kept_segment,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "start_seconds": round(s.start / fps, 3),
                "end_seconds": round(s.end / fps, 3),
                "start_reason": s.start_reason,
                "end_reason": s.end_reason,
                "detected_frames": s.detected_frames,
                "kept": i == footage.kept_segment,
            }
            for i, s in enumerate(footage.segments)
        ],
        "dropped_frames": footage.source_frames - m.video.frame_count,
        "dropped": dropped_stretches(footage),
        "longest_fill_frames": footage.longest_fill,
        "longest_fill_seconds": round(footage.longest_fill / fps, 3),
        "max_gap_seconds": footage.max_gap_seconds,
        "jitter_rms_px": round(footage.jitter_rms_px, 3),
    }


def dropped_stretches(footage: FootageMeta) -> list[dict[str, Any]]:
    """The source frames not stored, as stretches ``{start, end, reason}`` in order. Reasons:
    ``before_range``/``after_range`` (outside --start/--end), ``no_face`` (no segment: no face, or only
    brief ones), ``segment`` (another segment, not kept; ``segment`` gives its index in ``segments``)."""
    stretches: list[dict[str, Any]] = []

    def add(start: int, end: int, reason: str, **extra: Any) -> None:
        if end > start:
            stretches.append({"start": start, "end": end, "reason": reason, **extra})

    add(0, footage.range_start, "before_range")
    cursor = footage.range_start
    for i, segment in enumerate(footage.segments):
        add(cursor, segment.start, "no_face")
        if i != footage.kept_segment:
            add(segment.start, segment.end, "segment", segment=i)
        cursor = max(cursor, segment.end)
    add(cursor, footage.range_end, "no_face")
    add(footage.range_end, footage.source_frames, "after_range")
    return stretches
