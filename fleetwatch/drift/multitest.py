"""Multiple-testing control across devices and metrics, and cohort evidence from device alarms. Pure.

- `bh_qvalues`: Benjamini-Hochberg q-values (the FDR level at which each test would be rejected).
- `holm`: Holm's step-down adjusted p-values (family-wise error across a few metrics).
- `binomial_tail`: P(X >= x) for X ~ Binomial(m, alpha): how surprising x alarms among m devices are when
  each alarms falsely with probability alpha. Cohort and fleet evidence from counting device alarms
  uses this instead of one chi-square over pooled counts of correlated windows.

>>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
[0.04, 0.053, 0.053, 0.5]
"""

from __future__ import annotations

import numpy as np
from scipy import special


def bh_qvalues(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """BH q-values along `axis`; NaN p-values (no test) stay NaN and do not count in m."""
    p = np.asarray(p, dtype=float)
    moved = np.moveaxis(p, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]) if moved.ndim else moved.reshape(1, 1)
    out = np.full(flat.shape, np.nan)
    valid = ~np.isnan(flat)
    m = valid.sum(axis=1, keepdims=True)
    filled = np.where(valid, flat, np.inf)
    order = np.argsort(filled, axis=1, kind="stable")
    ranked = np.take_along_axis(filled, order, axis=1)
    rank = np.arange(1, flat.shape[1] + 1)[None, :]
    scaled = np.where(np.isfinite(ranked), ranked * m / rank, np.inf)
    q_sorted = np.minimum.accumulate(scaled[:, ::-1], axis=1)[:, ::-1]
    np.put_along_axis(out, order, np.minimum(q_sorted, 1.0), axis=1)
    out[~valid] = np.nan
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values of one family (1-d)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def binomial_tail(x: np.ndarray, m: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """P(X >= x), X ~ Binomial(m, alpha), vectorised (the regularised incomplete beta function)."""
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    safe_x = np.clip(x, 1, np.maximum(m, 1))
    tail = special.betainc(safe_x, np.maximum(m - safe_x + 1, 1e-300), alpha)
    return np.where(x <= 0, 1.0, np.where(x > m, 0.0, tail))
