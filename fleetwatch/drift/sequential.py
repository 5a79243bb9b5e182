"""Two-sided CUSUM on standardised window scores, for every stream (device, cohort) at once.

Each stream's window scores z_t (mean 0, sd 1 while nothing is wrong) feed

    S+_t = max(0, S+_{t-1} + z_t - k)        S-_t = max(0, S-_{t-1} - z_t - k)

and the stream alarms when S+ or S- exceeds h; then both restart at 0. The reference value k = delta / 2
tunes the detector for a shift of delta sd: scores below k drain the sums, a sustained shift of delta
fills one of them by about delta / 2 a window.

The threshold h comes from a false-alarm budget: the in-control average run length ARL0 (expected
windows between false alarms of one stream). With Siegmund's approximation of the ARL of a one-sided
CUSUM when the scores have mean mu (Delta = mu - k, b = h + 1.166):

    ARL(mu) = (exp(-2 Delta b) + 2 Delta b - 1) / (2 Delta^2)        (b^2 when Delta = 0)

and the two sides combined as 1 / ARL = 1 / ARL+(mu) + 1 / ARL-(mu) (the lower side sees mean -mu),
`threshold(arl0, delta)` solves ARL(0) = arl0 for h, and `detection_delay(h, delta, shift)` is ARL(shift):
the expected windows from a shift to its alarm, counted from a fresh start.

Estimated parameters: a device's scores are measured from its own level, fitted on a reference period of n
windows. The fit's error stays in every later score as a bias d ~ N(0, v) (v = 1 / n for a plain mean, in
units of the score's variance), the same in every window of that device, and a CUSUM is very sensitive to
a persistent bias (Jones, Champ and Rigdon, Technometrics 2004): 1 / ARL is convex in d, so the fleet's
false-alarm rate E_d[1 / ARL(d)] exceeds 1 / ARL(0). `threshold(arl0, delta, bias_var=v)` solves
E_d[1 / ARL(h, d)] = 1 / arl0 instead (the expectation by adaptive quadrature over d, +-12 sd), so that the
budget holds on average over the devices; `false_alarm_rate` is that expectation.

>>> h = threshold(24_000, 1.0)
>>> round(h, 2), round(detection_delay(h, 1.0, 1.0), 1)
(8.92, 18.2)
>>> step = cusum_step(CusumState.zeros(2), np.array([12.0, np.nan]), delta=1.0, h=h)
>>> step.alarm.tolist(), step.state.upper.tolist()
([True, False], [0.0, 0.0])

A score of NaN (the device sent nothing, or was idle) leaves that stream's state unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from numpy.typing import ArrayLike

from fleetwatch.drift import native

#: Siegmund's correction of the threshold for the overshoot of a normal CUSUM (b = h + 1.166).
SIEGMUND_CORRECTION = 1.166


def _one_sided_arl(h: float, drift: float) -> float:
    """Siegmund's one-sided ARL of scores with mean `drift` (b = h + the overshoot correction)."""
    b = h + SIEGMUND_CORRECTION
    if abs(drift) < 1e-12:
        return b * b
    try:
        return (math.exp(-2 * drift * b) + 2 * drift * b - 1) / (2 * drift * drift)
    except OverflowError:  # a far negative drift: the ARL is infinite, its rate 0
        return math.inf


def average_run_length(h: float, delta: float, shift: float = 0.0) -> float:
    """Two-sided ARL (Siegmund) of a CUSUM with k = delta / 2 and threshold h, scores of mean `shift`.

    >>> round(average_run_length(8.92, 1.0))
    23993
    """
    return 1.0 / _two_sided_rate(h, delta, shift)


def _two_sided_rate(h: float, delta: float, shift: float) -> float:
    k = delta / 2
    return 1.0 / _one_sided_arl(h, shift - k) + 1.0 / _one_sided_arl(h, -shift - k)


