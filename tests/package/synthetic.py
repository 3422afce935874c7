"""A small, fully synthetic package written through PackageWriter (no video, no face backend)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lipsync_tools.package.manifest import (
    AudioMeta,
    CropMeta,
    FacesMeta,
    FootageMeta,
    FramesMeta,
    Manifest,
    ModelMeta,
    SourceFile,
    ToolMeta,
    VideoMeta,
)
from lipsync_tools.package.writer import PackageWriter


def write_synthetic_package(
    path: Path,
    n: int = 4,
    size: int = 16,
    k: int = 5,
    width: int = 64,
    height: int = 48,
    force: bool = False,
    checkpoint: bytes | None = None,
    model: ModelMeta | None = None,
    features: np.ndarray | None = None,
    audio_encoder: bytes | None = None,
    footage: FootageMeta | None = None,
) -> Manifest:
    rng = np.random.default_rng(0)
    mel_columns = 40
    with PackageWriter(path, n_frames=n, crop_size=size, num_points=k, force=force) as writer:
        for i in range(n):
            frame = np.full((height, width, 3), 40 * i % 255, np.uint8)
            ok, data = cv2.imencode(".png", frame)
            assert ok
            writer.write_frame(
                i,
                data.tobytes(),
                rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                rng.integers(0, 255, (size, size), dtype=np.uint8),
            )
        writer.write_array("rects", np.tile(np.array([[4, 4, 36, 36]], np.int32), (n, 1)))
        mask = np.ones((size, size), np.uint8)
        mask[size // 2 :] = 0
        writer.write_array("masks/input", mask)
        writer.write_array("landmarks", rng.uniform(4, 36, (n, k, 2)).astype(np.float32))
        writer.write_array("boxes", np.tile(np.array([[6, 6, 34, 34]], np.float32), (n, 1)))
        filled = np.zeros(n, np.uint8)
        filled[1] = 1
        writer.write_array("filled", filled)
        writer.write_array("audio/pcm", rng.integers(-1000, 1000, 8000, dtype=np.int16))
        writer.write_array("audio/mel", rng.uniform(-4, 4, (80, mel_columns)).astype(np.float32))
        writer.write_array("audio/mel_index", np.minimum(np.arange(n, dtype=np.int32) * 3, mel_columns - 16))
        if features is not None:
            writer.write_array("audio/features", features)
        if checkpoint is not None:
            writer.write_checkpoint(checkpoint)
        if audio_encoder is not None:
            writer.write_checkpoint(audio_encoder, "model/audio_encoder")
        manifest = Manifest(
            tool=ToolMeta(name="lipsync-tools", version="test"),
            source_video=SourceFile(name="synthetic.mp4", sha256="0" * 64, size_bytes=0),
            source_audio=None,
            video=VideoMeta(
                fps=25.0, fps_num=25, fps_den=1, frame_count=n, width=width, height=height, rotation=0
            ),
            frames=FramesMeta(codec="png", quality=1),
            audio=AudioMeta(
                sample_rate=16000,
                samples=8000,
                mel_bands=80,
                mel_columns=mel_columns,
                mel_window=16,
                mel_hop_seconds=0.0125,
                mel_params={"hop_size": 200.0},
            ),
            faces=FacesMeta(
                backend="synthetic", scheme="toy", num_points=k, filled_frames=1, missing_policy="interpolate"
            ),
            crop=CropMeta(
                size=size,
                padding=0.1,
                smooth_window=5,
                box_rule="synctalk2d" if model is not None and model.family != "wav2lip" else "padded",
            ),
            model=model,
            footage=footage,
            build_options={"crop_size": size},
            datasets={},
        )
        return writer.commit(manifest)
