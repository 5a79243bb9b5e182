"""Multiple-testing control across devices and metrics, and cohort evidence from device evidence. Pure.

- `bh_qvalues`: Benjamini-Hochberg q-values across the devices of one signal (false discovery rate);
  `FalseDiscovery` the same for a whole fleet when only the rejections and a few q-values are needed.
- `holm`: Holm's step-down adjusted p-values across a few metrics (family-wise error rate).
- `binomial_tail`: how surprising x devices in alarm among m are, when each alarms falsely with
  probability alpha.
- `stouffer`: a cohort's devices' z-scores combined into one z, the device as the unit.

Cohort and fleet evidence comes from devices (their alarms, or their z-scores), never from one
chi-square over the cohort's pooled counts: windows of one device are correlated, so pooled counts
look far more certain than they are.

NaN p-values and z-scores mean "no test" (an idle device): they are left out of m and stay NaN.

>>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5, np.nan])).round(3).tolist()
[0.04, 0.053, 0.053, 0.5, nan]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special


def bh_qvalues(p: ArrayLike, axis: int = -1) -> np.ndarray:
    """Benjamini-Hochberg q-values along `axis`; NaN p-values do not count in m and stay NaN.

    With the m valid p-values sorted, p_(1) <= ... <= p_(m): q_(i) = min over j >= i of m p_(j) / j,
    capped at 1. Rejecting every test with q <= Q keeps the expected share of false discoveries among the
    rejections at most Q (for independent or positively dependent tests).

    >>> bh_qvalues([[0.01, 0.02], [0.5, np.nan]], axis=1).tolist()
    [[0.02, 0.02], [0.5, nan]]
    """
    rows, restore = _rows(p, axis)
    return restore(np.array([FalseDiscovery(row).q(row) for row in rows]).reshape(rows.shape))


class FalseDiscovery:
    """Benjamini-Hochberg over one family of p-values (NaN: no test), from the p-values sorted once.

    `q` gives the q-value of any p-value of the family (`bh_qvalues`' formula) and `rejects` the tests
    with q <= a level. q is a non-decreasing function of p (tied p-values share one), so neither needs
    the order of the tests: for a whole fleet, sorting the values is an order of magnitude faster than
    sorting their indices. The values are sorted when a q-value is first asked for (a fleet's signal
    usually reports no device); `rejects` sorts only the p-values up to its level.

    >>> bh = FalseDiscovery([0.01, 0.04, 0.03, 0.5, np.nan])
    >>> bh.q([0.03, np.nan]).round(3).tolist(), bh.rejects(0.05).tolist()
    ([0.053, nan], [True, False, False, False, False])
    """

    def __init__(self, p: ArrayLike) -> None:
        self.p = np.asarray(p, dtype=float)

    def q(self, p: ArrayLike) -> np.ndarray:
        """The q-values of p-values of this family (NaN for NaN)."""
        p = np.asarray(p, dtype=float)
        if not p.size:
            return np.full(p.shape, np.nan)
        ranked, q = self._ranked
        if not len(q):
            return np.full(p.shape, np.nan)
        at = np.minimum(np.searchsorted(ranked, p), len(q) - 1)
        return np.where(np.isnan(p), np.nan, q[at])

    def rejects(self, level: float) -> np.ndarray:
        """Which tests of the family have q <= `level` (never an untested one).

        q_(i) <= level needs m p_(j) / j <= level for some j >= i, and m / j >= 1: only p-values up to the
        level (and a rounding margin) take part, so only those are sorted."""
        tested = ~np.isnan(self.p)
        if level >= 1:
            return tested
        m = int(np.count_nonzero(tested))
        candidates = np.sort(self.p[self.p <= level * (1 + 1e-9)])
        passed = np.count_nonzero(_step_up(candidates, m) <= level)
        return self.p <= candidates[passed - 1] if passed else np.zeros(self.p.shape, dtype=bool)

    @cached_property
    def _ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """(the family's p-values sorted, NaN left out; their q-values)."""
        ranked = np.sort(self.p, axis=None)  # NaN last
        ranked = ranked[: np.searchsorted(ranked, np.nan)]
        return ranked, _step_up(ranked, len(ranked))


def _step_up(ranked: np.ndarray, m: int) -> np.ndarray:
    """min(1, min over j >= i of m p_(j) / j) for the smallest p-values `ranked` (sorted) of a family of m."""
    scaled = ranked * m / np.arange(1, len(ranked) + 1)
    return np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)


def holm(p: ArrayLike, axis: int = -1) -> np.ndarray:
    """Holm's step-down adjusted p-values along `axis`; NaN p-values do not count in m and stay NaN.

    With the m valid p-values sorted: adj_(i) = max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting
    every test with adj <= alpha keeps the probability of any false rejection at most alpha, under any
    dependence between the tests.

    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    rows, restore = _rows(p, axis)
    order, ranked, m = _sorted(rows)
    factor = m - np.arange(rows.shape[1])
    scaled = np.minimum(ranked * factor, 1.0)
    return restore(_unsorted(np.maximum.accumulate(scaled, axis=1), order, rows))


def _rows(p: ArrayLike, axis: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """`p` as a 2-D array of families (one per row), and the function that puts a result back."""
    p = np.asarray(p, dtype=float)
    moved = np.moveaxis(p, axis, -1) if p.ndim else p.reshape(1)
    rows = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])

    def restore(out: np.ndarray) -> np.ndarray:
        return np.moveaxis(out.reshape(moved.shape), -1, axis) if p.ndim else out.reshape(())

    return rows, restore


def _sorted(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sort order, sorted p with the NaNs last, number of valid p) per row."""
    order = np.argsort(rows, axis=1, kind="stable")
    m = (~np.isnan(rows)).sum(axis=1, keepdims=True)
    return order, np.take_along_axis(rows, order, axis=1), m


def _unsorted(values: np.ndarray, order: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    np.put_along_axis(out, order, values, axis=1)
    return np.where(np.isnan(rows), np.nan, out)


def binomial_tail(x: ArrayLike, m: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """P(X >= x) for X ~ Binomial(m, alpha), vectorised: `scipy.stats.binom.sf(x - 1, m, alpha)`.

    The cohort bound: m devices, each in false alarm with probability alpha when nothing drifted; x of
    them in alarm. Computed as the regularised incomplete beta function I_alpha(x, m - x + 1). Treats the
    devices as independent: a cause shared by the cohort (weather, a bad batch of sensors) is exactly
    what this p-value is meant to reveal.

    >>> binomial_tail([0, 3, 11], [10, 10, 10], 0.01).round(5).tolist()
    [1.0, 0.00011, 0.0]
    """
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    safe_x = np.clip(x, 1, np.maximum(m, 1))
    tail = special.betainc(safe_x, np.maximum(m - safe_x + 1, 1e-300), alpha)
    return np.where(x <= 0, 1.0, np.where(x > m, 0.0, tail))


class Combined(NamedTuple):
    """A cohort's pooled evidence: Stouffer z = mean_z / se, the mean device z, its se, and the devices."""

    z: np.ndarray
    mean_z: np.ndarray
    se: np.ndarray
    m: np.ndarray


def stouffer(z: ArrayLike, members: ArrayLike, rho: float = 0.0) -> Combined:
    """Combine the device z-scores of each cohort: the mean z and its standard error.

    `members` is a boolean (cohorts, devices) matrix (cohorts may overlap, e.g. the fleet and a tag);
    `z` is (devices,) or (devices, signals). Over a cohort's m devices with a score (NaN is left out),
    mean_z = sum z / m. Under no drift each z is N(0, 1); with a correlation rho between the devices'
    scores (a shared environment) Var(mean_z) = (1 + (m - 1) rho) / m, so
    se = sqrt((1 + (m - 1) rho) / m) and Z = mean_z / se, which is N(0, 1). rho = 0 is Stouffer's
    Z = sum z / sqrt(m). The mean z is the effect (a shift in device sd units); Z is the evidence.
    Cohorts with no scored device get NaN.

    >>> out = stouffer([1.0, 2.0, np.nan], [[True, True, True], [False, False, True]])
    >>> out.z.round(3).tolist(), out.mean_z.tolist(), out.m.tolist()
    ([2.121, nan], [1.5, nan], [2, 0])
    """
    z = np.asarray(z, dtype=float)
    members = np.asarray(members, dtype=bool).astype(float)
    valid = np.isfinite(z)
    m = (members @ valid).astype(np.int64)
    total = members @ np.where(valid, z, 0.0)
    has = m > 0
    count = np.where(has, m, 1)
    mean_z = np.where(has, total / count, np.nan)
    se = np.where(has, np.sqrt((1 + (count - 1) * rho) / count), np.nan)
    return Combined(mean_z / se, mean_z, se, m)
