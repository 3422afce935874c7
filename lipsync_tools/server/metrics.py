"""Server metrics: every series ``GET /metrics`` exposes, declared once in :data:`METRICS`.

The exposition is ``prometheus_client``'s (text format 0.0.4). Each :class:`Metrics` has its own
``CollectorRegistry``, never the library's global one: a test process runs several servers, and each counts
only its own. :class:`Metrics` is also the engine's ``Observer`` (``observe_stage``, ``observe_batch``,
``set_queue_depth``), which the engine calls from its inference thread; prometheus_client's metrics take their
own locks.

Code names a metric by its exposed name, as a string (``metrics.inc("lipsync_sessions_total")``). A name not
in :data:`METRICS`, an update of the wrong kind, a missing or extra label, or a label value outside the values
the metric declares raises :class:`MetricsError`, so a typo fails the first test that takes its path instead
of quietly starting a new series. Every label of an updated metric takes a closed set of values (error codes,
stages, ...), so no client can add series. The only open labels are those of *scraped* metrics (``package``,
``model``), whose series are replaced as a whole from the stores each time ``/metrics`` is read: one per
package or model loaded now, bounded by the memory budget, ``--max-packages`` and ``--max-models``.

To add a metric, add one line to :data:`METRICS`, e.g.::

    MetricSpec("lipsync_connections_refused_total", "counter", "Connections refused, by reason.",
               labels={"reason": frozenset({"max_connections"})}),

and update it by that name: ``metrics.inc("lipsync_connections_refused_total", reason="max_connections")``.
Counters end in ``_total``; histograms give their ``buckets``; each label lists the values it may take.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from lipsync_tools.protocol.codec import CODECS
from lipsync_tools.protocol.messages import ErrorCode, MessageType

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""What :meth:`Metrics.render` writes (prometheus_client's ``CONTENT_TYPE_LATEST`` is 1.0.0 since 0.21)."""

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
)
"""Upper bounds (seconds) of the latency histograms: powers of two from 0.5 ms to 4 s."""

BATCH_BUCKETS: Final = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)

Kind = Literal["counter", "gauge", "histogram"]


class MetricsError(LookupError):
    """A metric updated or read by a name, kind or label it was not declared with.

    A bug in the caller, like a ``TypeError`` for an unexpected keyword, so deliberately not a
    ``LipsyncError``: no server handler turns it into an error reply.
    """


@dataclass(frozen=True)
class MetricSpec:
    """One exposed metric.

    ``name``: as exposed (a counter's ends in ``_total``); ``kind``: its ``# TYPE``; ``help``: its ``# HELP``;
    ``labels``: each label's name and the values it may take (``None``: any, only for ``scraped`` metrics);
    ``buckets``: a histogram's upper bounds; ``scraped``: set as a whole from the stores when ``/metrics`` is
    read (:meth:`Metrics.set_models`, :meth:`Metrics.set_memory`), never by ``inc`` or ``set_gauge``.
    """

    name: str
    kind: Kind
    help: str
    _: KW_ONLY
    labels: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    scraped: bool = False


