"""Capacity: model time by batch size, measured at load and kept current while serving."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.engine.capacity import Capacity, capacity_batches, measure_capacity
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
