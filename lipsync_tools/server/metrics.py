"""Server metrics, written by hand in the Prometheus text exposition format (version 0.0.4).

``prometheus_client`` is not a dependency, and what we need is small: counters and gauges with labels and
fixed-bucket histograms. :class:`Metrics` is also the engine's ``Observer`` (``observe_stage``,
``observe_batch``, ``set_queue_depth``), which the engine calls from its inference thread, so every update
takes one lock; an update is a dict lookup and an add, cheap next to a frame.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
)
"""Upper bounds (seconds) of the latency histograms: powers of two from 0.5 ms to 4 s."""

BATCH_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)

Labels = tuple[tuple[str, str], ...]


def _labels(pairs: Labels) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last one: above every bound (+Inf only)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def lines(self, name: str, labels: Labels) -> Iterable[str]:
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            yield f"{name}_bucket{_labels((*labels, ('le', _number(bound))))} {cumulative}"
        yield f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self.count}"
        yield f"{name}_sum{_labels(labels)} {_number(self.total)}"
        yield f"{name}_count{_labels(labels)} {self.count}"


class Metrics:
    """Counters, gauges and histograms of one server, rendered by :meth:`render`.

    Names (all prefixed ``lipsync_``): ``frames_total{source,silence}``, ``stage_seconds{stage}`` (the
    engine's per-stage latency), ``request_seconds{endpoint}`` (server-side time of a one-shot request),
    ``batch_size``, ``queue_depth``, ``errors_total{code}``, ``active_sessions``, ``sessions_total``,
    ``sessions_refused_total``, ``session_frames_dropped_total{reason}``, ``session_lag_seconds``,
    ``disconnects_total{pending}`` (clients gone, with or without work in
    flight), ``packages_loaded``, ``ready``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._bounds: dict[str, Sequence[float]] = {
            "lipsync_stage_seconds": LATENCY_BUCKETS,
            "lipsync_request_seconds": LATENCY_BUCKETS,
            "lipsync_batch_size": BATCH_BUCKETS,
        }
        self._help: dict[str, tuple[str, str]] = {
            "lipsync_frames_total": ("counter", "Frames sent to clients, by source and silence."),
            "lipsync_errors_total": ("counter", "Error replies and refused requests, by error code."),
            "lipsync_sessions_total": ("counter", "Sessions started."),
            "lipsync_session_frames_dropped_total": (
                "counter", "Frames a REALTIME session did not send because their time had passed, by reason: "
                "late (could not be rendered in time), socket (the client had not read earlier frames), "
                "overloaded (the engine's queue was full)."),
            "lipsync_sessions_refused_total": (
                "counter", "Live sessions refused at start: the admitted ones would fall below "
                "--min-session-fps, or --max-sessions run."),
            "lipsync_session_lag_seconds": (
                "histogram", "How long after its audio played each REALTIME frame was sent, in seconds."),
            "lipsync_disconnects_total": (
                "counter", "Clients that disconnected; pending=true when work for them was dropped."),
            "lipsync_active_sessions": ("gauge", "Sessions running now."),
            "lipsync_queue_depth": ("gauge", "Frames waiting in the engine's batch queue."),
            "lipsync_packages_loaded": ("gauge", "Packages loaded."),
            "lipsync_ready": ("gauge", "1 once the startup packages and the model are loaded and warm."),
            "lipsync_stage_seconds": ("histogram", "Engine time per frame and stage, in seconds."),
            "lipsync_request_seconds": ("histogram", "Server time of one request, by endpoint, in seconds."),
            "lipsync_batch_size": ("histogram", "Frames per model call."),
            "lipsync_catalog_loads_total": ("counter", "Packages loaded on demand from the catalog."),
            "lipsync_catalog_load_seconds": (
                "histogram", "Time from a catalog id's first request to its package being loaded."),
            "lipsync_models_loaded": ("gauge", "Models loaded now."),
            "lipsync_memory_used_bytes": (
                "gauge", "Decoded frames and model weights held now (what the budget counts)."),
            "lipsync_memory_budget_bytes": (
                "gauge", "The memory budget (--max-memory); 0 when there is none."),
            "lipsync_package_evictions_total": ("counter", "Idle packages unloaded to make room."),
            "lipsync_package_frames_total": (
                "counter", "Model frames each loaded package got, by package id."),
            "lipsync_model_loads_total": ("counter", "Models loaded since start."),
            "lipsync_model_evictions_total": ("counter", "Idle models unloaded to make room (--max-models)."),
            "lipsync_model_frames_total": ("counter", "Frames each loaded model rendered, by model key."),
            "lipsync_model_batches_total": (
                "counter", "Model calls of each loaded model (frames / batches = its mean batch size)."),
            "lipsync_model_inference_seconds_total": (
                "counter", "Model call time of each loaded model, by model key, in seconds."),
        }
        for name in ("lipsync_active_sessions", "lipsync_queue_depth", "lipsync_packages_loaded",
                     "lipsync_ready"):
            self._gauges[name] = {(): 0.0}
        for name in ("lipsync_sessions_total", "lipsync_sessions_refused_total"):
            self._counters[name] = {(): 0.0}

    # --- generic updates ----------------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` to ``value``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges.setdefault(name, {})[key] = float(value)

    def add_gauge(self, name: str, amount: float, **labels: str) -> None:
        """Add ``amount`` (may be negative) to gauge ``name``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._gauges.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record ``value`` in histogram ``name`` (buckets fixed per name)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._histograms.setdefault(name, {})
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Histogram(self._bounds.get(name, LATENCY_BUCKETS))
            hist.observe(value)

    # --- the engine's Observer interface -----------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float) -> None:
        """The engine spent ``seconds`` in ``stage`` for one frame."""
        self.observe("lipsync_stage_seconds", seconds, stage=stage)

    def observe_batch(self, size: int) -> None:
        """The engine ran the model once on ``size`` frames."""
        self.observe("lipsync_batch_size", float(size))

    def set_queue_depth(self, depth: int) -> None:
        """Frames now waiting in the engine's queue."""
        self.set_gauge("lipsync_queue_depth", float(depth))

    # --- server events ------------------------------------------------------------------------------------

    def frame_sent(self, source: str, silence: bool) -> None:
        """A frame reply went out; ``source``: ``http``, ``stream`` (request on a socket) or ``session``."""
        self.inc("lipsync_frames_total", source=source, silence="true" if silence else "false")

    def error(self, code: str) -> None:
        """One error reply (or refused request) with ``code``."""
        self.inc("lipsync_errors_total", code=code)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge (0 if never set); histograms give their count."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            for table in (self._counters, self._gauges):
                if name in table and key in table[name]:
                    return table[name][key]
            if name in self._histograms and key in self._histograms[name]:
                return float(self._histograms[name][key].count)
        return 0.0

    def set_models(self, models: Iterable[dict[str, Any]], loads: int, evictions: int) -> None:
        """Per-model series from the engine's model store (at most ``--max-models`` label values: the
        models loaded now; an unloaded model's series go with it)."""
        listed = list(models)
        with self._lock:
            self._gauges["lipsync_models_loaded"] = {(): float(len(listed))}
            self._counters["lipsync_model_loads_total"] = {(): float(loads)}
            self._counters["lipsync_model_evictions_total"] = {(): float(evictions)}
            self._counters["lipsync_model_frames_total"] = {
                (("model", str(m["key"])[:80]),): float(m["frames"]) for m in listed
            }
            self._counters["lipsync_model_batches_total"] = {
                (("model", str(m["key"])[:80]),): float(m["batches"]) for m in listed
            }
            self._counters["lipsync_model_inference_seconds_total"] = {
                (("model", str(m["key"])[:80]),): float(m["inference_seconds"]) for m in listed
            }

    def set_memory(
        self, used: int, budget: int | None, evictions: int, packages: Iterable[dict[str, Any]] = ()
    ) -> None:
        """The memory budget's state and per-package frames (set when /metrics is read; one label value per
        loaded package: the budget and --max-packages bound them)."""
        with self._lock:
            self._counters["lipsync_package_frames_total"] = {
                (("package", str(p["id"])),): float(p.get("frames_rendered", 0)) for p in packages
            }
            self._gauges["lipsync_memory_used_bytes"] = {(): float(used)}
            self._gauges["lipsync_memory_budget_bytes"] = {(): float(budget or 0)}
            self._counters["lipsync_package_evictions_total"] = {(): float(evictions)}

    def render(self) -> str:
        """Every metric in the Prometheus text format, ``# HELP``/``# TYPE`` first, ending with a newline."""
        lines: list[str] = []
        with self._lock:
            names = sorted({*self._counters, *self._gauges, *self._histograms, *self._help})
            for name in names:
                kind, text = self._help.get(name, ("untyped", name))
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                for key, value in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(key)} {_number(value)}")
                for key, value in sorted(self._gauges.get(name, {}).items()):
                    lines.append(f"{name}{_labels(key)} {_number(value)}")
                for key, hist in sorted(self._histograms.get(name, {}).items()):
                    lines.extend(hist.lines(name, key))
        return "\n".join(lines) + "\n"