BOOL: Final = frozenset({"true", "false"})
SOURCES: Final = frozenset({"http", "stream", "session"})
"""Where a frame reply went: ``http`` (one-shot), ``stream`` (request on a socket), ``session``."""
DROP_REASONS: Final = frozenset({"late", "socket", "overloaded"})
STAGE_NAMES: Final = frozenset({
    "features", "queue", "inference", "composite", "encode", "total",  # engine.STAGES
    "decode", "detect", "crop", "masks",  # and the rest of baseline.original.ORIGINAL_STAGES
})
API_ERROR_CODES: Final = frozenset({"not_found", "forbidden", "conflict"})
"""The package API's own codes (``server.state.API_STATUS``), beside the protocol's ``ErrorCode``."""
ERROR_CODES: Final = frozenset(str(code) for code in ErrorCode) | API_ERROR_CODES
PROTOCOLS: Final = frozenset(CODECS)
MESSAGE_TYPES: Final = frozenset(t.wire_name for t in MessageType)

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("lipsync_frames_total", "counter", "Frames sent to clients, by source and silence.",
               labels={"source": SOURCES, "silence": BOOL}),
    MetricSpec("lipsync_errors_total", "counter", "Error replies and refused requests, by error code.",
               labels={"code": ERROR_CODES}),
    MetricSpec("lipsync_messages_total", "counter", "Messages decoded from clients, by protocol and type.",
               labels={"protocol": PROTOCOLS, "type": MESSAGE_TYPES}),
    MetricSpec("lipsync_stage_seconds", "histogram", "Engine time per frame and stage, in seconds.",
               labels={"stage": STAGE_NAMES}, buckets=LATENCY_BUCKETS),
    MetricSpec("lipsync_request_seconds", "histogram", "Server time of one request, by endpoint, in seconds.",
               labels={"endpoint": frozenset({"frame"})}, buckets=LATENCY_BUCKETS),
    MetricSpec("lipsync_batch_size", "histogram", "Frames per model call.", buckets=BATCH_BUCKETS),
    MetricSpec("lipsync_queue_depth", "gauge", "Frames waiting in the engine's batch queue."),
    MetricSpec("lipsync_active_sessions", "gauge", "Sessions running now."),
    MetricSpec("lipsync_sessions_total", "counter", "Sessions started."),
    MetricSpec("lipsync_sessions_refused_total", "counter",
               "Live sessions refused at start: the admitted ones would fall below --min-session-fps, "
               "--max-sessions run, or the client's address runs --max-sessions-per-ip."),
    MetricSpec("lipsync_connections_refused_total", "counter",
               "WebSockets and HTTP requests refused at the door because --max-connections were open."),
    MetricSpec("lipsync_session_frames_dropped_total", "counter",
               "Frames a REALTIME session did not send because their time had passed, by reason: late (could "
               "not be rendered in time), socket (the client had not read earlier frames), overloaded (the "
               "engine's queue was full).",
               labels={"reason": DROP_REASONS}),
    MetricSpec("lipsync_session_lag_seconds", "histogram",
               "How long after its audio played each REALTIME frame was sent, in seconds.",
               buckets=LATENCY_BUCKETS),
    MetricSpec("lipsync_disconnects_total", "counter",
               "Clients that disconnected; pending=true when work for them was dropped.",
               labels={"pending": BOOL}),
    MetricSpec("lipsync_packages_loaded", "gauge", "Packages loaded."),
    MetricSpec("lipsync_ready", "gauge", "1 once the startup packages and the model are loaded and warm."),
    MetricSpec("lipsync_catalog_loads_total", "counter", "Packages loaded on demand from the catalog."),
    MetricSpec("lipsync_catalog_load_seconds", "histogram",
               "Time from a catalog id's first request to its package being loaded.",
               buckets=LATENCY_BUCKETS),
    MetricSpec("lipsync_heap_trims_total", "counter",
               "Times free C heap memory was handed back to the OS (malloc_trim: after an unload and every "
               "heap_trim_seconds; never where the C library has no malloc_trim)."),
    MetricSpec("lipsync_heap_released_bytes_total", "counter",
               "Bytes the server's RSS fell by in those trims."),
    MetricSpec("lipsync_heap_trim_seconds", "histogram", "Time one malloc_trim took, in seconds.",
               buckets=LATENCY_BUCKETS),
    # scraped: set from the package and model stores when /metrics is read
    MetricSpec("lipsync_memory_used_bytes", "gauge",
               "Decoded frames and model weights held now (what the budget counts).", scraped=True),
    MetricSpec("lipsync_memory_budget_bytes", "gauge",
               "The memory budget (--max-memory); 0 when there is none.", scraped=True),
    MetricSpec("lipsync_package_evictions_total", "counter", "Idle packages unloaded to make room.",
               scraped=True),
    MetricSpec("lipsync_package_frames_total", "counter",
               "Model frames each loaded package got, by package id.",
               labels={"package": None}, scraped=True),
    MetricSpec("lipsync_models_loaded", "gauge", "Models loaded now.", scraped=True),
    MetricSpec("lipsync_model_loads_total", "counter", "Models loaded since start.", scraped=True),
    MetricSpec("lipsync_model_evictions_total", "counter",
               "Idle models unloaded to make room (--max-models).", scraped=True),
    MetricSpec("lipsync_model_frames_total", "counter", "Frames each loaded model rendered, by model key.",
               labels={"model": None}, scraped=True),
    MetricSpec("lipsync_model_batches_total", "counter",
               "Model calls of each loaded model (frames / batches = its mean batch size).",
               labels={"model": None}, scraped=True),
    MetricSpec("lipsync_model_inference_seconds_total", "counter",
               "Model call time of each loaded model, by model key, in seconds.",
               labels={"model": None}, scraped=True),
)
"""Every metric the server exposes, in exposition order."""

