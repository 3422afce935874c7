"""Admission: a live session is refused when the admitted ones could no longer keep their frame rate."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lipsync_tools.engine.capacity import Capacity
from lipsync_tools.errors import ProtocolError
from lipsync_tools.server.admission import Admission


@dataclass
class Model:
    key: str
    capacity: Capacity = field(default_factory=Capacity)


def per_frame(ms: float, batch_ms: float | None = None) -> Capacity:
    """A model taking ``ms`` per frame alone and ``batch_ms`` for a batch of 8."""
    return Capacity({1: ms / 1000, 8: (batch_ms if batch_ms is not None else 8 * ms) / 1000})


def test_sessions_are_admitted_while_each_keeps_the_minimum_rate() -> None:
    # 20 ms per frame alone: 50 frames/s, so two sessions at 20 fps fit (80 %) and a third does not (120 %)
    model = Model("m", per_frame(20.0))
    admission = Admission(min_session_fps=20, max_sessions=32, max_batch=1)
    first, second = admission.admit(model, 25.0), admission.admit(model, 25.0)
    assert admission.load() == pytest.approx(0.8)
    with pytest.raises(ProtocolError) as refused:
        admission.admit(model, 25.0)
    assert refused.value.code == "overloaded"
    assert "retry in 5 s" in str(refused.value) and "--min-session-fps" in str(refused.value)
    assert admission.refused == 1 and admission.sessions == 2
    admission.release(first)
    admission.release(first)  # idempotent
    admission.admit(model, 25.0)  # room again
    admission.release(second)


def test_batching_raises_the_capacity_admission_counts_on() -> None:
    # 20 ms alone but 40 ms for 8 frames: batched, the model carries many more sessions
    model = Model("m", per_frame(20.0, batch_ms=40.0))
    admission = Admission(min_session_fps=20, max_sessions=32, max_batch=8)
    tickets = [admission.admit(model, 25.0) for _ in range(8)]
    assert admission.load() == pytest.approx(8 * 20 * 0.005)
    assert admission.max_batch_for(model, 25.0) == 8
    assert len(tickets) == 8


def test_compositing_time_counts_and_other_models_share_the_machine() -> None:
    post = 0.010
    admission = Admission(min_session_fps=20, max_sessions=32, max_batch=1, post_seconds=lambda: post)
    fast, slow = Model("fast", per_frame(5.0)), Model("slow", per_frame(20.0))
    admission.admit(fast, 25.0)  # 20 * (5 + 10) ms = 30 %
    admission.admit(slow, 25.0)  # 20 * (20 + 10) ms = 60 %
    assert admission.load() == pytest.approx(0.9)
    with pytest.raises(ProtocolError):
        admission.admit(fast, 25.0)


def test_a_package_slower_than_the_minimum_asks_only_for_its_own_fps() -> None:
    admission = Admission(min_session_fps=20, max_sessions=32, max_batch=1)
    assert admission.need(12.0) == 12.0 and admission.need(30.0) == 20.0


def test_the_first_session_is_always_admitted_and_max_sessions_is_a_hard_limit() -> None:
    admission = Admission(min_session_fps=20, max_sessions=2, max_batch=1)
    admission.admit(Model("huge", per_frame(500.0)), 25.0)  # 2 fps: served, thinned, never refused alone
    quick = Model("quick", per_frame(0.1))
    with pytest.raises(ProtocolError, match="cannot carry"):
        admission.admit(quick, 25.0)
    idle = Admission(min_session_fps=20, max_sessions=1, max_batch=1)
    idle.admit(quick, 25.0)
    with pytest.raises(ProtocolError, match="--max-sessions 1"):
        idle.admit(quick, 25.0)


def test_max_lag_is_look_ahead_plus_the_model_calls_plus_compositing_plus_one_frame() -> None:
    model = Model("m", per_frame(20.0, batch_ms=64.0))
    admission = Admission(min_session_fps=20, max_sessions=32, max_batch=8, post_seconds=lambda: 0.004)
    # batches of 8 would need 8 * 20 * (8 + 4) ms = 192 %: fewer sessions fit, so batches stay smaller
    batch = admission.max_batch_for(model, 25.0)
    assert 1 < batch < 8
    # sessions batch together: a frame may also wait for the call in progress, so two calls count
    expected = 0.2125 + 2 * model.capacity.batch_seconds(batch) + 0.004 + 0.04
    assert admission.max_lag(model, 25.0, 0.2125) == pytest.approx(expected)
    alone = Admission(min_session_fps=20, max_sessions=32, max_batch=1, post_seconds=lambda: 0.004)
    assert alone.max_lag(model, 25.0, 0.2125) == pytest.approx(0.2125 + 0.020 + 0.004 + 0.04)