def false_alarm_rate(h: float, delta: float, bias_var: float = 0.0) -> float:
    """Alarms per window, E_d[1 / ARL(h, d)], when each stream's scores carry a bias d ~ N(0, bias_var).

    >>> round(1 / false_alarm_rate(8.92, 1.0)), round(1 / false_alarm_rate(8.92, 1.0, bias_var=1 / 168))
    (23993, 11828)
    """
    if bias_var < 0:
        raise ValueError("bias_var must be >= 0")
    if bias_var == 0:
        return _two_sided_rate(h, delta, 0.0)
    sd = math.sqrt(bias_var)
    scale = sd * math.sqrt(2 * math.pi)
    from scipy import integrate  # see threshold

    def density(d: float) -> float:
        return _two_sided_rate(h, delta, d) * math.exp(-0.5 * (d / sd) ** 2) / scale

    return float(integrate.quad(density, -12 * sd, 12 * sd, epsabs=0.0, epsrel=1e-12, limit=200)[0])


def threshold(arl0: float, delta: float, bias_var: float = 0.0) -> float:
    """The h whose two-sided in-control ARL is `arl0` windows, for a CUSUM tuned to a `delta`-sd shift;
    with `bias_var` > 0, the h whose false-alarm rate averaged over a N(0, bias_var) bias is 1 / arl0.

    >>> round(threshold(400, 1.0), 3), round(threshold(400, 1.0, bias_var=1 / 168), 3)
    (4.843, 5.029)
    """
    if delta <= 0:
        raise ValueError("delta must be positive")

    @cache  # brentq asks again for the ends of the bracket
    def excess(h: float) -> float:
        return math.log(arl0 * false_alarm_rate(h, delta, bias_var))

    if excess(0.0) <= 0:
        raise ValueError(f"arl0 must exceed {1 / false_alarm_rate(0.0, delta, bias_var):.3g} windows (h = 0)")
    # With a bias, each rate is a quadrature: the search starts from the h without the bias, which the bias
    # raises (1 / ARL is convex in it), and steps of doubling length (log(rate) falls by about delta per unit
    # of h) bracket the root for brentq.
    lower = 0.0
    if bias_var > 0 and arl0 * false_alarm_rate(0.0, delta) > 1:
        guess = threshold(arl0, delta)
        lower = guess if excess(guess) > 0 else 0.0
    step = 2.0 / delta
    while excess(lower + step) > 0:
        lower, step = lower + step, 2 * step
    from scipy.optimize import brentq  # here: scipy.optimize is large in memory, and the daemon imports this module

    return float(brentq(excess, lower, lower + step, xtol=1e-12, rtol=1e-14))


def detection_delay(h: float, delta: float, shift: float) -> float:
    """Expected windows from a `shift`-sd change to the alarm (the ARL under that shift, from S = 0).

    >>> round(detection_delay(threshold(24_000, 1.0), 1.0, 2.0), 1)
    6.5
    """
    return average_run_length(h, delta, shift)


@dataclass(frozen=True)
class CusumState:
    """The sums of every stream, carried from one window to the next (any array shape, one per stream).

    `run` counts the windows since both sums were last zero (or since the last alarm).
    """

    upper: np.ndarray
    lower: np.ndarray
    run: np.ndarray

    @classmethod
    def zeros(cls, shape: int | tuple[int, ...]) -> CusumState:
        """A fresh state (all sums 0) for `shape` streams."""
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64))


@dataclass(frozen=True)
class CusumStep:
    """One window's outcome for every stream.

    - `state`: the new state (sums reset to 0 where an alarm was raised);
    - `alarm`: the statistic exceeded h;
    - `statistic`: max(S+, S-) before the reset;
    - `side`: +1 when S+ is the larger (a shift up), -1 otherwise;
    - `run_mean`: the mean score over the run that led here, S+ / run + k (or -(S- / run + k)), the
      effect estimate; exact when only that side was positive during the run.
    """

    state: CusumState
    alarm: np.ndarray
    statistic: np.ndarray
    side: np.ndarray
    run_mean: np.ndarray


