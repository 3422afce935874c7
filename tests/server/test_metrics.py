"""The Prometheus text the server writes by hand: names, types, labels, cumulative histogram buckets."""

from __future__ import annotations

from lipsync_tools.server.metrics import Metrics


def test_render_counters_gauges_and_histograms() -> None:
    m = Metrics()
    m.frame_sent("http", silence=False)
    m.frame_sent("http", silence=False)
    m.error("bad_magic")
    m.set_queue_depth(3)
    m.observe_batch(1)
    m.observe_batch(4)
    m.observe_batch(4)
    m.observe_stage("inference", 0.003)
    m.observe_stage("inference", 10.0)  # beyond the last bucket: only +Inf counts it
    text = m.render()
    lines = text.splitlines()
    assert text.endswith("\n")
    assert 'lipsync_frames_total{silence="false",source="http"} 2' in lines
    assert 'lipsync_errors_total{code="bad_magic"} 1' in lines
    assert "lipsync_queue_depth 3" in lines
    assert "# TYPE lipsync_batch_size histogram" in lines
    assert 'lipsync_batch_size_bucket{le="1"} 1' in lines
    assert 'lipsync_batch_size_bucket{le="3"} 1' in lines
    assert 'lipsync_batch_size_bucket{le="4"} 3' in lines
    assert 'lipsync_batch_size_bucket{le="+Inf"} 3' in lines
    assert "lipsync_batch_size_sum 9" in lines and "lipsync_batch_size_count 3" in lines
    assert 'lipsync_stage_seconds_bucket{stage="inference",le="0.002"} 0' in lines
    assert 'lipsync_stage_seconds_bucket{stage="inference",le="0.004"} 1' in lines
    assert 'lipsync_stage_seconds_bucket{stage="inference",le="4.096"} 1' in lines
    assert 'lipsync_stage_seconds_bucket{stage="inference",le="+Inf"} 2' in lines
    # every sample line belongs to a metric announced with HELP and TYPE before it
    announced = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in announced or base in announced, line


def test_label_values_are_escaped_and_values_readable() -> None:
    m = Metrics()
    m.inc("lipsync_errors_total", code='we"ird\\\n')
    assert 'lipsync_errors_total{code="we\\"ird\\\\\\n"} 1' in m.render()
    assert m.value("lipsync_errors_total", code='we"ird\\\n') == 1
    m.add_gauge("lipsync_active_sessions", 1)
    m.add_gauge("lipsync_active_sessions", -1)
    assert m.value("lipsync_active_sessions") == 0
