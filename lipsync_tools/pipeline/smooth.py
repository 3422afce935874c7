"""Smooth stage: temporal smoothing of boxes and landmarks so crops do not jitter.

A centred moving average over ``window`` frames (odd; 1 turns smoothing off). At the ends of the video the
window is shortened symmetrically rather than padded, so the first and last frames are not pulled towards
copies of themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

_BLOCK_COLUMNS = 64


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
    flat = values.reshape(n, -1)
    out = np.empty_like(flat)
    idx = np.arange(n)
    reach = np.minimum(np.minimum(idx, n - 1 - idx), half)  # symmetric window, shortened at the ends
    counts = (2 * reach + 1).astype(np.float64)[:, None]
    # Running sums in float64 (float32 would lose precision over long videos), a block of columns at a time
    # so the float64 copies stay small however long the video is.
    for start in range(0, flat.shape[1], _BLOCK_COLUMNS):
        block = flat[:, start:start + _BLOCK_COLUMNS].astype(np.float64)
        cumsum = np.concatenate([np.zeros((1, block.shape[1])), np.cumsum(block, axis=0)])
        out[:, start:start + _BLOCK_COLUMNS] = (cumsum[idx + reach + 1] - cumsum[idx - reach]) / counts
    return out.reshape(values.shape)
