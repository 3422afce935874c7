import numpy as np
import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.pipeline.smooth import SmoothOptions, smooth_series


def test_removes_jitter_and_keeps_a_ramp():
    rng = np.random.default_rng(0)
    ramp = np.arange(100, dtype=np.float32)[:, None]
    noisy = ramp + rng.normal(0, 2, size=ramp.shape).astype(np.float32)
    smooth = smooth_series(noisy, SmoothOptions(window=7))
    assert smooth.dtype == np.float32 and smooth.shape == noisy.shape
    assert np.abs(np.diff(smooth[:, 0], 2)).mean() < np.abs(np.diff(noisy[:, 0], 2)).mean() / 3
    np.testing.assert_allclose(smooth_series(ramp, SmoothOptions(window=7)), ramp, atol=1e-4)


def test_window_one_is_identity_and_ends_are_not_biased():
    x = np.array([[0.0], [10.0], [0.0], [0.0]], np.float32)
    np.testing.assert_array_equal(smooth_series(x, SmoothOptions(window=1)), x)
    out = smooth_series(x, SmoothOptions(window=3))
    assert out[0, 0] == 0.0  # the first frame's window shrinks to itself
    assert out[1, 0] == pytest.approx(10 / 3)


def test_works_on_landmark_arrays():
    x = np.zeros((10, 468, 2), np.float32)
    assert smooth_series(x, SmoothOptions()).shape == (10, 468, 2)


@pytest.mark.parametrize("window", [0, 2, -1])
def test_bad_window(window):
    with pytest.raises(UsageError, match="expected an odd number"):
        SmoothOptions(window=window)
