"""Compositing a generated crop back into its frame, and encoding the result for the reply.

The blend is ``out = generated * w + original * (1 - w)`` with ``w = blend_mask / 255``, the package's
feathered mask (0 on the crop border, 255 over the mouth), resized with the crop to the frame rectangle.
Wherever the mask is 0 the output is the original pixel, bit for bit; that is what makes an identity model
composite back to the source frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import UsageError
from ..media.images import encode_image
from ..protocol.messages import ImageFormat, Payload


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[0] == side and image.shape[1] == side:
        return image
    # INTER_AREA when shrinking avoids aliasing; INTER_LINEAR when enlarging (INTER_AREA is slow there).
    interpolation = cv2.INTER_AREA if side < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interpolation)


def _blend_into(destination: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> None:
    """``destination[...] = generated * w + destination * (1 - w)``, ``w = mask / 255``; all the same size."""
    weight = mask.astype(np.float32)
    weight *= np.float32(1.0 / 255.0)
    # blendLinear is several times faster than the equivalent uint16 NumPy arithmetic (measured).
    destination[...] = cv2.blendLinear(generated, destination, weight, np.float32(1.0) - weight)


def composite_frame(
    frame: np.ndarray, generated: np.ndarray, blend_mask: np.ndarray | None, rect: tuple[int, int, int, int]
) -> np.ndarray:
    """Paste ``generated`` (uint8 ``(S, S, 3)`` BGR) into a copy of ``frame`` (uint8 ``(H, W, 3)``).

    ``rect`` is the square ``(x0, y0, x1, y1)`` (half-open, inside the frame) the crop was cut from;
    ``blend_mask`` the uint8 ``(S, S)`` feathered mask of that crop, or ``None`` to paste the whole crop
    hard (SyncTalk_2D's own scripts). Returns a new C-contiguous uint8 ``(H, W, 3)`` array; ``frame`` is not
    modified.
    """
    x0, y0, x1, y1 = rect
    side = x1 - x0
    out = frame.copy()
    if blend_mask is None:
        out[y0:y1, x0:x1] = _resize(generated, side)
    else:
        _blend_into(out[y0:y1, x0:x1], _resize(generated, side), _resize(blend_mask, side))
    return out


def composite_crop(original: np.ndarray, generated: np.ndarray, blend_mask: np.ndarray | None) -> np.ndarray:
    """Blend ``generated`` over ``original`` in crop space (all ``S x S``): the crop_only reply image.

    Its border equals the package's own crop (the mask is 0 there), so a client that resizes it into the
    rectangle gets the same seamless paste as the server's full-frame composite. Returns a new uint8
    ``(S, S, 3)`` array.
    """
    if blend_mask is None:
        return np.array(generated, copy=True)
    out = np.array(original, copy=True)
    _blend_into(out, generated, blend_mask)
    return out


def encode_frame_image(image: np.ndarray, image_format: ImageFormat, jpeg_quality: int) -> Payload:
    """The reply payload for uint8 ``(H, W, 3)`` BGR ``image``: JPEG/PNG bytes or the raw pixels.

    JPEG and CROP_JPEG are JPEG bytes at ``jpeg_quality``. RAW_BGR and CROP_ONLY return a read-only
    memoryview of ``image`` itself (no copy) and mark ``image`` read-only: the caller must not write to it
    afterwards. PNG uses compression level 1 (fastest). Raises
    :class:`UsageError` for a quality outside 1..100.
    """
    if image_format in (ImageFormat.JPEG, ImageFormat.CROP_JPEG):
        return encode_image(image, "jpeg", jpeg_quality)
    if image_format is ImageFormat.PNG:
        return encode_image(image, "png", png_compression=1)
    if image_format in (ImageFormat.RAW_BGR, ImageFormat.CROP_ONLY):
        pixels = np.ascontiguousarray(image)
        pixels.flags.writeable = False  # FrameReply keeps a read-only view as is; a writable one is copied
        return pixels.data.cast("B")
    raise UsageError(f"unknown image format {image_format!r}")
