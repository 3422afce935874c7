"""JPEG/PNG encoding of frames: round trips, determinism, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.errors import CorruptMediaError, UsageError
from lipsync_tools.media import decode_image, encode_image
from tests import samples


def test_png_is_lossless_and_deterministic() -> None:
    image = next(samples.astronaut_frames(1))
    data = encode_image(image, "png")
    assert data[:4] == b"\x89PNG"
    assert encode_image(image, "png") == data
    np.testing.assert_array_equal(decode_image(data), image)


def test_jpeg_quality_and_size() -> None:
    image = next(samples.astronaut_frames(1))
    high, low = encode_image(image, "jpeg", 95), encode_image(image, "jpeg", 30)
    assert high[:2] == b"\xff\xd8" and len(low) < len(high)
    assert encode_image(image, "jpeg", 95) == high
    decoded = decode_image(high)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3


def test_colours_keep_bgr_order() -> None:
    bars = samples.colour_bars()
    decoded = decode_image(encode_image(bars, "jpeg", 95))
    np.testing.assert_allclose(decoded[120, 50].astype(int), (255, 0, 0), atol=8)


def test_bad_arguments() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UsageError, match="unknown image codec"):
        encode_image(image, "gif")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="quality"):
        encode_image(image, "jpeg", 0)
    with pytest.raises(UsageError, match="uint8"):
        encode_image(image.astype(np.float32), "png")


def test_undecodable_bytes() -> None:
    with pytest.raises(CorruptMediaError, match="0 bytes"):
        decode_image(b"")
    with pytest.raises(CorruptMediaError, match="not a decodable image"):
        decode_image(b"hello, not an image at all")
