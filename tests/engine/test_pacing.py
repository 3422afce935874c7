"""Ping-pong frame walk and the silence rule."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.engine import is_silent, pingpong_index, window_dbfs
from lipsync_tools.errors import UsageError


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [0, 0, 0, 0]),
        (2, [0, 1, 0, 1, 0]),
        (3, [0, 1, 2, 1, 0, 1, 2, 1, 0]),
        (5, [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2]),
    ],
)
def test_pingpong_sequence(n: int, expected: list[int]):
    assert [pingpong_index(step, n) for step in range(len(expected))] == expected


def test_pingpong_never_jumps_or_stalls():
    n = 7
    walk = [pingpong_index(step, n) for step in range(100)]
    steps = np.abs(np.diff(walk))
    assert set(steps.tolist()) == {1}  # no jump (|step| > 1) and no repeated frame (step 0)
    assert set(walk) == set(range(n))


def test_pingpong_bad_input():
    with pytest.raises(UsageError, match="at least one frame"):
        pingpong_index(0, 0)
    with pytest.raises(UsageError, match="step must be >= 0"):
        pingpong_index(-1, 5)


def test_silence_threshold():
    assert is_silent(np.zeros(3200, np.int16), -50.0)
    assert is_silent(np.zeros(0, np.int16), -50.0)
    t = np.arange(3200) / 16000
    loud = (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    assert not is_silent(loud, -50.0)
    assert window_dbfs(loud) == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.05)
    hiss = (np.random.default_rng(0).normal(0, 3, 3200)).astype(np.int16)  # about -81 dBFS
    assert is_silent(hiss, -50.0)
    assert not is_silent(hiss, -90.0)
    square = np.full(100, -32768, np.int16)
    assert window_dbfs(square) == pytest.approx(0.0)


def test_silence_needs_int16():
    with pytest.raises(UsageError, match="int16"):
        is_silent(np.zeros(10, np.float32), -50.0)
