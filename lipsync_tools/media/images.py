"""Still-image encoding and decoding (JPEG, PNG) with OpenCV, for packages and for frames sent to clients.

Encoding is deterministic: the same pixels and settings give the same bytes on the same OpenCV build.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from lipsync_tools.errors import CorruptMediaError, UsageError

__all__ = ["ImageCodec", "decode_image", "encode_image"]

ImageCodec = Literal["jpeg", "png"]

_EXTENSIONS: dict[str, str] = {"jpeg": ".jpg", "png": ".png"}


def encode_image(
    bgr: np.ndarray, codec: ImageCodec = "jpeg", quality: int = 95, *, png_compression: int = 1
) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 BGR image (or ``(H, W)`` grey) as JPEG or PNG bytes.

    ``quality`` (1..100) applies to JPEG. PNG is lossless; ``png_compression`` (0..9) trades size for
    time and defaults to 1, the fastest level that still compresses, because frames are encoded per request.
    Raises :class:`UsageError` for an unknown codec, an out-of-range setting or an array that is not an
    8-bit image.
    """
    if codec not in _EXTENSIONS:
        raise UsageError(f"unknown image codec {codec!r}; expected one of {sorted(_EXTENSIONS)}.")
    image = np.asarray(bgr)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise UsageError(
            f"expected an (H, W, 3) uint8 BGR image, got shape {image.shape} dtype {image.dtype}; "
            "convert it with np.clip(x, 0, 255).astype(np.uint8)."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise UsageError(f"cannot encode an empty image of shape {image.shape}.")
    if codec == "jpeg":
        if not 1 <= quality <= 100:
            raise UsageError(f"JPEG quality must be 1..100, got {quality}.")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        if not 0 <= png_compression <= 9:
            raise UsageError(f"PNG compression must be 0..9, got {png_compression}.")
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
    ok, buffer = cv2.imencode(_EXTENSIONS[codec], image, params)
    if not ok:  # pragma: no cover - OpenCV only fails here on allocation failure
        raise UsageError(f"OpenCV could not encode a {image.shape} image as {codec}.")
    return buffer.tobytes()


def decode_image(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode JPEG/PNG (or any format OpenCV reads) bytes to an ``(H, W, 3)`` uint8 BGR C-contiguous array.

    Grey and alpha images come back as 3-channel BGR. Raises :class:`CorruptMediaError` when the bytes
    are empty or not a decodable image.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise CorruptMediaError("cannot decode an image from 0 bytes; expected JPEG or PNG data.")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        head = bytes(buffer[:8]).hex(" ")
        raise CorruptMediaError(
            f"{buffer.size} bytes starting {head} are not a decodable image; expected JPEG (ff d8 ...) or "
            "PNG (89 50 4e 47 ...) data. The data may be truncated or not an image."
        )
    return np.ascontiguousarray(image)
