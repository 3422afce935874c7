import numpy as np
import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.pipeline.crop import CropOptions, crop_face, crop_rectangles, to_crop_coordinates


def pts(x0, y0, x1, y1):
    return np.array([[[x0, y0], [x1, y1], [(x0 + x1) / 2, (y0 + y1) / 2]]], np.float32)


def test_square_padded_and_centred():
    rects = crop_rectangles(pts(100, 100, 140, 180), (640, 480), CropOptions(padding=0.1))
    x0, y0, x1, y1 = rects[0]
    assert rects.dtype == np.int32
    assert x1 - x0 == y1 - y0 == 96  # 80 * 1.2
    assert (x0 + x1) / 2 == pytest.approx(120, abs=1) and (y0 + y1) / 2 == pytest.approx(140, abs=1)


def test_clamped_inside_by_shifting_not_squashing():
    rects = crop_rectangles(pts(-20, 430, 40, 490), (640, 480), CropOptions(padding=0.2))
    x0, y0, x1, y1 = rects[0]
    assert x0 == 0 and y1 == 480 and x1 - x0 == y1 - y0


def test_face_larger_than_frame():
    rects = crop_rectangles(pts(-100, -100, 300, 300), (200, 120), CropOptions())
    assert rects[0].tolist() == [40, 0, 160, 120]  # side = frame height, still centred on the face


def test_crop_and_coordinates():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[40:60, 40:60] = 255
    rect = np.array([30, 30, 70, 70], np.int32)
    crop = crop_face(frame, rect, 20)
    assert crop.shape == (20, 20, 3) and crop[10, 10].tolist() == [255, 255, 255] and crop[0, 0].sum() == 0
    np.testing.assert_allclose(to_crop_coordinates(np.array([[50.0, 30.0]], np.float32), rect, 20), [[10, 0]])


def test_bad_options():
    with pytest.raises(UsageError, match="crop size is 4"):
        CropOptions(size=4)
    with pytest.raises(UsageError, match="box padding is 2"):
        CropOptions(padding=2)