MODEL_LABEL_CHARS: Final = 80
"""Model keys are cut to this many characters in labels (a key names a checkpoint and its AVE encoder)."""


class _Scraped(Collector):
    """A metric whose series are replaced as a whole (:meth:`set`), exposed as they were last set."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.labelnames = sorted(spec.labels)
        # replaced, never changed in place, so collect() reads a consistent set without a lock
        self.values: dict[tuple[str, ...], float] = {} if spec.labels else {(): 0.0}

    def set(self, values: Mapping[tuple[str, ...], float]) -> None:
        self.values = dict(values)

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.spec.kind == "counter":
            return CounterMetricFamily(self.spec.name, self.spec.help, labels=self.labelnames)
        return GaugeMetricFamily(self.spec.name, self.spec.help, labels=self.labelnames)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for key, value in sorted(self.values.items()):
            family.add_metric(list(key), value)
        return [family]


class _WithoutCreated(Collector):
    """``registry``'s families without their ``*_created`` samples.

    prometheus_client gives every counter and histogram a ``<name>_created`` series (its start time), which
    the 0.0.4 text format writes as a gauge family of its own: undocumented names, twice the series. The
    library's switch (``disable_created_metrics``) is process-wide, not ours to flip: they are dropped here.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():  # fresh objects on every collect: ours to trim
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def _check_spec(spec: MetricSpec) -> None:
    where = f"metric {spec.name} (METRICS in lipsync_tools/server/metrics.py)"
    if not spec.name.startswith("lipsync_") or spec.name.endswith("_created"):
        raise MetricsError(f"{where}: a name starts with 'lipsync_' and does not end in '_created'")
    if (spec.kind == "counter") != spec.name.endswith("_total"):
        raise MetricsError(f"{where}: counters, and only counters, end in '_total'")
    if (spec.kind == "histogram") != bool(spec.buckets) or (spec.scraped and spec.kind == "histogram"):
        raise MetricsError(f"{where}: histograms, and only histograms, have buckets; none is scraped")
    if not spec.scraped and any(values is None for values in spec.labels.values()):
        raise MetricsError(f"{where}: every label of an updated metric lists its values (open labels would "
                           "let clients add series); only scraped metrics may leave them open")


