"""How fast a model runs at each batch size, and the batch size and wait chosen from that.

The server admits a live session only when the sessions it already carries would keep their frame rate
(:mod:`lipsync_tools.server.admission`), and a session drops a frame it cannot deliver on time instead of
rendering it late (:mod:`lipsync_tools.server.sessions`). Both need the time of one model call at a given
batch size. :func:`measure_capacity` times the model at each batch size of :func:`capacity_batches` (1, 2, 4,
8, ...) on zeros right after the warm-up, the median of a few calls per size; :meth:`Capacity.observe` then
folds in every batch the engine serves (an exponential moving average per batch size), so the figures follow
the machine's real load.

Unless ``lipsync serve`` is given ``--max-batch`` / ``--max-wait-ms``, :func:`choose_batching` picks them from
the curve measured at startup (docs/engine.md, *Batch size by measurement*).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

_ALPHA = 0.2
"""Weight of a new observation in the moving average (about the last 10 calls count)."""

MEASURE_ROUNDS: Final = 3
"""Calls per batch size at load, the first warming the size: their median is the size's time. Three is the
fewest whose median drops one slow call; it costs three calls at each size, 45 frames at sizes 1-8: 1.4-2.1 s
for random-weight Wav2Lip on ONNX Runtime on 2 idle CPU cores (31-46 ms a frame), milliseconds on a GPU."""

MEASURED_MAX_BATCH_CPU: Final = 8
"""Largest batch size measured (and so chosen) on a CPU: on 2 cores the model already keeps both busy at
batch 1-2, and larger batches only add latency (docs/engine.md)."""

MEASURED_MAX_BATCH_GPU: Final = 16
"""Largest batch size measured (and so chosen) on a GPU, where per-frame cost keeps falling with size."""

PER_FRAME_TOLERANCE: Final = 0.10
""":func:`choose_batching` takes the smallest batch whose time per frame is within this fraction of the best
measured: more frames per call would buy at most this much throughput, and lengthen every call."""

WAIT_FRACTION: Final = 0.25
"""Longest wait for a batch to fill, as a fraction of one single-frame call (:func:`choose_batching`)."""

MAX_WAIT_CAP_MS: Final = 10.0
"""Cap on a measured wait: a quarter of a 25 fps frame interval, whatever the model's speed."""

DEFAULT_MAX_BATCH: Final = 8
"""The batch size when nothing was measured (``EngineOptions``' default; e.g. no startup package)."""

DEFAULT_MAX_WAIT_MS: Final = 4.0
"""The wait when nothing was measured (``EngineOptions``' default)."""

BatchingSource = Literal["measured", "given", "default"]
"""Where a batching value came from: the measured curve, the user (``--max-batch``/``--max-wait-ms``), or the
defaults because nothing was measured."""


