"""Statistical kernels over whole-fleet arrays: numpy (scipy only for distribution functions), and C.

Every kernel takes arrays for the whole fleet at once: count matrices shaped (devices, bins), levels shaped
(devices,) or (devices, channels), and returns arrays of the same leading shape. There is no loop over
devices in Python; the only Python loop is over histogram bins in the bin merge.

The count tests (`goodness_of_fit`, `g_test_p`, `psi`, `estimated_accuracy`, `betabinom_sf`) run in the C
routines of `_kernels.c` when that extension is built (`native.routines`), in one pass over the rows; the
numpy code below is the fallback and the reference. Both give the same floats up to rounding: df,
Pearson's chi2 and the accuracy estimate to the bit, G and PSI to their logs' last bits, the p-values to
scipy's own rounding (docs/drift.md, "How the count tests compute").

Conventions
-----------
- Variances are **population** variances, M2 / n, as the firmware's Welford accumulator sends them; the
  pooled variances returned here are population variances too (multiply by n / (n - 1) for a sample one).
- No data: a count test at n = 0 returns statistic 0 and p = 1 (no evidence), and `goodness_of_fit` flags
  the row untested (df = 0). Scores and estimates that do not exist without data (z, estimated accuracy,
  PSI, JS distance) are NaN, and a p-value computed from a NaN z is NaN.
- p-values are one-sided *upper* tails unless the name says otherwise: evidence that something went up.

Count vectors against baseline proportions
------------------------------------------
`goodness_of_fit` runs Pearson's chi-square and the G-test (likelihood ratio) of each row against the
baseline proportions, after merging adjacent bins until each merged bin expects at least `min_expected`
counts at that row's n. `psi` (population stability index) and `js_distance` (Jensen-Shannon distance)
are the matching effect sizes.

>>> counts = np.array([[50, 30, 20], [10, 10, 80], [0, 0, 0]])
>>> fit = goodness_of_fit(counts, np.array([0.5, 0.3, 0.2]))
>>> fit.p.round(3).tolist(), fit.df.tolist(), fit.tested.tolist()
([1.0, 0.0, 1.0], [2, 2, 0], [True, True, False])
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from fleetwatch.drift import native

#: Smallest expected count of a merged bin (the usual rule of thumb for the chi-square approximation).
MIN_EXPECTED = 5.0
#: Additive smoothing of both distributions in PSI, so that an empty bin does not give log(0).
PSI_EPS = 1e-4
#: Floor of a window variance before taking its log: the wire resolution of `input_var` (0.0001).
LOG_VAR_FLOOR = 1e-4


class GoodnessOfFit(NamedTuple):
    """Per row: Pearson chi-square, G statistic, degrees of freedom after merging, and the p-value."""

    chi2: np.ndarray
    g: np.ndarray
    df: np.ndarray
    p: np.ndarray

    @property
    def tested(self) -> np.ndarray:
        """Rows that had a test: n > 0 and at least two merged bins (df > 0). Untested rows have p = 1."""
        return self.df > 0


def goodness_of_fit(
    counts: ArrayLike,
    probs: ArrayLike,
    dispersion: ArrayLike = 1.0,
    min_expected: float = MIN_EXPECTED,
    statistic: Literal["g", "pearson"] = "g",
) -> GoodnessOfFit:
    """Chi-square and G-test of each row of `counts` (devices, bins) against the proportions `probs`.

    With O the observed and E = n * p the expected counts of the merged bins of a row,
    Pearson's chi2 = sum (O - E)^2 / E and G = 2 sum O ln(O / E) (0 ln 0 = 0). Both are approximately
    chi-square with df = (merged bins - 1) when the row is a multinomial sample of the baseline.

    Bin merge, the same rule for every row given its own n: walk the bins left to right, adding the
    expected counts n * p_b; close a merged bin as soon as its sum reaches `min_expected`; bins left over
    at the end whose sum stays below it join the last closed bin. A row with n * 1 < `min_expected` is
    one merged bin: df = 0, statistic 0, p = 1, `tested` False. The walk is vectorised over rows.

    Field counts are overdispersed (a window's mix varies more than a multinomial's): `dispersion` phi
    (scalar or per row, fitted on the reference period as mean G / df) divides the statistic before the
    p-value is read, p = P(chi2_df >= statistic / phi) (quasi-likelihood scaling). `statistic` picks which
    one the p-value is of.

    >>> fit = goodness_of_fit([[8, 1, 1]], [0.4, 0.3, 0.3])
    >>> fit.df.tolist()                       # n = 10: expected 4, 3, 3 -> merged [4 + 3, 3] -> one bin
    [0]
    >>> fit = goodness_of_fit([[28, 12, 10]], [0.4, 0.3, 0.3])
    >>> fit.chi2.round(3).tolist(), fit.g.round(3).tolist(), fit.p.round(3).tolist()
    ([5.467], [5.378], [0.068])
    """
    counts, probs = _count_inputs(counts, probs, min_expected)
    fit = _native_fit(counts, probs, dispersion, min_expected, statistic == "pearson")
    if fit is not None:
        return fit
    observed, merged, df = _merged_bins(counts, probs, min_expected)
    used = merged > 0
    safe = np.where(used, merged, 1.0)
    square = observed - merged
    square *= square
    square /= safe
    square[~used] = 0.0
    chi2 = square.sum(axis=1)
    g = _g_statistic(observed, safe)
    return GoodnessOfFit(chi2, g, df, _chi2_p(df, g if statistic == "g" else chi2, dispersion))


def g_test_p(
    counts: ArrayLike, probs: ArrayLike, dispersion: ArrayLike = 1.0, min_expected: float = MIN_EXPECTED
) -> np.ndarray:
    """`goodness_of_fit(counts, probs, dispersion, min_expected).p` without the Pearson statistic, which
    the drift engine does not use (the same floats, a fifth less work).

    >>> g_test_p([[28, 12, 10]], [0.4, 0.3, 0.3]).round(3).tolist()
    [0.068]
    """
    counts, probs = _count_inputs(counts, probs, min_expected)
    fit = _native_fit(counts, probs, dispersion, min_expected, pearson=False, chi2=False)
    if fit is not None:
        return fit.p
    observed, merged, df = _merged_bins(counts, probs, min_expected)
    return _chi2_p(df, _g_statistic(observed, np.where(merged > 0, merged, 1.0)), dispersion)


def _count_inputs(counts: ArrayLike, probs: ArrayLike, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """(counts as floats, normalised probs), checked for the count tests."""
    counts = np.asarray(counts, dtype=float)
    probs = _normalised(probs)
    if counts.ndim != 2:
        raise ValueError("counts must be (rows, bins)")
    if not min_expected > 0:  # NaN too: no bin could ever close
        raise ValueError("min_expected must be positive")
    return counts, probs


def _native_fit(
    counts: np.ndarray, probs: np.ndarray, dispersion: ArrayLike, min_expected: float, pearson: bool, chi2: bool = True
) -> GoodnessOfFit | None:
    """`goodness_of_fit` by the C routine, the p-value of Pearson's chi2 if `pearson`, else of G (without chi2:
    its field is empty); None where the numpy path is to run: no C routines, a baseline per row, more bins than
    the routine's chi-square survival function serves (`MAX_BINS`), or a dispersion that is neither one number
    nor one per row."""
    rows, bins = counts.shape
    phi = np.asarray(dispersion, dtype=float)
    if (
        native.routines is None
        or probs.shape != (bins,)
        or bins > native.routines.MAX_BINS
        or phi.shape not in ((), (1,), (rows,))
    ):
        return None
    pearson_chi2, g, p = np.empty(rows if chi2 or pearson else 0), np.empty(rows), np.empty(rows)
    df = np.empty(rows, dtype=np.int64)
    phi = np.ascontiguousarray(phi.ravel())
    native.routines.goodness_of_fit(
        np.ascontiguousarray(counts), bins, probs, phi, min_expected, pearson, pearson_chi2, g, df, p
    )
    return GoodnessOfFit(pearson_chi2, g, df, p)


def _merged_bins(
    counts: np.ndarray, probs: np.ndarray, min_expected: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed, expected counts of the merged bins, df) per row of `_count_inputs`, by `goodness_of_fit`'s
    merge rule; the bins past a row's last merged bin have observed and expected 0."""
    rows, bins = counts.shape
    n = counts.sum(axis=1)
    # the merge depends on n only: done once per distinct n (a fleet has a few thousand), then spread
    (levels,), inverse = _distinct(n) or ((n,), np.arange(rows))
    expected = levels[:, None] * np.broadcast_to(probs, (len(levels), bins))
    level_labels = _merge_labels(expected, min_expected)
    level_flat = (level_labels + bins * np.arange(len(levels))[:, None]).ravel()
    merged = np.bincount(level_flat, weights=expected.ravel(), minlength=expected.size).reshape(expected.shape)
    labels, merged = level_labels[inverse], merged[inverse]
    flat = (labels + bins * np.arange(rows)[:, None]).ravel()
    observed = np.bincount(flat, weights=counts.ravel(), minlength=rows * bins).reshape(rows, bins)
    # floats also for no rows (np.bincount of nothing is int64, which the statistics cannot divide in place)
    return observed.astype(float, copy=False), merged.astype(float, copy=False), labels[:, -1]


