"""Hand the C heap's free memory back to the operating system, so a long-running server's RSS stays flat.

Why: glibc's ``malloc`` keeps memory that Python, NumPy and OpenCV free (decoded frames of an unloaded
package, a session's audio buffers, JPEG buffers) inside its arenas for reuse, one arena per thread that
allocated, instead of returning it. On a server that loads and unloads packages and runs sessions for hours,
that free-but-held memory grows RSS although nothing is leaked: in the 10-minute ``lipsync bench --soak``
it added about 8 % (docs/benchmarks.md, *The 10-minute run*), and one ``malloc_trim(0)`` gave back about
200 MB of a 1 GB server. ``malloc_trim(0)`` returns every free page of every arena (glibc >= 2.8); it is what
Dask and Ray tell users to call for the same symptom.

:class:`HeapTrimmer` calls it after a package unload and every ``heap_trim_seconds`` (``ServerConfig``) from a
worker thread, and counts what it gave back in ``/metrics``. Elsewhere than glibc (musl, macOS, Windows)
there is no ``malloc_trim`` and it does nothing: those allocators return memory by their own rules.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections.abc import Callable

from lipsync_tools.server.metrics import Metrics

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``int malloc_trim(size_t pad)``, or ``None`` where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: musl and macOS have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


MALLOC_TRIM = _find_malloc_trim()
"""This process's ``malloc_trim``; ``None`` where the C library has none."""


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now (torch, the model families, the packages loaded at
    startup: about 300,000) out of the garbage collector's reach (``gc.freeze``); returns how many.

    Why: CPython runs a full collection only when the objects that survived younger ones reach 25 % of
    the long-lived objects. With ~300,000 long-lived objects from startup that takes minutes of serving,
    and meanwhile the reference cycles a finished session or a dropped connection leaves (a session, its
    1.6 MB streaming spectrogram, a transport and its buffers, an exception's frames) stay in memory: the
    soak's RSS rose about 25 MB a minute and fell back by 80 MB every few minutes. Frozen, the startup
    objects no longer count, so cycles are collected soon after they form, and each full collection no
    longer walks objects that never die.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class HeapTrimmer:
    """Give free heap memory back to the OS on demand; thread-safe, one trim at a time.

    ``trim()`` blocks for as long as glibc walks its arenas (milliseconds for a 1 GB server; each arena is
    locked while it is walked, so call it from a worker thread, never from the event loop). ``available``
    is false where the C library has no ``malloc_trim``; ``trim()`` then returns 0 at once.
    """

    def __init__(self, metrics: Metrics | None = None,
                 malloc_trim: Callable[[int], int] | None = MALLOC_TRIM) -> None:
        self._malloc_trim = malloc_trim
        self._metrics = metrics
        self._lock = threading.Lock()
        self.trims = 0
        self.released_bytes = 0

    @property
    def available(self) -> bool:
        return self._malloc_trim is not None

    def trim(self) -> int:
        """Return free heap pages to the OS; the bytes RSS fell by (0 when it did not, or cannot)."""
        if self._malloc_trim is None:
            return 0
        with self._lock:
            before = _rss_bytes()
            started = time.perf_counter()
            self._malloc_trim(0)
            seconds = time.perf_counter() - started
            released = max(0, before - _rss_bytes())  # other threads allocate meanwhile: at least 0
            self.trims += 1
            self.released_bytes += released
        if self._metrics is not None:
            self._metrics.inc("lipsync_heap_trims_total")
            self._metrics.inc("lipsync_heap_released_bytes_total", released)
            self._metrics.observe("lipsync_heap_trim_seconds", seconds)
        log.debug("malloc_trim gave back %.1f MB in %.1f ms", released / 2**20, seconds * 1000)
        return released
