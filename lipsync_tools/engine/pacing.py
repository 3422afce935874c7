"""Which avatar frame to show next, and when audio counts as silence.

Both are pure functions of their arguments: sessions (server) and ``render`` keep their own step counters.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

# Full scale of int16 PCM: a square wave at +-32768 is 0 dBFS.
_FULL_SCALE = 32768.0


def pingpong_index(step: int, n_frames: int) -> int:
    """The avatar frame shown at ``step`` (0, 1, ...) when walking ``n_frames`` frames forward and back.

    The walk is 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...: a period of ``2 * (n - 1)`` steps in which neither
    end frame is shown twice in a row, so the loop has no jump and no stall. A one-frame package always
    gives 0. Raises :class:`UsageError` for a negative step or a package without frames.
    """
    if n_frames < 1:
        raise UsageError(f"a ping-pong walk needs at least one frame, got n_frames={n_frames}")
    if step < 0:
        raise UsageError(f"step must be >= 0, got {step}")
    if n_frames == 1:
        return 0
    period = 2 * (n_frames - 1)
    phase = step % period
    return phase if phase < n_frames else period - phase


def window_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 PCM samples in dBFS (0 dBFS = full-scale square wave; ``-inf`` for digital zero)."""
    samples = np.asarray(pcm)
    if samples.size == 0:
        return float("-inf")
    # float64 accumulation: a sum of squared int16 values overflows float32's exact range quickly.
    mean_square = float(np.dot(samples.astype(np.float64), samples.astype(np.float64))) / samples.size
    if mean_square <= 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(mean_square / (_FULL_SCALE * _FULL_SCALE)))


def is_silent(pcm_int16_window: np.ndarray, dbfs_threshold: float) -> bool:
    """True when the RMS level of ``pcm_int16_window`` (int16 samples, any length) is below the threshold.

    ``dbfs_threshold`` is in dBFS, e.g. ``-50.0``; an empty window is silent. Raises :class:`UsageError`
    when the samples are not int16.
    """
    samples = np.asarray(pcm_int16_window)
    if samples.dtype != np.int16:
        raise UsageError(f"expected int16 PCM samples, got dtype {samples.dtype}")
    return window_dbfs(samples) < dbfs_threshold
