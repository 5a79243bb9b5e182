"""Statistical kernels over whole-fleet arrays: (devices, bins) counts, (devices,) levels. Pure numpy.

Count vectors against baseline proportions
------------------------------------------
`goodness_of_fit(counts, probs, dispersion)`: Pearson chi-square and the G-test (likelihood ratio) of each
row of a (devices, bins) matrix against the baseline proportions. Adjacent bins are merged, left to right,
until every merged bin expects at least `min_expected` counts at the row's n (a chi-square needs that);
rows are grouped by n in powers of two and each group shares one merge, computed from its smallest n, so
the work is a loop over at most ~17 groups, never over devices. Counts of real devices are overdispersed
(the window's class mix varies more than a multinomial): the statistic is divided by the dispersion
factor phi fitted on the reference period (phi = mean chi-square / df there) before the p-value is read
from chi2(df). Rows with n = 0 give NaN (no test).

Effect sizes: PSI (population stability index) with additive smoothing eps = 1e-4 on both distributions,
and the Jensen-Shannon distance (base 2, in [0, 1]).

Levels
------
`z_scores(x, level, sd)`, `two_sided_p(z)`, `one_sided_p(z)`; `pool(n, mean, var, groups)` merges
(n, mean, population variance) exactly (Chan et al.) per group: windows -> device -> cohort -> fleet.
`estimated_accuracy(hist, accuracy_per_bin)`: label-free accuracy from the confidence histogram and the
calibration map, as NannyML's CBPE does from raw scores, with its binomial standard error.
`anomaly_p(anomalies, n, rate, concentration)`: beta-binomial upper tail of an anomaly count.

>>> counts = np.array([[50, 30, 20], [10, 10, 80]])
>>> chi2, g, df, p = goodness_of_fit(counts, np.array([0.5, 0.3, 0.2]))
>>> p.round(3).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

MIN_EXPECTED = 5.0
PSI_EPS = 1e-4


def _merge_groups(probs: np.ndarray, n: float, min_expected: float) -> np.ndarray:
    """Group label per bin: adjacent bins merged left to right until n * p >= min_expected; a small
    remainder joins the last group."""
    labels = np.zeros(len(probs), dtype=int)
    group, acc = 0, 0.0
    for b, p in enumerate(probs):
        labels[b] = group
        acc += p
        if acc * n >= min_expected:
            group, acc = group + 1, 0.0
    if acc > 0 and group > 0 and acc * n < min_expected:
        labels[labels == group] = group - 1
    return labels


def goodness_of_fit(
    counts: np.ndarray, probs: np.ndarray, dispersion: float = 1.0, min_expected: float = MIN_EXPECTED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(chi2, G, df, p) per row; p from the G statistic divided by `dispersion`."""
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float) / np.sum(probs)
    n = counts.sum(axis=1)
    chi2 = np.full(len(counts), np.nan)
    g = np.full(len(counts), np.nan)
    df = np.zeros(len(counts))
    klass = np.where(n > 0, np.floor(np.log2(np.maximum(n, 1))), -1).astype(int)
    for k in np.unique(klass[klass >= 0]).tolist():
        rows = klass == k
        labels = _merge_groups(probs, float(n[rows].min()), min_expected)
        groups = labels.max() + 1
        merged = np.zeros((int(rows.sum()), groups))
        np.add.at(merged.T, labels, counts[rows].T)
        merged_p = np.bincount(labels, weights=probs, minlength=groups)
        expected = n[rows, None] * merged_p[None, :]
        chi2[rows] = ((merged - expected) ** 2 / expected).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(merged > 0, merged * np.log(merged / expected), 0.0)
        g[rows] = 2 * terms.sum(axis=1)
        df[rows] = groups - 1
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, special.chdtrc(np.maximum(df, 1), g / dispersion), np.nan)
    return chi2, g, df, p


