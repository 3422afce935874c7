"""Capacity: model time by batch size, measured at load and kept current while serving; the batch size and
wait chosen from it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lipsync_tools.engine.capacity import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_WAIT_MS,
    Capacity,
    capacity_batches,
    choose_batching,
    measure_capacity,
    measured_max_batch,
)
from lipsync_tools.models.backends import create_backend
from lipsync_tools.models.families import get_family, random_network


def test_batches_measured_are_powers_of_two_and_the_maximum() -> None:
    assert capacity_batches(1) == (1,)
    assert capacity_batches(8) == (1, 2, 4, 8)
    assert capacity_batches(6) == (1, 2, 4, 6)


def test_batch_seconds_interpolates_and_extrapolates_per_frame() -> None:
    capacity = Capacity({1: 0.010, 4: 0.025})
    assert capacity.batch_seconds(1) == pytest.approx(0.010)
    assert capacity.batch_seconds(2) == pytest.approx(0.015)  # linear between measured sizes
    assert capacity.batch_seconds(8) == pytest.approx(0.050)  # beyond: the largest size's time per frame
    assert capacity.frames_per_second(4) == pytest.approx(160.0)
    assert Capacity().batch_seconds(4) == 0.0 and not Capacity().known
    assert capacity.to_dict() == {"batch_ms": {"1": 10.0, "4": 25.0},
                                  "frames_per_second": {"1": 100.0, "4": 160.0}}


def test_observations_move_the_estimate_towards_what_serving_sees() -> None:
    capacity = Capacity({1: 0.010})
    for _ in range(40):
        capacity.observe(1, 0.020)  # the machine got busier
    assert capacity.batch_seconds(1) == pytest.approx(0.020, rel=0.01)
    capacity.observe(3, 0.030)  # a size never measured is learned from its first call
    assert capacity.batch_seconds(3) == pytest.approx(0.030)
    capacity.observe(0, 1.0)
    capacity.observe(2, -1.0)  # nonsense is ignored
    assert capacity.batch_seconds(2) == pytest.approx(0.025, rel=0.01)


def test_measure_capacity_times_a_real_network_at_each_size() -> None:
    family = get_family("wav2lip")
    backend = create_backend("torch", random_network(family, None, seed=0).module, None, family)
    capacity = measure_capacity(backend, (1, 2))
    table = capacity.to_dict()["batch_ms"]
    assert set(table) == {"1", "2"} and all(v > 0 for v in table.values())
    assert np.isfinite(capacity.frames_per_second(2))


class _CountingBackend:
    """A backend whose calls sleep ``per_frame`` seconds a frame (call ``i`` ``slow_calls[i]`` more), keeping
    the batch size of every call."""

    crop_size = 8

    def __init__(self, per_frame: float, slow_calls: dict[int, float] | None = None) -> None:
        self.audio_mode = get_family("wav2lip").audio_mode(None)
        self.per_frame = per_frame
        self.slow_calls = slow_calls or {}
        self.order: list[int] = []

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        time.sleep(self.per_frame * len(crops) + self.slow_calls.get(len(self.order), 0.0))
        self.order.append(len(crops))
        return crops


def test_measure_capacity_takes_the_median_of_interleaved_rounds() -> None:
    backend = _CountingBackend(per_frame=0.002, slow_calls={0: 0.5})  # the first call (cold) is slow
    capacity = measure_capacity(backend, (1, 2, 4))
    assert backend.order == [1, 2, 4, 4, 2, 1, 1, 2, 4]  # rounds over every size, in alternating order
    assert capacity.measure_rounds == 3 and capacity.to_dict()["measure_rounds"] == 3
    assert capacity.batch_seconds(1) == pytest.approx(0.002, abs=0.02)  # the median drops the slow call
    assert 0.5 < capacity.measure_seconds < 2.0
    assert measure_capacity(backend, ()).to_dict() == {"batch_ms": {}, "frames_per_second": {}}


def _curve(ms_per_call: dict[int, float]) -> Capacity:
    return Capacity({b: ms / 1000 for b, ms in ms_per_call.items()})


def test_a_flat_cpu_curve_chooses_a_small_batch() -> None:
    # ONNX Runtime, random Wav2Lip-96 on 2 cores: ~35 ms a frame at every size (the cores are busy at batch 1)
    flat = choose_batching(_curve({1: 35.0, 2: 66.0, 4: 136.0, 8: 270.0}))
    assert (flat.max_batch, flat.max_batch_source) == (1, "measured")  # 35 ms/frame: within 10 % of 33
    assert (flat.max_wait_ms, flat.max_wait_source) == (0.0, "measured")
    assert flat.reason == ("max batch 1: 35 ms/frame, within 10% of the best measured (33 ms/frame at "
                           "batch 2); no wait (batch 1: nothing to wait for)")
    # SyncTalk_2D-328: 52 ms at batch 1, 55 ms a frame at batch 8
    assert choose_batching(_curve({1: 52.0, 2: 108.0, 4: 216.0, 8: 440.0})).max_batch == 1
    # a little gain at batch 2 (38 -> 33 ms/frame, 13 %) is taken; the wait is a quarter of one frame's call
    some = choose_batching(_curve({1: 38.0, 2: 66.0, 4: 136.0, 8: 270.0}))
    assert (some.max_batch, some.max_wait_ms, some.max_wait_source) == (2, 9.5, "measured")
    assert some.reason == ("max batch 2: 33 ms/frame, the best measured; max wait 9.5 ms: 25% of one "
                           "single-frame call (38 ms), at most 10 ms")


def test_a_gpu_like_curve_chooses_a_larger_batch_and_a_short_wait() -> None:
    gpu = _curve({1: 8.0, 2: 8.5, 4: 9.0, 8: 12.0, 16: 20.0})
    cpu_sizes = choose_batching(gpu)  # on a CPU the sizes above 8 are not candidates
    assert (cpu_sizes.max_batch, cpu_sizes.max_wait_ms) == (8, 2.0)  # 1.5 ms/frame; wait 25 % of 8 ms
    on_gpu = choose_batching(gpu, gpu=True)
    assert on_gpu.max_batch == 16 and on_gpu.reason.startswith("max batch 16: 1.25 ms/frame, the best")
    # within 10 % of the best per-frame cost is enough: 16 frames would buy 6 % more throughput only
    near = choose_batching(_curve({1: 8.0, 4: 10.0, 8: 13.6, 16: 25.6}), gpu=True)
    assert near.max_batch == 8 and "within 10% of the best measured (1.6 ms/frame at batch 16)" in near.reason
    slow = choose_batching(_curve({1: 120.0, 2: 130.0, 4: 140.0, 8: 160.0}))
    assert (slow.max_batch, slow.max_wait_ms) == (8, 10.0)  # the wait is capped


def test_given_values_are_kept_and_reported_as_given() -> None:
    curve = _curve({1: 38.0, 2: 66.0, 4: 136.0, 8: 270.0})
    both = choose_batching(curve, max_batch=8, max_wait_ms=4.0)
    assert (both.max_batch, both.max_batch_source, both.max_wait_ms, both.max_wait_source) == (
        8, "given", 4.0, "given")
    assert both.reason == "max batch 8 given; max wait 4 ms given"
    batch_only = choose_batching(curve, max_batch=4)  # the wait for a given batch follows the rule
    assert (batch_only.max_batch_source, batch_only.max_wait_ms, batch_only.max_wait_source) == (
        "given", 9.5, "measured")
    wait_only = choose_batching(curve, max_wait_ms=1.5)
    assert (wait_only.max_batch, wait_only.max_batch_source, wait_only.max_wait_ms) == (2, "measured", 1.5)
    assert choose_batching(curve, max_batch=1).max_wait_ms == 0.0


def test_nothing_measured_takes_the_defaults() -> None:
    from lipsync_tools.engine import EngineOptions

    batching = choose_batching(Capacity())
    assert (batching.max_batch, batching.max_wait_ms) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
    assert (batching.max_batch_source, batching.max_wait_source) == ("default", "default")
    defaults = EngineOptions()
    assert (defaults.max_batch, defaults.max_wait_ms) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
    assert batching.to_dict()["batch_ms"] == {} and batching.measured_on is None


def test_batching_reports_the_curve_it_was_chosen_from() -> None:
    capacity = Capacity({1: 0.038, 2: 0.066}, measure_seconds=1.234, measure_rounds=3)
    report = choose_batching(capacity).to_dict()
    assert report == {
        "max_batch": 2, "max_wait_ms": 9.5, "max_batch_source": "measured", "max_wait_source": "measured",
        "reason": "max batch 2: 33 ms/frame, the best measured; max wait 9.5 ms: 25% of one single-frame "
                  "call (38 ms), at most 10 ms",
        "measured_on": None, "batch_ms": {"1": 38.0, "2": 66.0}, "frame_ms": {"1": 38.0, "2": 33.0},
        "measure_seconds": 1.234, "measure_rounds": 3,
    }
    assert measured_max_batch() == 8 and measured_max_batch(gpu=True) == 16
    assert capacity_batches(measured_max_batch(gpu=True)) == (1, 2, 4, 8, 16)
