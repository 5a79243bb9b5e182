"""CUSUM: the threshold from the budget reproduces the known bound, and simulation agrees with it."""

from __future__ import annotations

import numpy as np
import pytest

from fleetwatch.drift.sequential import CusumState, average_run_length, cusum_step, detection_delay, threshold


def test_budget_of_one_alarm_per_24000_windows_needs_about_18_windows_for_one_sigma() -> None:
    h = threshold(24_000, 1.0)
    assert average_run_length(h, 1.0) == pytest.approx(24_000, rel=1e-9)
    assert detection_delay(h, 1.0, 1.0) == pytest.approx(18, abs=1)


def run_lengths(h: float, shift: float, streams: int, windows: int, seed: int) -> np.ndarray:
    """Windows to the first alarm of each stream (windows + 1 when none), all streams at once."""
    rng = np.random.default_rng(seed)
    state = CusumState.zeros(streams)
    first = np.full(streams, windows + 1)
    for t in range(windows):
        step = cusum_step(state, rng.standard_normal(streams) + shift, 1.0, h)
        first = np.where((first > windows) & step.alarm, t + 1, first)
        state = step.state
    return first


def test_simulated_false_alarm_rate_agrees_with_siegmund() -> None:
    h = threshold(400, 1.0)
    first = run_lengths(h, 0.0, streams=4000, windows=4000, seed=1)
    assert (first <= 4000).mean() > 0.99
    measured = first[first <= 4000].mean()
    assert measured == pytest.approx(400, rel=0.15), f"simulated ARL0 {measured:.0f} vs 400"


def test_simulated_delay_for_a_one_sigma_shift() -> None:
    h = threshold(24_000, 1.0)
    first = run_lengths(h, 1.0, streams=4000, windows=200, seed=2)
    assert first.mean() == pytest.approx(detection_delay(h, 1.0, 1.0), rel=0.1)


def test_nan_keeps_state_and_alarm_resets() -> None:
    state = CusumState(np.array([5.0, 0.0]), np.array([0.0, 0.0]), np.array([3, 0]))
    step = cusum_step(state, np.array([np.nan, 20.0]), 1.0, 8.0)
    assert step.state.upper[0] == 5.0 and step.state.run[0] == 3
    assert step.alarm.tolist() == [False, True] and step.state.upper[1] == 0.0
    assert step.side[1] == 1 and step.run_mean[1] == pytest.approx(20.0)
