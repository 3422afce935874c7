"""The server's metrics: prometheus_client's text, every declared name and label, nothing else, per server."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lipsync_tools.baseline.original import ORIGINAL_STAGES
from lipsync_tools.engine.engine import STAGES
from lipsync_tools.server.metrics import (
    METRICS,
    STAGE_NAMES,
    Metrics,
    MetricsError,
    MetricSpec,
)
from lipsync_tools.server.state import API_STATUS


def samples(m: Metrics) -> dict[str, list[Sample]]:
    """Each family of ``m``'s exposition, parsed back, by name (a counter's without ``_total``)."""
    return {family.name: family.samples for family in text_string_to_metric_families(m.render())}


def sample(m: Metrics, name: str, **labels: str) -> float:
    found = [s.value for family in samples(m).values() for s in family
             if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_every_family_is_declared_with_help_and_type() -> None:
    m = Metrics()
    text = m.render()
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    exposed = {f.name + ("_total" if f.type == "counter" else ""): f for f in families}
    assert sorted(exposed) == sorted(spec.name for spec in METRICS)  # no more (no *_created), no fewer
    for spec in METRICS:
        family = exposed[spec.name]
        assert family.type == spec.kind
        assert family.documentation == spec.help
        assert f"# HELP {spec.name} " in text and f"# TYPE {spec.name} {spec.kind}" in text


def test_counters_increase_with_labels() -> None:
    m = Metrics()
    m.frame_sent("http", silence=False)
    m.frame_sent("http", silence=False)
    m.frame_sent("session", silence=True)
    m.error("bad_magic")
    m.inc("lipsync_sessions_total")
    m.inc("lipsync_session_frames_dropped_total", 3, reason="late")
    assert sample(m, "lipsync_frames_total", silence="false", source="http") == 2
    assert sample(m, "lipsync_frames_total", silence="true", source="session") == 1
    assert sample(m, "lipsync_errors_total", code="bad_magic") == 1
    assert sample(m, "lipsync_sessions_total") == 1
    assert sample(m, "lipsync_sessions_refused_total") == 0  # unlabelled series are there from the start
    assert m.value("lipsync_session_frames_dropped_total", reason="late") == 3
    assert m.value("lipsync_session_frames_dropped_total", reason="socket") == 0  # never set
    assert 'lipsync_frames_total{silence="false",source="http"} 2' in m.render()  # labels sorted, as before
    with pytest.raises(ValueError, match="non-negative"):
        m.inc("lipsync_sessions_total", -1)


def test_gauges_go_up_and_down() -> None:
    m = Metrics()
    m.add_gauge("lipsync_active_sessions", 1)
    m.add_gauge("lipsync_active_sessions", 1)
    assert sample(m, "lipsync_active_sessions") == 2
    m.add_gauge("lipsync_active_sessions", -1)
    assert m.value("lipsync_active_sessions") == 1
    m.set_queue_depth(3)
    m.set_gauge("lipsync_ready", 1)
    assert sample(m, "lipsync_queue_depth") == 3 and sample(m, "lipsync_ready") == 1
    m.set_gauge("lipsync_ready", 0)
    assert m.value("lipsync_ready") == 0


def test_histograms_have_cumulative_buckets_sum_and_count() -> None:
    m = Metrics()
    for size in (1, 4, 4):
        m.observe_batch(size)
    m.observe_stage("inference", 0.003)
    m.observe_stage("inference", 10.0)  # beyond the last bucket: only +Inf counts it
    buckets = [s for s in samples(m)["lipsync_batch_size"] if s.name.endswith("_bucket")]
    batch = {s.labels["le"]: s.value for s in buckets}
    assert (batch["1.0"], batch["3.0"], batch["4.0"], batch["64.0"], batch["+Inf"]) == (1, 1, 3, 3, 3)
    assert sample(m, "lipsync_batch_size_sum") == 9 and sample(m, "lipsync_batch_size_count") == 3
    assert sample(m, "lipsync_stage_seconds_bucket", stage="inference", le="0.002") == 0
    assert sample(m, "lipsync_stage_seconds_bucket", stage="inference", le="0.004") == 1
    assert sample(m, "lipsync_stage_seconds_bucket", stage="inference", le="4.096") == 1
    assert sample(m, "lipsync_stage_seconds_bucket", stage="inference", le="+Inf") == 2
    assert sample(m, "lipsync_stage_seconds_sum", stage="inference") == pytest.approx(10.003)
    assert m.value("lipsync_stage_seconds", stage="inference") == 2  # a histogram's value is its count


def test_scraped_series_are_replaced_as_a_whole() -> None:
    m = Metrics()
    model = {"key": "sha256:" + "a" * 100, "frames": 7, "batches": 2, "inference_seconds": 0.25}
    m.set_models([model], loads=1, evictions=0)
    m.set_memory(1000, 400_000_000, 2, [{"id": 'we"ird\\', "frames_rendered": 5}, {"id": "b"}])
    cut = model["key"][:80]  # type: ignore[index]
    assert sample(m, "lipsync_model_frames_total", model=cut) == 7
    assert sample(m, "lipsync_model_inference_seconds_total", model=cut) == 0.25
    assert sample(m, "lipsync_package_frames_total", package='we"ird\\') == 5  # escaped and read back
    assert m.value("lipsync_memory_budget_bytes") == 400_000_000
    m.set_models([], loads=1, evictions=1)  # the model was unloaded: its series go with it
    m.set_memory(0, None, 3)
    assert samples(m)["lipsync_model_frames"] == [] and samples(m)["lipsync_package_frames"] == []
    assert (m.value("lipsync_models_loaded"), m.value("lipsync_model_evictions_total")) == (0, 1)
    assert m.value("lipsync_memory_budget_bytes") == 0


def test_two_servers_share_nothing() -> None:
    a, b = Metrics(), Metrics()
    a.inc("lipsync_sessions_total")
    a.set_memory(5, 10, 1)
    assert (a.value("lipsync_sessions_total"), b.value("lipsync_sessions_total")) == (1, 0)
    assert b.value("lipsync_memory_used_bytes") == 0
    assert a.registry is not b.registry


def test_unknown_names_kinds_labels_and_values_raise() -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match=r"unknown metric 'lipsync_session_total'.*lipsync_sessions_total"):
        m.inc("lipsync_session_total")
    with pytest.raises(MetricsError, match="unknown metric"):
        m.value("lipsync_nothing")
    with pytest.raises(MetricsError, match="lipsync_active_sessions is a gauge, not a counter"):
        m.inc("lipsync_active_sessions")
    with pytest.raises(MetricsError, match=r"takes labels \['reason'\], got \['reson'\]"):
        m.inc("lipsync_session_frames_dropped_total", reson="late")
    with pytest.raises(MetricsError, match=r"takes labels \['code'\], got \[\]"):
        m.inc("lipsync_errors_total")
    with pytest.raises(MetricsError, match="code='no_such_code' is not one of"):
        m.error("no_such_code")
    with pytest.raises(MetricsError, match="set from the stores"):
        m.inc("lipsync_model_loads_total")
    assert "no_such_code" not in m.render()  # nothing was created on the way


def test_declarations_are_checked() -> None:
    with pytest.raises(MetricsError, match="counters, and only counters, end in '_total'"):
        Metrics([MetricSpec("lipsync_things", "counter", "Things.")])
    with pytest.raises(MetricsError, match="only scraped metrics may leave them open"):
        Metrics([MetricSpec("lipsync_things_total", "counter", "Things.", labels={"id": None})])
    with pytest.raises(MetricsError, match="declared twice"):
        Metrics([MetricSpec("lipsync_things_total", "counter", "Things.")] * 2)
    m = Metrics([*METRICS, MetricSpec("lipsync_things_total", "counter", "Things, by kind.",
                                      labels={"kind": frozenset({"a", "b"})})])
    m.inc("lipsync_things_total", kind="a")
    assert m.value("lipsync_things_total", kind="a") == 1


def test_closed_label_sets_cover_what_the_server_sends() -> None:
    assert {*STAGES, *ORIGINAL_STAGES} <= STAGE_NAMES
    m = Metrics()
    for code in API_STATUS:
        m.error(code)
