"""Two-sided CUSUM over successive windows, for every device at once, with a threshold from a budget.

Each device's window scores z_t (standardised: mean 0, sd 1 while nothing is wrong) feed

    S+_t = max(0, S+_{t-1} + z_t - k)        S-_t = max(0, S-_{t-1} - z_t - k)

and the device alarms when S+ or S- exceeds h; then both restart at 0. k = delta / 2 tunes the detector
for a shift of delta sd. The threshold h comes from a false-alarm budget: the in-control average run
length ARL0 (expected windows between false alarms of one device). With Siegmund's approximation of a
one-sided CUSUM's ARL for a mean mu (Delta = mu - k, b = h + 1.166):

    ARL(mu) = (exp(-2 Delta b) + 2 Delta b - 1) / (2 Delta^2)        (b^2 when Delta = 0)

and the two sides combined as 1/ARL = 1/ARL+ + 1/ARL-, `threshold(arl0, delta)` solves ARL(0) = arl0
for h, and `detection_delay(h, delta, shift)` is ARL(shift): the expected windows to detect a shift.

>>> h = threshold(24_000, 1.0)
>>> round(h, 2), round(detection_delay(h, 1.0, 1.0), 1)
(8.92, 18.2)

A window with no score (NaN: the device sent nothing, or was idle) leaves its state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

SIEGMUND_CORRECTION = 1.166


def _one_sided_arl(h: float, drift: float) -> float:
    b = h + SIEGMUND_CORRECTION
    if abs(drift) < 1e-12:
        return b * b
    return (np.exp(-2 * drift * b) + 2 * drift * b - 1) / (2 * drift * drift)


def average_run_length(h: float, delta: float, shift: float = 0.0) -> float:
    """Two-sided ARL for a mean `shift` (sd units) of a CUSUM with k = delta / 2 and threshold h."""
    k = delta / 2
    return 1.0 / (1.0 / _one_sided_arl(h, shift - k) + 1.0 / _one_sided_arl(h, -shift - k))


def threshold(arl0: float, delta: float) -> float:
    """h such that the two-sided in-control ARL is `arl0` windows."""
    return float(brentq(lambda h: average_run_length(h, delta) - arl0, 1e-6, 200.0, xtol=1e-10))


def detection_delay(h: float, delta: float, shift: float) -> float:
    """Expected windows from a `shift`-sd change to the alarm (the ARL under that shift)."""
    return float(average_run_length(h, delta, shift))


@dataclass(frozen=True)
class CusumState:
    """The CUSUM sums of n streams (devices, cohorts...), carried from one window to the next."""

    upper: np.ndarray
    lower: np.ndarray
    run: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> CusumState:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64))


@dataclass(frozen=True)
class CusumStep:
    """After one window: the new state, who alarmed, and the statistic (max of the two sums before
    reset), the side (+1 up, -1 down) and the mean score over the run that led to it (the effect)."""

    state: CusumState
    alarm: np.ndarray
    statistic: np.ndarray
    side: np.ndarray
    run_mean: np.ndarray


def cusum_step(state: CusumState, z: np.ndarray, delta: float, h: float) -> CusumStep:
    """Feed one window of scores (NaN = no data, state kept) to every stream at once."""
    k = delta / 2
    z = np.asarray(z, dtype=float)
    seen = ~np.isnan(z)
    zz = np.where(seen, z, 0.0)
    upper = np.where(seen, np.maximum(0.0, state.upper + zz - k), state.upper)
    lower = np.where(seen, np.maximum(0.0, state.lower - zz - k), state.lower)
    active = (upper > 0) | (lower > 0)
    run = np.where(seen, np.where(active, state.run + 1, 0), state.run)
    statistic = np.maximum(upper, lower)
    side = np.where(upper >= lower, 1, -1)
    run_mean = np.where(
        run > 0, np.where(side > 0, upper / np.maximum(run, 1) + k, -(lower / np.maximum(run, 1) + k)), 0.0
    )
    alarm = statistic > h
    new = CusumState(np.where(alarm, 0.0, upper), np.where(alarm, 0.0, lower), np.where(alarm, 0, run))
    return CusumStep(new, alarm, statistic, side, run_mean)