def cusum_step(state: CusumState, z: ArrayLike, delta: float, h: ArrayLike) -> CusumStep:
    """Feed one window of scores (same shape as the state; NaN = no data, state kept) to every stream. `h`
    may be an array that broadcasts against the scores (one threshold per column of several signals)."""
    k = delta / 2
    z = np.asarray(z, dtype=float)
    # in place where possible: a fleet's arrays are large, and each pass over them costs more than its arithmetic
    upper = state.upper + z
    upper -= k
    np.maximum(0.0, upper, out=upper)
    lower = state.lower - z
    lower -= k
    np.maximum(0.0, lower, out=lower)
    active = upper > 0
    active |= lower > 0
    run = state.run + 1
    run *= active
    unseen = np.isnan(z)
    if unseen.any():
        np.copyto(upper, state.upper, where=unseen)
        np.copyto(lower, state.lower, where=unseen)
        np.copyto(run, state.run, where=unseen)
    statistic = np.maximum(upper, lower)
    side = (upper >= lower).astype(np.int64)
    side *= 2
    side -= 1
    # the larger sum is the statistic: S+ / run + k up, -(S- / run + k) down, 0 before a run (sums are >= 0)
    run_mean = statistic / np.maximum(run, 1)
    run_mean += k
    run_mean *= side * (run > 0)
    alarm = statistic > h
    for values in (upper, lower, run):
        np.copyto(values, 0, where=alarm)
    return CusumStep(CusumState(upper, lower, run), alarm, statistic, side, run_mean)


@dataclass(frozen=True)
class CusumUpdate:
    """What `cusum_update` reports of a step, shaped (signals, rows): `alarm`, `statistic` and `run_mean` as
    in `CusumStep`, and `run`, the new state's run (0 after an alarm)."""

    alarm: np.ndarray
    statistic: np.ndarray
    run_mean: np.ndarray
    run: np.ndarray


def cusum_update(
    tables: Sequence[np.ndarray], index: np.ndarray, z: ArrayLike, delta: float, h: ArrayLike
) -> CusumUpdate:
    """`cusum_step` for several signals' streams kept in sums tables, updated in place: `tables[j]` holds
    signal j's (3, streams) upper, lower and run (as floats; C-contiguous), `index` the rows of the window's
    streams (distinct: one stream per key), `z` the scores shaped (signals, rows), `h` one threshold per
    signal (or one for all). One pass
    per signal with the C routines (`native.routines`), else gathered, stepped and scattered back by numpy:
    the same floats either way."""
    index = np.asarray(index, dtype=np.int64)
    z = np.asarray(z, dtype=float).reshape(len(tables), len(index))
    thresholds = np.broadcast_to(np.asarray(h, dtype=float).reshape(-1), (len(tables),))
    if native.routines is None:
        state = CusumState(*(np.stack([table[part, index] for table in tables]) for part in range(3)))
        step = cusum_step(replace(state, run=state.run.astype(np.int64)), z, delta, thresholds.reshape(-1, 1))
        for table, upper, lower, run in zip(tables, step.state.upper, step.state.lower, step.state.run, strict=True):
            table[:, index] = upper, lower, run
        return CusumUpdate(step.alarm, step.statistic, step.run_mean, step.state.run)
    statistic, run_mean = np.empty(z.shape), np.empty(z.shape)
    run, alarm = np.empty(z.shape, dtype=np.int64), np.empty(z.shape, dtype=bool)
    for j, table in enumerate(tables):
        native.routines.cusum(
            table, index, np.ascontiguousarray(z[j]), delta / 2, float(thresholds[j]),
            run[j], alarm[j], statistic[j], run_mean[j],
        )  # fmt: skip
    return CusumUpdate(alarm, statistic, run_mean, run)


@dataclass(frozen=True)
class CusumRun:
    """Several windows' outcome: the final state, and per window (last axis) the alarms and statistics."""

    state: CusumState
    alarm: np.ndarray
    statistic: np.ndarray


def cusum_run(state: CusumState, z: ArrayLike, delta: float, h: float) -> CusumRun:
    """Feed windows of scores shaped (streams..., windows), oldest first: `cusum_step` window by window.

    >>> out = cusum_run(CusumState.zeros(1), np.full((1, 30), 1.0), delta=1.0, h=8.92)
    >>> int(np.argmax(out.alarm[0])) + 1                # a noiseless 1-sd shift: 0.5 a window
    18
    """
    z = np.asarray(z, dtype=float)
    alarm = np.zeros(z.shape, dtype=bool)
    statistic = np.zeros(z.shape)
    for t in range(z.shape[-1]):
        step = cusum_step(state, z[..., t], delta, h)
        state = step.state
        alarm[..., t] = step.alarm
        statistic[..., t] = step.statistic
    return CusumRun(state, alarm, statistic)