def _g_statistic(observed: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """G = 2 sum O ln(O / E) per row, `safe` the expected counts with 1 where they are 0 (0 ln 0 = 0)."""
    ratio = np.divide(observed, safe, out=np.ones_like(observed), where=observed > 0)
    return 2 * special.xlogy(observed, ratio).sum(axis=1)


def _chi2_p(df: np.ndarray, statistic: np.ndarray, dispersion: ArrayLike) -> np.ndarray:
    """P(chi2_df >= statistic / dispersion); 1 for untested rows (df = 0)."""
    return np.where(df > 0, special.chdtrc(np.maximum(df, 1), statistic / np.asarray(dispersion, dtype=float)), 1.0)


def _merge_labels(expected: np.ndarray, min_expected: float) -> np.ndarray:
    """Merged-bin label of every (row, bin), by the left-to-right rule of `goodness_of_fit`."""
    rows, bins = expected.shape
    labels = np.empty((rows, bins), dtype=np.intp)
    group = np.zeros(rows, dtype=np.intp)
    running = np.zeros(rows)
    for b in range(bins):
        labels[:, b] = group
        running += expected[:, b]
        closed = running >= min_expected
        group += closed
        running[closed] = 0.0
    leftover = (labels == group[:, None]) & (group[:, None] > 0)
    return np.where(leftover, labels - 1, labels)


#: Largest look-up table `_distinct` builds (product of the columns' ranges).
DISTINCT_TABLE_MAX = 1 << 22


def _distinct(*columns: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
    """The distinct rows of 1-D columns of small non-negative integers (counts), and each row's number
    among them, by a look-up table; None for other values.

    The row-by-row kernels here run once per distinct row where that pays: a fleet's windows repeat the
    same counts (100,000 devices, a few thousand distinct inference counts), and a row's result depends on
    its own values only, so the result is the same to the last bit.

    >>> _distinct(np.array([3.0, 1.0, 3.0]), np.array([0.0, 2.0, 0.0]))
    ((array([1., 3.]), array([2., 0.])), array([1, 0, 1]))
    """
    key = np.zeros(len(columns[0]), dtype=np.int64)
    ranges = []
    for column in columns:
        if not (np.isfinite(column).all() and (column >= 0).all() and (column == np.floor(column)).all()):
            return None
        ranges.append(int(column.max()) + 1 if len(column) else 1)
        if np.prod(ranges, dtype=float) > DISTINCT_TABLE_MAX:
            return None
        key = key * ranges[-1] + column.astype(np.int64)
    present = np.zeros(int(np.prod(ranges)), dtype=bool)
    present[key] = True
    codes = np.flatnonzero(present)
    inverse = (np.cumsum(present) - 1)[key]
    values = []
    for size in reversed(ranges):
        codes, value = np.divmod(codes, size)
        values.append(value.astype(float))
    return tuple(reversed(values)), inverse


def psi(counts: ArrayLike, probs: ArrayLike, eps: float = PSI_EPS) -> np.ndarray:
    """Population stability index of each row's proportions a against the baseline proportions e.

    PSI = sum_b (a_b - e_b) ln(a_b / e_b), the symmetrised Kullback-Leibler divergence, after adding
    `eps` to every proportion of both and renormalising (a_b -> (a_b + eps) / (1 + bins * eps)), so an
    empty bin costs a finite amount. NaN for rows with n = 0.

    >>> psi([[50, 50], [90, 10]], [0.5, 0.5]).round(3).tolist()
    [0.0, 0.878]
    """
    counts = np.asarray(counts, dtype=float)
    bins = counts.shape[-1]
    e = (_normalised(probs) + eps) / (1 + bins * eps)
    if native.routines is not None and counts.ndim == 2 and e.shape == (bins,):
        out = np.empty(len(counts))
        native.routines.psi(np.ascontiguousarray(counts), bins, e, eps, out)
        return out
    a, n = _proportions(counts)
    a += eps  # in place, one array of (rows, bins) at a time: the same floats as the plain formula
    a /= 1 + bins * eps
    log = np.divide(a, e)
    np.log(log, out=log)
    a -= e
    a *= log
    return np.where(n > 0, a.sum(axis=-1), np.nan)


def js_distance(counts: ArrayLike, probs: ArrayLike) -> np.ndarray:
    """Jensen-Shannon distance, base 2, of each row's proportions a against the baseline e, in [0, 1].

    With m = (a + e) / 2, JSD = (KL(a || m) + KL(e || m)) / 2 in bits, and the distance is sqrt(JSD):
    0 for identical distributions, 1 for disjoint ones. No smoothing is needed (m > 0 wherever a or e
    is). NaN for rows with n = 0.

    >>> js_distance([[5, 5], [10, 0]], [0.0, 1.0]).round(3).tolist()
    [0.558, 1.0]
    """
    actual, n = _proportions(counts)
    expected = np.broadcast_to(_normalised(probs), actual.shape)
    mid = (actual + expected) / 2
    bits = (special.rel_entr(actual, mid) + special.rel_entr(expected, mid)).sum(axis=-1) / (2 * np.log(2))
    return np.where(n > 0, np.sqrt(np.clip(bits, 0.0, 1.0)), np.nan)


def _proportions(counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(row proportions, row totals); rows with no counts get zeros."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=-1)
    share = np.divide(counts, n[..., None], out=np.zeros_like(counts), where=n[..., None] > 0)
    return share, n


def _normalised(probs: ArrayLike) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    total = probs.sum(axis=-1, keepdims=True)
    if (probs < 0).any() or (total <= 0).any():
        raise ValueError("baseline proportions must be non-negative with a positive sum")
    return probs / total


class Moments(NamedTuple):
    """Sample size, mean and population variance (M2 / n) of a set of values."""

    n: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def pool(n: ArrayLike, mean: ArrayLike, var: ArrayLike, groups: ArrayLike, n_groups: int | None = None) -> Moments:
    """Exact moments of the union of parts, per group label: windows -> device -> cohort -> fleet.

    Parts i of a group with sizes n_i, means m_i and population variances v_i pool to
    N = sum n_i, M = sum n_i m_i / N and V = sum n_i (v_i + (m_i - M)^2) / N: the k-part form of Chan et
    al.'s parallel update (M2 = sum M2_i + sum n_i (m_i - M)^2), exactly the mean and population variance
    of the concatenated raw values. Computed around M (two passes), so it is numerically stable. Parts
    with n = 0 are ignored (their mean and variance may be NaN); a group with N = 0 has NaN mean and
    variance. `groups` labels the first axis; trailing axes (channels) are pooled independently.

    Pooled mean and variance only depend on the parts' *relative* sizes: when the firmware aggregates s
    input samples per inference, passing n = inference_count gives the same M and V as the true sample
    counts.

    >>> pool([2, 2], [0.0, 2.0], [1.0, 1.0], [0, 0])
    Moments(n=array([4.]), mean=array([1.]), var=array([2.]))
    """
    n, mean, var = _parts(n, mean, var)
    groups = np.asarray(groups, dtype=np.intp)
    size = int(n_groups) if n_groups is not None else int(groups.max()) + 1 if groups.size else 0
    shape = (size, *mean.shape[1:])

    def total(values: np.ndarray) -> np.ndarray:
        out = np.zeros(shape)
        np.add.at(out, groups, values)
        return out

    count = total(np.broadcast_to(n, mean.shape))
    centre = _ratio(total(n * mean), count)
    return Moments(count, centre, _ratio(total(n * (var + (mean - centre[groups]) ** 2)), count))


def pool_axis(n: ArrayLike, mean: ArrayLike, var: ArrayLike, axis: int = -1) -> Moments:
    """Exact moments of the union of parts along `axis` (e.g. a device's windows), by `pool`'s formula.

    >>> pool_axis([[2, 2]], [[0.0, 2.0]], [[1.0, 1.0]], axis=1)
    Moments(n=array([4.]), mean=array([1.]), var=array([2.]))
    """
    n, mean, var = _parts(n, mean, var)
    count = np.broadcast_to(n, mean.shape).sum(axis=axis)
    centre = _ratio((n * mean).sum(axis=axis), count)
    spread = n * (var + (mean - np.expand_dims(centre, axis)) ** 2)
    return Moments(count, centre, _ratio(spread.sum(axis=axis), count))


def _parts(n: ArrayLike, mean: ArrayLike, var: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sizes broadcast against the moments, with empty parts' moments zeroed so NaNs there are ignored."""
    mean = np.asarray(mean, dtype=float)
    n = np.asarray(n, dtype=float)
    n = n.reshape(n.shape + (1,) * (mean.ndim - n.ndim))
    empty = n <= 0
    return np.where(empty, 0.0, n), np.where(empty, 0.0, mean), np.where(empty, 0.0, np.asarray(var, dtype=float))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=denominator > 0)


def log_variance(var: ArrayLike, floor: float = LOG_VAR_FLOOR) -> np.ndarray:
    """ln(max(var, floor)): window variances are compared on a log scale, where a gain change is a shift.

    >>> log_variance([0.0, 1.0]).round(3).tolist()
    [-9.21, 0.0]
    """
    return np.log(np.maximum(np.asarray(var, dtype=float), floor))


def standardise(x: ArrayLike, mu: ArrayLike, sigma: ArrayLike, level: ArrayLike = 0.0) -> np.ndarray:
    """z = (x - level - mu) / sigma: a window statistic against its baseline distribution N(mu, sigma^2).

    `x` is a window mean, a log window variance (`log_variance`), a latency, a memory peak or a battery
    voltage, shaped (devices,) or (devices, channels); `mu` and `sigma` broadcast against it (one per
    channel). `level` is a device's own offset from the baseline (a device mounted differently is
    compared with itself, not drifted forever); use sigma = the within-device spread with it. NaN x
    (no data) and sigma <= 0 (no spread to compare with) give NaN.

    >>> standardise([[1.5, 0.0]], mu=[1.0, 0.0], sigma=[0.5, 2.0], level=[[0.5, -1.0]]).tolist()
    [[0.0, 0.5]]
    """
    sigma = np.asarray(sigma, dtype=float)
    spread = np.where(sigma > 0, sigma, np.nan)
    return (np.asarray(x, dtype=float) - level - np.asarray(mu, dtype=float)) / spread


def two_sided_p(z: ArrayLike) -> np.ndarray:
    """P(|Z| >= |z|) for a standard normal Z: evidence of a shift either way. NaN stays NaN.

    >>> two_sided_p([0.0, 1.959964]).round(3).tolist()
    [1.0, 0.05]
    """
    return special.erfc(np.abs(np.asarray(z, dtype=float)) / np.sqrt(2))


def one_sided_p(z: ArrayLike) -> np.ndarray:
    """P(Z >= z): evidence that a level went up (pass -z for "went down", e.g. battery). NaN stays NaN.

    >>> one_sided_p([0.0, 1.644854]).round(3).tolist()
    [0.5, 0.05]
    """
    return special.ndtr(-np.asarray(z, dtype=float))


class AccuracyEstimate(NamedTuple):
    """Label-free expected accuracy per row and its standard error."""

    accuracy: np.ndarray
    se: np.ndarray


def estimated_accuracy(hist: ArrayLike, accuracy_per_bin: ArrayLike) -> AccuracyEstimate:
    """Expected accuracy from a confidence histogram and a calibration map, without labels (as CBPE).

    With c_b inferences in confidence bin b, n = sum c_b, and a_b the accuracy of that bin on labelled
    validation data: accuracy = sum_b c_b a_b / n. Each inference is right with probability a_b, so
    given the histogram the number right has variance sum_b c_b a_b (1 - a_b) and
    se = sqrt(sum_b c_b a_b (1 - a_b)) / n. The se leaves out the calibration map's own estimation
    error and window-to-window overdispersion (scale it by sqrt(phi) for the latter). NaN at n = 0.

    >>> estimated_accuracy([[0, 10], [10, 10]], [0.5, 0.9]).accuracy.tolist()
    [0.9, 0.7]
    """
    hist = np.asarray(hist, dtype=float)
    acc = np.asarray(accuracy_per_bin, dtype=float)
    if native.routines is not None and hist.ndim == 2 and acc.shape == (hist.shape[1],):
        accuracy, se = np.empty(len(hist)), np.empty(len(hist))
        native.routines.accuracy(np.ascontiguousarray(hist), hist.shape[1], np.ascontiguousarray(acc), accuracy, se)
        return AccuracyEstimate(accuracy, se)
    n = hist.sum(axis=-1)
    weighted = hist * acc
    right = weighted.sum(axis=-1)
    weighted *= 1 - acc
    spread = np.sqrt(weighted.sum(axis=-1))
    return AccuracyEstimate(_ratio(right, n), _ratio(spread, n))


def anomaly_p(anomalies: ArrayLike, n: ArrayLike, rate: float, concentration: float) -> np.ndarray:
    """P(A >= a) for A ~ BetaBinomial(n, rate c, (1 - rate) c): evidence the anomaly rate went up.

    The anomaly rate of a healthy window is not fixed at the baseline rate r: it varies from window to
    window as a Beta with mean r and concentration c (fitted on the reference period), so a window's
    count is beta-binomial with variance n r (1 - r) (1 + (n - 1) / (c + 1)). The inflation grows with
    n, unlike a quasi-binomial's constant phi, which is what happens when the rate itself wanders: a
    constant phi fitted at the fleet's typical n would be too lenient for busy devices and too strict for
    quiet ones. The upper tail is exact (these counts are small and skewed; a normal approximation is
    not). c = inf is the plain binomial; r = 0 makes any anomaly p = 0. n = 0 gives p = 1.

    >>> anomaly_p([1, 6], [100, 100], rate=0.01, concentration=float("inf")).round(4).tolist()
    [0.634, 0.0005]
    """
    a = np.asarray(anomalies, dtype=float)
    n = np.asarray(n, dtype=float)
    if rate <= 0:
        return np.where(a > 0, 0.0, 1.0)
    if np.isinf(concentration):
        from scipy import stats  # here: scipy.stats is large in memory, and the daemon imports this module

        tail = stats.binom.sf(a - 1, n, rate)
    else:
        tail = betabinom_sf(a, n, rate * concentration, (1 - rate) * concentration)
    return np.where(n > 0, tail, 1.0)


#: Relative size of the neglected rest of an upper-tail sum in `betabinom_sf`.
_TAIL_RTOL = 1e-13
#: Relative error `betabinom_sf` allows 1 - cdf before it sums the upper tail instead.
_CANCELLATION_RTOL = 1e-10
#: log pmf(0) at least this: pmf(0) neither underflows nor loses digits, and sums start from it.
_LOG_START_MIN = -600.0


def betabinom_sf(a: ArrayLike, n: ArrayLike, alpha: float, beta: float) -> np.ndarray:
    """P(X >= a) for X ~ BetaBinomial(n, alpha, beta), vectorised over rows of (a, n).

    scipy's `betabinom.sf` sums the pmf element by element in Python (about 0.1 ms a row) and takes
    1 - cdf, which loses the far upper tail. Here all rows are summed at once, in blocks of terms, with
    the pmf recurrence pmf(x + 1) / pmf(x) = (n - x)(x + alpha) / ((x + 1)(n - x - 1 + beta)):

    - first 1 - (pmf(0) + ... + pmf(a - 1)). The sum walks up from pmf(0) = B(alpha, n + beta) / B(alpha,
      beta) = prod over k < n of (beta + k) / (alpha + beta + k), a cumulative sum of logs for all n at
      once, exact to about 1e-14 of its log, where log pmf(0) >= -600; elsewhere it walks down from
      pmf(a - 1), whose large log-beta terms leave about 2e-14 of their size. Each step adds about
      1e-15. The result is kept where that error is below 1e-10 of it (a walk down only below the mean:
      above it the start may have underflowed);
    - smaller tails are summed upward from a, stopped once the rest is provably below 1e-13 of the sum:
      for beta >= 1 every later ratio is at most B = max(1, (x + alpha) / (x + 1)) (n - x) / (n - x - 1 +
      beta), so while B < 1 the rest is at most term B / (1 - B). With beta < 1 (a U-shaped pmf, no such
      bound) these rows are scipy's.

    X takes whole values: an `a` that is not a whole number counts as the next one up. An `n` that is not
    a whole number makes no beta-binomial: NaN, as scipy's. Each distinct (a, n) is computed once
    (`_distinct`). The C routine takes the rows one by one instead, by the same rule, a term at a time,
    starting the upper tail from the walk's next term; it leaves to this code the rows that start from
    pmf(a - 1) or need scipy.

    >>> betabinom_sf([0, 3, 40], [50, 50, 50], 2.0, 30.0).round(6).tolist()
    [1.0, 0.503624, 0.0]
    """
    a, n = np.broadcast_arrays(np.ceil(np.asarray(a, dtype=float)), np.asarray(n, dtype=float))
    if native.routines is not None and alpha > 0 and beta > 0:
        return _native_betabinom_sf(a.ravel(), n.ravel(), alpha, beta).reshape(a.shape)
    found = _distinct(a.ravel(), n.ravel())
    if found is None:
        return _betabinom_sf(a, n, alpha, beta)
    (distinct_a, distinct_n), inverse = found
    return _betabinom_sf(distinct_a, distinct_n, alpha, beta)[inverse].reshape(a.shape)


def _native_betabinom_sf(a: np.ndarray, n: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """`betabinom_sf` of 1-D rows by the C routine, and the rows it leaves (NaN) by `_betabinom_sf`."""
    a, n = np.ascontiguousarray(a), np.ascontiguousarray(n)
    inside = (a > 0) & (a <= n)
    out = np.empty(len(a))
    native.routines.betabinom_sf(a, n, alpha, beta, _log_pmf0(alpha, beta, n[inside]), out)
    left = np.isnan(out)
    if left.any():
        out[left] = _betabinom_sf(a[left], n[left], alpha, beta)
    return out


def _log_pmf0(alpha: float, beta: float, n: np.ndarray) -> np.ndarray:
    """log pmf(0) = sum over k < m of log(1 - alpha / (alpha + beta + k)) for every m up to max(n), at index m."""
    steps = np.log1p(-alpha / (alpha + beta + np.arange(int(n.max()) if len(n) else 0)))
    return np.concatenate([[0.0], np.cumsum(steps)])


def _betabinom_sf(a: np.ndarray, n: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    whole = n == np.floor(n)
    out = np.where(whole, np.where(a <= 0, 1.0, 0.0), np.nan)
    inside = whole & (a > 0) & (a <= n)
    log0 = np.full(a.shape, -np.inf)
    if inside.any():
        log0[inside] = _log_pmf0(alpha, beta, n[inside])[n[inside].astype(np.int64)]
    up = inside & (log0 >= _LOG_START_MIN)
    down = inside & ~up
    out[up] = 1.0 - _walk(np.zeros(up.sum()), np.exp(log0[up]), a[up] - 1, n[up], alpha, beta)
    first, magnitude = _betabinom_pmf(a[down] - 1, n[down], alpha, beta)
    out[down] = 1.0 - _walk(a[down] - 1, first, np.zeros(down.sum()), n[down], alpha, beta)
    # absolute error of 1 - cdf: the start's (relatively 1e-14 of the size of its logs) and about 1e-15 a
    # step; tests/test_drift_stats.py holds the result to 1e-9 of scipy's pmf summed over the tail
    start_error = np.zeros(a.shape)
    start_error[up] = 1e-14 * (1 + np.abs(log0[up]))
    start_error[down] = 2e-14 * magnitude
    small = inside & (out * _CANCELLATION_RTOL < start_error + 1e-15 * a)
    small[down] |= a[down] > n[down] * alpha / (alpha + beta)
    if beta >= 1:
        start, _ = _betabinom_pmf(a[small], n[small], alpha, beta)
        out[small] = _walk(a[small], start, n[small], n[small], alpha, beta, tail=True)
    else:
        from scipy import stats  # see anomaly_p

        out[small] = stats.betabinom.sf(a[small] - 1, n[small].astype(np.int64), alpha, beta)
    return np.clip(out, 0.0, 1.0)


def _betabinom_pmf(x: np.ndarray, n: np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(pmf(x) as scipy computes it, the summed size of the logs it adds up)."""
    logs = (-np.log1p(n), -special.betaln(n - x + 1, x + 1), special.betaln(x + alpha, n - x + beta))
    total = logs[0] + logs[1] + logs[2] - special.betaln(alpha, beta)
    return np.exp(total), sum(np.abs(part) for part in logs) + abs(special.betaln(alpha, beta))


def _walk(
    x: np.ndarray, term: np.ndarray, end: np.ndarray, n: np.ndarray, alpha: float, beta: float, tail: bool = False
) -> np.ndarray:
    """Per row, pmf(x) (given as `term`) plus the terms after it up to `end`, or down to it when below x.

    All rows go the same way. Each round takes a block of terms for every unfinished row (16, then twice
    as many each round, at most 1024) by a cumulative product of the ratios. With `tail` (upward to n,
    beta >= 1) a row also stops once the rest is provably negligible (see `betabinom_sf`)."""
    up = bool(np.all(end >= x))
    x, term, total = x.copy(), term.copy(), term.copy()
    live = np.flatnonzero(x != end)
    block = 16
    while len(live):
        xs = x[live, None] + (np.arange(block) if up else -np.arange(block))
        ns = n[live, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            if up:
                ratio = (ns - xs) * (xs + alpha) / ((xs + 1) * (ns - xs - 1 + beta))
            else:
                ratio = xs * (ns - xs + beta) / ((ns - xs + 1) * (xs - 1 + alpha))
        ratio = np.where(xs < end[live, None] if up else xs > end[live, None], ratio, 0.0)
        terms = term[live, None] * np.cumprod(ratio, axis=1)
        total[live] += terms.sum(axis=1)
        step = x[live] + (block if up else -block)
        x[live], term[live] = step, terms[:, -1]
        unfinished = step < end[live] if up else step > end[live]
        if tail:
            with np.errstate(divide="ignore", invalid="ignore"):
                rest = n[live] - step
                bound = np.maximum(1.0, (step + alpha) / (step + 1)) * rest / (rest - 1 + beta)
                unfinished &= ~((bound < 1) & (term[live] * bound <= _TAIL_RTOL * total[live] * (1 - bound)))
        live = live[unfinished]
        block = min(2 * block, 1024)
    return total


def anomaly_z(anomalies: ArrayLike, n: ArrayLike, rate: float, concentration: float) -> np.ndarray:
    """Standardised excess of anomalies: (a - n r) / sqrt(n r (1 - r) (1 + (n - 1) / (c + 1))).

    The same beta-binomial model as `anomaly_p`, as a score for pooling across devices (Stouffer) or a
    CUSUM. NaN at n = 0 or r in {0, 1} (no spread).

    >>> anomaly_z([4], [100], rate=0.02, concentration=float("inf")).round(3).tolist()
    [1.429]
    """
    a = np.asarray(anomalies, dtype=float)
    n = np.asarray(n, dtype=float)
    var = n * rate * (1 - rate) * (1 + (n - 1) / (concentration + 1))
    return _ratio(a - n * rate, np.sqrt(np.where(var > 0, var, 0.0)))


def poisson_p(count: ArrayLike, expected: ArrayLike) -> np.ndarray:
    """P(X >= count) for X ~ Poisson(expected): evidence that an event rate (reboots) went up.

    For reboots, count is the number of windows flagged rebooted among W windows and expected = W times
    the baseline's per-window reboot rate. The flag is 0/1 per window, so the count is really binomial;
    the Poisson tail is slightly heavier, hence conservative, and fine while the rate is small.

    >>> poisson_p([0, 3], [0.5, 0.5]).round(4).tolist()
    [1.0, 0.0144]
    """
    count = np.asarray(count, dtype=float)
    expected = np.asarray(expected, dtype=float)
    return np.where(count > 0, special.pdtrc(np.maximum(count - 1, 0), expected), 1.0)
