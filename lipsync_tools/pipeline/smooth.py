"""Smooth stage: temporal smoothing of boxes and landmarks so crops do not jitter.

A centred moving average over ``window`` frames (odd; 1 turns smoothing off). At the ends of the video the
window is shortened symmetrically rather than padded, so the first and last frames are not pulled towards
copies of themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class SmoothOptions:
    window: int = (
        5  # frames; 5 at 25 fps is 0.2 s, enough to remove detector jitter, short enough to follow turns
    )

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise UsageError(f"smoothing window is {self.window}; expected an odd number of frames >= 1")


def smooth_series(values: np.ndarray, options: SmoothOptions) -> np.ndarray:
    """Smooth ``values`` (N, ...) along axis 0; returns float32 of the same shape."""
    values = np.asarray(values, dtype=np.float32)
    half = options.window // 2
    n = values.shape[0]
    if half == 0 or n < 3:
        return values.copy()
    flat = values.reshape(n, -1).astype(np.float64)
    cumsum = np.concatenate([np.zeros((1, flat.shape[1])), np.cumsum(flat, axis=0)])
    idx = np.arange(n)
    reach = np.minimum(np.minimum(idx, n - 1 - idx), half)  # symmetric window, shortened at the ends
    sums = cumsum[idx + reach + 1] - cumsum[idx - reach]
    out = sums / (2 * reach + 1)[:, None]
    return out.reshape(values.shape).astype(np.float32)
