"""How fast a model runs at each batch size: measured when it loads, then kept current while it serves.

The server admits a live session only when the sessions it already carries would keep their frame rate
(:mod:`lipsync_tools.server.admission`), and a session drops a frame it cannot deliver on time instead of
rendering it late (:mod:`lipsync_tools.server.sessions`). Both need the time of one model call at a given
batch size. :func:`measure_capacity` times one call per batch size (1, 2, 4, 8, ... up to ``max_batch``) on
zeros right after the warm-up; :meth:`Capacity.observe` then folds in every batch the engine serves (an
exponential moving average per batch size), so the figures follow the machine's real load.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np

_ALPHA = 0.2
"""Weight of a new observation in the moving average (about the last 10 calls count)."""


def capacity_batches(max_batch: int) -> tuple[int, ...]:
    """The batch sizes measured at load: powers of two below ``max_batch``, and ``max_batch`` itself."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class Capacity:
    """Seconds per model call by batch size (thread-safe: the engine's worker writes, the loop reads)."""

    def __init__(self, batch_seconds: dict[int, float] | None = None) -> None:
        self._seconds: dict[int, float] = {b: s for b, s in (batch_seconds or {}).items() if b >= 1 and s > 0}
        self._lock = threading.Lock()

    @property
    def known(self) -> bool:
        """Whether any batch size has been measured or observed."""
        return bool(self._seconds)

    def observe(self, batch: int, seconds: float) -> None:
        """Fold one served model call of ``batch`` frames that took ``seconds`` into the average."""
        if batch < 1 or seconds <= 0:
            return
        with self._lock:
            old = self._seconds.get(batch)
            self._seconds[batch] = seconds if old is None else old + _ALPHA * (seconds - old)

    def batch_seconds(self, batch: int) -> float:
        """Expected seconds of one call of ``batch`` frames (0.0 when nothing is known yet).

        Sizes between two known ones are interpolated linearly; beyond the largest known size the time per
        frame of that size is assumed (a larger batch is never cheaper per frame than what was measured).
        """
        with self._lock:
            known = sorted(self._seconds.items())
        if not known:
            return 0.0
        batch = max(1, batch)
        for (b0, s0), (b1, s1) in itertools.pairwise(known):
            if b0 <= batch <= b1:
                return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
        if batch < known[0][0]:
            b0, s0 = known[0]
            return s0 * batch / b0 if b0 > 1 else s0
        b_last, s_last = known[-1]
        return s_last * batch / b_last

    def frames_per_second(self, batch: int) -> float:
        """Frames per second one model call of ``batch`` frames sustains (0.0 when unknown)."""
        seconds = self.batch_seconds(batch)
        return batch / seconds if seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: milliseconds per call and frames per second, by batch size."""
        with self._lock:
            known = sorted(self._seconds.items())
        return {
            "batch_ms": {str(b): round(s * 1000, 3) for b, s in known},
            "frames_per_second": {str(b): round(b / s, 2) for b, s in known},
        }


def measure_capacity(backend: Any, batches: tuple[int, ...]) -> Capacity:
    """Time one call of ``backend.infer`` per batch size on zeros, after one untimed call of that size.

    ``backend`` is an :class:`~lipsync_tools.models.backends.InferenceBackend`. The untimed call pays for
    lazy, shape-specific set-up (ONNX Runtime allocates per shape), so the timed one is the steady state.
    """
    size = int(backend.crop_size)
    shape = backend.audio_mode.network_shape
    seconds: dict[int, float] = {}
    for batch in batches:
        crops = np.zeros((batch, size, size, 3), np.uint8)
        audio = np.zeros((batch, *shape), np.float32)
        backend.infer(crops, audio)
        t0 = time.perf_counter()
        backend.infer(crops, audio)
        seconds[batch] = time.perf_counter() - t0
    return Capacity(seconds)


__all__ = ["Capacity", "capacity_batches", "measure_capacity"]