class Metrics:
    """The metrics of one server, in a registry of its own (:attr:`registry`), rendered by :meth:`render`.

    Every name and label is declared in :data:`METRICS`; using another raises :class:`MetricsError`.
    """

    def __init__(self, specs: Sequence[MetricSpec] = METRICS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._specs: dict[str, MetricSpec] = {}
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._scraped: dict[str, _Scraped] = {}
        for spec in specs:
            _check_spec(spec)
            if spec.name in self._specs:
                raise MetricsError(f"metric {spec.name} is declared twice")
            self._specs[spec.name] = spec
            labelnames = sorted(spec.labels)  # the text sorts them too (``le`` included)
            if spec.scraped:
                self._scraped[spec.name] = _Scraped(spec)
                self.registry.register(self._scraped[spec.name])
            elif spec.kind == "counter":
                self._counters[spec.name] = Counter(spec.name, spec.help, labelnames, registry=self.registry)
            elif spec.kind == "gauge":
                self._gauges[spec.name] = Gauge(spec.name, spec.help, labelnames, registry=self.registry)
            else:
                self._histograms[spec.name] = Histogram(spec.name, spec.help, labelnames,
                                                        buckets=spec.buckets, registry=self.registry)
        self._exposition = _WithoutCreated(self.registry)

    def _spec(self, name: str, labels: Mapping[str, str]) -> MetricSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise MetricsError(f"unknown metric {name!r}: declare it in METRICS "
                               f"(lipsync_tools/server/metrics.py); known: {', '.join(self._specs)}")
        if labels.keys() != spec.labels.keys():
            raise MetricsError(f"{name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")
        return spec

    def _updated(self, name: str, kind: Kind, labels: Mapping[str, str]) -> dict[str, str]:
        """``labels`` as strings once ``name`` is a ``kind`` updated directly and every value is declared."""
        spec = self._spec(name, labels)
        if spec.kind != kind:
            raise MetricsError(f"{name} is a {spec.kind}, not a {kind}")
        if spec.scraped:
            raise MetricsError(f"{name} is set from the stores by set_models/set_memory, not directly")
        checked = {}
        for label, value in labels.items():
            allowed = spec.labels[label]
            text = str(value)
            if allowed is not None and text not in allowed:
                raise MetricsError(f"{name}: {label}={text!r} is not one of {sorted(allowed)}; declare the "
                                   "value in METRICS (lipsync_tools/server/metrics.py)")
            checked[label] = text
        return checked

    # --- generic updates ----------------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to counter ``name`` with ``labels``; raises :class:`MetricsError`."""
        checked = self._updated(name, "counter", labels)
        counter = self._counters[name]
        (counter.labels(**checked) if checked else counter).inc(amount)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` to ``value``; raises :class:`MetricsError`."""
        checked = self._updated(name, "gauge", labels)
        gauge = self._gauges[name]
        (gauge.labels(**checked) if checked else gauge).set(value)

    def add_gauge(self, name: str, amount: float, **labels: str) -> None:
        """Add ``amount`` (may be negative) to gauge ``name``; raises :class:`MetricsError`."""
        checked = self._updated(name, "gauge", labels)
        gauge = self._gauges[name]
        (gauge.labels(**checked) if checked else gauge).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record ``value`` in histogram ``name`` (its buckets are declared); raises :class:`MetricsError`."""
        checked = self._updated(name, "histogram", labels)
        histogram = self._histograms[name]
        (histogram.labels(**checked) if checked else histogram).observe(value)

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
        """One error reply (or refused request) with ``code`` (an ``ErrorCode`` or a package API code)."""
        self.inc("lipsync_errors_total", code=code)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge (0 if never set); histograms give their count.

        Collects the whole registry: for tests and occasional reads, not for every frame.
        """
        spec = self._spec(name, labels)
        sample = f"{name}_count" if spec.kind == "histogram" else name
        found = self.registry.get_sample_value(sample, {k: str(v) for k, v in labels.items()})
        return 0.0 if found is None else found

    # --- scraped from the stores --------------------------------------------------------------------------

    def set_models(self, models: Iterable[dict[str, Any]], loads: int, evictions: int) -> None:
        """Per-model series from the engine's model store (at most ``--max-models`` label values: the
        models loaded now; an unloaded model's series go with it)."""
        listed = list(models)
        self._scraped["lipsync_models_loaded"].set({(): float(len(listed))})
        self._scraped["lipsync_model_loads_total"].set({(): float(loads)})
        self._scraped["lipsync_model_evictions_total"].set({(): float(evictions)})
        for name, field_name in (("lipsync_model_frames_total", "frames"),
                                 ("lipsync_model_batches_total", "batches"),
                                 ("lipsync_model_inference_seconds_total", "inference_seconds")):
            self._scraped[name].set(
                {(str(m["key"])[:MODEL_LABEL_CHARS],): float(m[field_name]) for m in listed})

    def set_memory(
        self, used: int, budget: int | None, evictions: int, packages: Iterable[dict[str, Any]] = ()
    ) -> None:
        """The memory budget's state and per-package frames (set when /metrics is read; one label value per
        loaded package: the budget and --max-packages bound them)."""
        self._scraped["lipsync_package_frames_total"].set(
            {(str(p["id"]),): float(p.get("frames_rendered", 0)) for p in packages})
        self._scraped["lipsync_memory_used_bytes"].set({(): float(used)})
        self._scraped["lipsync_memory_budget_bytes"].set({(): float(budget or 0)})
        self._scraped["lipsync_package_evictions_total"].set({(): float(evictions)})

    def render(self) -> str:
        """Every metric in the Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`), with HELP and TYPE."""
        return generate_latest(self._exposition).decode("utf-8")