def capacity_batches(max_batch: int) -> tuple[int, ...]:
    """The batch sizes measured at load: powers of two below ``max_batch``, and ``max_batch`` itself."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def measured_max_batch(gpu: bool = False) -> int:
    """The largest batch size measured when the batch size is to be chosen (16 on a GPU, else 8)."""
    return MEASURED_MAX_BATCH_GPU if gpu else MEASURED_MAX_BATCH_CPU


class Capacity:
    """Seconds per model call by batch size (thread-safe: the engine's worker writes, the loop reads).

    ``measure_seconds`` / ``measure_rounds``: what :func:`measure_capacity` spent (0: it was not measured).
    """

    def __init__(
        self, batch_seconds: dict[int, float] | None = None, *, measure_seconds: float = 0.0,
        measure_rounds: int = 0,
    ) -> None:
        self._seconds: dict[int, float] = {b: s for b, s in (batch_seconds or {}).items() if b >= 1 and s > 0}
        self._lock = threading.Lock()
        self.measure_seconds = measure_seconds
        self.measure_rounds = measure_rounds

    @property
    def known(self) -> bool:
        """Whether any batch size has been measured or observed."""
        return bool(self._seconds)

    def seconds_by_batch(self) -> dict[int, float]:
        """A copy of the known seconds per call, by batch size in increasing order."""
        with self._lock:
            return dict(sorted(self._seconds.items()))

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
        """JSON-ready: milliseconds per call and frames per second, by batch size (and, when it was measured
        at load, ``measure_seconds`` and ``measure_rounds``)."""
        with self._lock:
            known = sorted(self._seconds.items())
        out: dict[str, Any] = {
            "batch_ms": {str(b): round(s * 1000, 3) for b, s in known},
            "frames_per_second": {str(b): round(b / s, 2) for b, s in known},
        }
        if self.measure_rounds:
            out["measure_seconds"] = round(self.measure_seconds, 3)
            out["measure_rounds"] = self.measure_rounds
        return out


def measure_capacity(backend: Any, batches: tuple[int, ...], *, rounds: int = MEASURE_ROUNDS) -> Capacity:
    """Time ``backend.infer`` at each batch size on zeros: the median of ``rounds`` calls per size.

    ``backend`` is an :class:`~lipsync_tools.models.backends.InferenceBackend`. The calls go in rounds over
    every size, in alternating order (1, 2, 4, 8, then 8, 4, 2, 1, ...), not size after size: a burst of load
    from another process then slows one call of several sizes rather than every call of one size, and no size
    always runs right after the largest; the median per size drops such a call. The first round pays for
    lazy, shape-specific set-up (ONNX Runtime allocates per shape, a GPU loads its kernels) and so warms the
    model for serving; the median drops that call too when it is the slow one. (Until issue 12 one untimed
    and one timed call per size: as many calls as two rounds, and a single sample.)
    """
    if not batches:
        return Capacity()
    rounds = max(1, rounds)
    size = int(backend.crop_size)
    shape = backend.audio_mode.network_shape
    inputs = {b: (np.zeros((b, size, size, 3), np.uint8), np.zeros((b, *shape), np.float32)) for b in batches}
    timed: dict[int, list[float]] = {b: [] for b in batches}
    started = time.perf_counter()
    for n in range(rounds):
        for batch in batches if n % 2 == 0 else batches[::-1]:
            crops, audio = inputs[batch]
            t0 = time.perf_counter()
            backend.infer(crops, audio)
            timed[batch].append(time.perf_counter() - t0)
    seconds = {b: statistics.median(values) for b, values in timed.items()}
    return Capacity(seconds, measure_seconds=time.perf_counter() - started, measure_rounds=rounds)


@dataclass(frozen=True, kw_only=True, slots=True)
class Batching:
    """How the engine batches (``EngineOptions.max_batch`` / ``max_wait_ms``) and why.

    ``max_batch``: most frames in one model call. ``max_wait_ms``: longest the first frame of a batch waits
    for more. ``max_batch_source`` / ``max_wait_source``: ``"measured"`` (:func:`choose_batching` on the
    measured curve), ``"given"`` (the user's option) or ``"default"`` (nothing was measured). ``reason``: one
    sentence saying why. ``batch_ms``: the curve the choice was made from, milliseconds per call by batch size
    (empty when nothing was measured); ``measure_seconds`` / ``measure_rounds``: what measuring it cost.
    ``measured_on``: which model the curve is of (the server sets it: the startup model's key); the values
    apply to the whole engine, every model it loads later included.
    """

    max_batch: int
    max_wait_ms: float
    max_batch_source: BatchingSource
    max_wait_source: BatchingSource
    reason: str
    batch_ms: Mapping[int, float] = field(default_factory=dict)
    measure_seconds: float = 0.0
    measure_rounds: int = 0
    measured_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the startup report's and ``GET /v1/models``' ``batching``)."""
        return {
            "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms,
            "max_batch_source": self.max_batch_source, "max_wait_source": self.max_wait_source,
            "reason": self.reason, "measured_on": self.measured_on,
            "batch_ms": {str(b): round(ms, 3) for b, ms in self.batch_ms.items()},
            "frame_ms": {str(b): round(ms / b, 3) for b, ms in self.batch_ms.items()},
            "measure_seconds": round(self.measure_seconds, 3), "measure_rounds": self.measure_rounds,
        }

    def summary(self) -> dict[str, Any]:
        """The values and their sources only (each model's entry in ``GET /v1/models``)."""
        return {
            "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms,
            "max_batch_source": self.max_batch_source, "max_wait_source": self.max_wait_source,
            "measured_on": self.measured_on,
        }


def choose_batching(
    capacity: Capacity, *, gpu: bool = False, max_batch: int | None = None, max_wait_ms: float | None = None,
) -> Batching:
    """The batch size and wait for a model whose seconds per call by batch size are ``capacity``.

    Batching trades latency for throughput: a call of ``b`` frames takes ``t(b)`` seconds, so every frame in
    it waits ``t(b)``, while the model's cost per frame ``c(b) = t(b) / b`` falls as ``b`` grows only as long
    as one frame does not already keep the hardware busy. The rule:

    * **max_batch**: the smallest measured ``b`` (up to :func:`measured_max_batch`: 8 on a CPU, 16 on a GPU)
      whose ``c(b)`` is within :data:`PER_FRAME_TOLERANCE` (10 %) of the best measured ``c``. A larger batch
      would raise throughput by at most 10 % and lengthen every call it makes. A flat curve (a CPU whose
      cores one frame already fills) gives 1 or 2; a falling one (a GPU) gives 8 or 16.
    * **max_wait_ms**: 0 when ``max_batch`` is 1 (nothing to wait for). Otherwise
      ``min(WAIT_FRACTION * t(1), MAX_WAIT_CAP_MS)``: a frame that waits for company would have been done in
      ``t(1)`` alone, so waiting a quarter of that costs it little, and its batch's call ``t(b) >= t(1)``
      dwarfs the wait; the 10 ms cap keeps it a quarter of a 25 fps frame interval on a slow model.
      (Frames that queue while a call runs go at once whatever the wait: the wait only matters at light load.)

    A value given (``max_batch`` / ``max_wait_ms``, the user's options) is kept; the other one is still chosen
    (a wait for a given batch size follows the same rule). With nothing measured (``capacity`` empty), values
    not given are the defaults (:data:`DEFAULT_MAX_BATCH`, :data:`DEFAULT_MAX_WAIT_MS`). ``gpu``: whether the
    model runs on a GPU (nothing sets it yet: the ``device`` option will).
    """
    ms = {b: s * 1000 for b, s in capacity.seconds_by_batch().items()}
    candidates = {b: t for b, t in ms.items() if b <= measured_max_batch(gpu)}
    batch_source: BatchingSource
    wait_source: BatchingSource
    if max_batch is not None:
        batch, batch_source, batch_why = max_batch, "given", f"max batch {max_batch} given"
    elif not candidates:
        batch, batch_source = DEFAULT_MAX_BATCH, "default"
        batch_why = f"nothing measured: max batch {batch} (the default)"
    else:
        per_frame = {b: t / b for b, t in candidates.items()}
        best = min(per_frame, key=lambda b: (per_frame[b], b))
        limit = per_frame[best] * (1 + PER_FRAME_TOLERANCE)
        batch, batch_source = min(b for b, c in per_frame.items() if c <= limit), "measured"
        if batch == best:
            batch_why = f"max batch {batch}: {per_frame[batch]:.3g} ms/frame, the best measured"
        else:
            batch_why = (
                f"max batch {batch}: {per_frame[batch]:.3g} ms/frame, within {PER_FRAME_TOLERANCE:.0%} of "
                f"the best measured ({per_frame[best]:.3g} ms/frame at batch {best})"
            )
    if max_wait_ms is not None:
        wait, wait_source, wait_why = max_wait_ms, "given", f"max wait {max_wait_ms:g} ms given"
    elif batch == 1:
        wait, wait_source = 0.0, "measured" if ms else "default"
        wait_why = "no wait (batch 1: nothing to wait for)"
    elif not ms:
        wait, wait_source = DEFAULT_MAX_WAIT_MS, "default"
        wait_why = f"max wait {wait:g} ms (the default)"
    else:
        single_ms = capacity.batch_seconds(1) * 1000
        wait, wait_source = round(min(WAIT_FRACTION * single_ms, MAX_WAIT_CAP_MS), 3), "measured"
        wait_why = (
            f"max wait {wait:g} ms: {WAIT_FRACTION:.0%} of one single-frame call ({single_ms:.3g} ms), "
            f"at most {MAX_WAIT_CAP_MS:g} ms"
        )
    return Batching(
        max_batch=batch, max_wait_ms=wait, max_batch_source=batch_source, max_wait_source=wait_source,
        reason=f"{batch_why}; {wait_why}", batch_ms=ms, measure_seconds=capacity.measure_seconds,
        measure_rounds=capacity.measure_rounds,
    )


__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_MS",
    "MAX_WAIT_CAP_MS",
    "MEASURED_MAX_BATCH_CPU",
    "MEASURED_MAX_BATCH_GPU",
    "MEASURE_ROUNDS",
    "PER_FRAME_TOLERANCE",
    "WAIT_FRACTION",
    "Batching",
    "BatchingSource",
    "Capacity",
    "capacity_batches",
    "choose_batching",
    "measure_capacity",
    "measured_max_batch",
]
