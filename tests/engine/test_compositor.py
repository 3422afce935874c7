"""Compositing: the identity model gives back the source frame (the issue's 40 dB requirement)."""

from __future__ import annotations

import cv2
import numpy as np

from lipsync_tools.engine import Engine, PackageStore, composite_crop, composite_frame
from lipsync_tools.protocol.messages import AudioFormat, FrameRequest, ImageFormat

from .conftest import PACKAGE_ID


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def mouth_region(store: PackageStore, index: int) -> np.ndarray:
    """Bool (H, W): where frame ``index``'s blend mask, resized to its rectangle, is > 0 (dilated by 2 px)."""
    package = store.get(PACKAGE_ID)
    x0, y0, x1, y1 = package.rects[index]
    info = package.info
    region = np.zeros((info.height, info.width), np.uint8)
    side = x1 - x0
    region[y0:y1, x0:x1] = cv2.resize(np.asarray(package.blend_masks[index]), (side, side),
                                      interpolation=cv2.INTER_LINEAR) > 0
    return cv2.dilate(region, np.ones((5, 5), np.uint8)).astype(bool)


def test_identity_model_composites_back_to_the_source_frame(engine: Engine, store: PackageStore):
    package = store.get(PACKAGE_ID)
    indices = [0, 37, 119]
    requests = [FrameRequest(request_id=i, package_id=PACKAGE_ID, frame_index=i, audio=AudioFormat.REPLAY,
                             image=ImageFormat.RAW_BGR) for i in indices]
    for index, reply in zip(indices, engine.process_batch_sync(requests), strict=True):
        out = reply.image_array()
        source = package.frames[index]
        mouth = mouth_region(store, index)
        assert 0.002 < mouth.mean() < 0.5  # the mask covers a real, bounded part of the frame
        outside = psnr(out[~mouth], source[~mouth])
        assert outside >= 40.0, f"frame {index}: {outside:.1f} dB outside the mouth"
        # Inside, the crop went through two resizes only: still close to the source (rect not misplaced).
        assert psnr(out[mouth], source[mouth]) >= 25.0


def test_composite_frame_respects_the_mask():
    frame = np.full((40, 50, 3), 10, np.uint8)
    frame.flags.writeable = False
    generated = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    out = composite_frame(frame, generated, mask, (10, 5, 26, 21))  # 16x16 rect: 2x upscale
    assert out.shape == frame.shape and out.flags.writeable
    assert (frame == 10).all()  # the preloaded frame is never written
    changed = np.argwhere(out[..., 0] != 10)
    assert changed[:, 0].min() >= 5 and changed[:, 0].max() < 21  # only inside the rect
    assert changed[:, 1].min() >= 10 and changed[:, 1].max() < 26
    assert out[13, 18, 0] == 200  # the mask's centre is fully generated


def test_composite_crop_keeps_the_border():
    original = np.full((8, 8, 3), 50, np.uint8)
    generated = np.full((8, 8, 3), 250, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[3:5, 3:5] = 128
    out = composite_crop(original, generated, mask)
    assert (out[0] == 50).all() and (out[:, 0] == 50).all()
    assert abs(int(out[3, 3, 0]) - 150) <= 1  # 250 * 128/255 + 50 * 127/255