def psi(counts: np.ndarray, probs: np.ndarray, eps: float = PSI_EPS) -> np.ndarray:
    """Population stability index of each row's distribution against `probs` (smoothed by eps)."""
    actual = _smoothed(counts, eps)
    expected = _smoothed(np.asarray(probs, dtype=float)[None, :], eps)
    return ((actual - expected) * np.log(actual / expected)).sum(axis=1)


def js_distance(counts: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2) between each row's distribution and `probs`."""
    actual = np.asarray(counts, dtype=float)
    total = actual.sum(axis=1, keepdims=True)
    actual = np.divide(actual, total, out=np.zeros_like(actual), where=total > 0)
    expected = np.broadcast_to(np.asarray(probs, dtype=float) / np.sum(probs), actual.shape)
    mid = (actual + expected) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_a = np.where(actual > 0, actual * np.log2(actual / mid), 0.0).sum(axis=1)
        kl_e = np.where(expected > 0, expected * np.log2(expected / mid), 0.0).sum(axis=1)
    return np.sqrt(np.maximum((kl_a + kl_e) / 2, 0.0))


def _smoothed(counts: np.ndarray, eps: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    share = share + eps
    return share / share.sum(axis=1, keepdims=True)


def z_scores(x: np.ndarray, level: np.ndarray | float, sd: np.ndarray | float) -> np.ndarray:
    return (np.asarray(x, dtype=float) - level) / sd


def two_sided_p(z: np.ndarray) -> np.ndarray:
    return special.erfc(np.abs(z) / np.sqrt(2))


def one_sided_p(z: np.ndarray) -> np.ndarray:
    """P(Z >= z): evidence that a level went up."""
    return special.ndtr(-np.asarray(z, dtype=float))


def pool(
    n: np.ndarray, mean: np.ndarray, var: np.ndarray, groups: np.ndarray, n_groups: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (n, mean, population variance) per group from parts (Chan et al.): the mean of the group is
    the n-weighted mean; its variance adds the parts' variances and their means' spread around it."""
    n = np.asarray(n, dtype=float)
    groups = np.asarray(groups)
    size = int(n_groups if n_groups is not None else (groups.max() + 1 if len(groups) else 0))
    total = np.bincount(groups, weights=n, minlength=size)
    sums = np.bincount(groups, weights=n * mean, minlength=size)
    pooled_mean = np.divide(sums, total, out=np.full(size, np.nan), where=total > 0)
    spread = n * (var + (mean - pooled_mean[groups]) ** 2)
    m2 = np.bincount(groups, weights=spread, minlength=size)
    return total, pooled_mean, np.divide(m2, total, out=np.full(size, np.nan), where=total > 0)


def estimated_accuracy(hist: np.ndarray, accuracy_per_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(expected accuracy, standard error) per row: sum_b c_b a_b / n and sqrt(sum_b c_b a_b (1 - a_b)) / n."""
    hist = np.asarray(hist, dtype=float)
    acc = np.asarray(accuracy_per_bin, dtype=float)
    n = hist.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, hist @ acc / n, np.nan)
        se = np.where(n > 0, np.sqrt(hist @ (acc * (1 - acc))) / n, np.nan)
    return mean, se


def anomaly_p(anomalies: np.ndarray, n: np.ndarray, rate: float, concentration: float) -> np.ndarray:
    """P(A >= a) for A ~ BetaBinomial(n, rate * c, (1 - rate) * c): one-sided evidence that the anomaly
    rate went up, exact in the right tail (a normal approximation of these skewed counts is not).

    The window's anomaly rate varies around the baseline rate as a Beta with concentration c (fitted on
    the reference period); c = inf is a plain binomial."""
    a = np.asarray(anomalies, dtype=float)
    n = np.asarray(n, dtype=float)
    if rate <= 0:
        return np.where(a > 0, 0.0, 1.0)
    if not np.isfinite(concentration):
        return np.where(n > 0, stats.binom.sf(a - 1, n, rate), np.nan)
    tail = stats.betabinom.sf(a - 1, n.astype(np.int64), rate * concentration, (1 - rate) * concentration)
    return np.where(n > 0, tail, np.nan)
