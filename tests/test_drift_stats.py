"""Every kernel of fleetwatch.drift.stats against scipy or numpy on the raw data, on random inputs.

The count tests run on both implementations (the `drift_kernels` fixture: the C routines of
fleetwatch/drift/_kernels.c, then the numpy code), and the two are compared with each other.
"""

from __future__ import annotations

import doctest
import functools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from fleetwatch.drift import native
from fleetwatch.drift import stats as kernels
from fleetwatch.drift.sequential import cusum_update
from fleetwatch.drift.stats import (
    anomaly_p,
    anomaly_z,
    betabinom_sf,
    estimated_accuracy,
    g_test_p,
    goodness_of_fit,
    js_distance,
    log_variance,
    one_sided_p,
    poisson_p,
    pool,
    pool_axis,
    psi,
    standardise,
    two_sided_p,
)

SEEDS = range(12)
TOL = {"rel": 1e-9, "abs": 1e-9}


def random_counts(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (rows, bins) count matrix and baseline proportions, some tiny or zero, rows of n = 0 to 3000."""
    bins = int(rng.integers(2, 16))
    probs = rng.dirichlet(np.full(bins, rng.choice([0.3, 1.0, 5.0])))
    probs[rng.uniform(size=bins) < 0.1] = 0.0
    probs = probs / probs.sum() if probs.sum() > 0 else np.full(bins, 1 / bins)
    n = rng.choice([0, 1, 4, 9, 30, 200, 1000, 3000, 20_000], int(rng.integers(1, 60)))
    mix = rng.dirichlet(np.ones(bins), len(n)) * 0.3 + probs * 0.7
    counts = np.array([rng.multinomial(k, p / p.sum()) for k, p in zip(n, mix, strict=True)]).reshape(len(n), bins)
    return counts, probs


def reference_merge(counts: np.ndarray, expected: np.ndarray, minimum: float) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule for one row, written as a plain loop: merged (observed, expected)."""
    observed, merged, open_o, open_e = [], [], 0.0, 0.0
    for o, e in zip(counts, expected, strict=True):
        open_o, open_e = open_o + o, open_e + e
        if open_e >= minimum:
            observed.append(open_o)
            merged.append(open_e)
            open_o = open_e = 0.0
    if not observed:
        return np.array([open_o]), np.array([open_e])
    observed[-1] += open_o
    merged[-1] += open_e
    return np.array(observed), np.array(merged)


@pytest.mark.parametrize("seed", SEEDS)
def test_goodness_of_fit_matches_scipy_after_the_documented_merge(seed: int, drift_kernels: str) -> None:
    rng = np.random.default_rng(seed)
    counts, probs = random_counts(rng)
    phi = float(rng.choice([1.0, 2.5]))
    g_fit = goodness_of_fit(counts, probs, dispersion=phi)
    pearson = goodness_of_fit(counts, probs, dispersion=phi, statistic="pearson")
    for i, row in enumerate(counts):
        n = row.sum()
        observed, expected = reference_merge(row, n * probs, 5.0)
        df = len(observed) - 1
        assert g_fit.df[i] == pearson.df[i] == df
        if n >= 5:
            assert (expected >= 5 - 1e-9).all()
        if df == 0:
            assert g_fit.p[i] == pearson.p[i] == 1.0 and not g_fit.tested[i]
            assert g_fit.chi2[i] == pytest.approx(0.0, abs=1e-9) and g_fit.g[i] == pytest.approx(0.0, abs=1e-9)
            continue
        chi2 = stats.chisquare(observed, expected)
        g = stats.power_divergence(observed, expected, lambda_="log-likelihood")
        assert g_fit.chi2[i] == pytest.approx(chi2.statistic, **TOL)
        assert g_fit.g[i] == pytest.approx(g.statistic, **TOL)
        assert g_fit.p[i] == pytest.approx(stats.chi2.sf(g.statistic / phi, df), **TOL)
        assert pearson.p[i] == pytest.approx(stats.chi2.sf(chi2.statistic / phi, df), **TOL)
        if phi == 1.0:
            assert g_fit.p[i] == pytest.approx(g.pvalue, **TOL)
            assert pearson.p[i] == pytest.approx(chi2.pvalue, **TOL)
    assert np.array_equal(g_test_p(counts, probs, dispersion=phi), g_fit.p)  # the engine's G-only path, bit for bit


def test_a_rows_test_does_not_depend_on_the_other_rows(drift_kernels: str) -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(10))
    counts = rng.multinomial(600, probs, size=5)
    counts[1:] = rng.multinomial(40, probs, size=4)
    alone = goodness_of_fit(counts[:1], probs)
    together = goodness_of_fit(counts, probs)
    assert alone.df[0] == together.df[0] and alone.p[0] == together.p[0]


def test_fleet_kernels_give_each_row_what_it_gets_alone(drift_kernels: str) -> None:
    """The merge of `goodness_of_fit` and the tail of `betabinom_sf` are computed once per distinct n (or
    (a, n)) of a fleet and spread back: every row gets, bit for bit, what it gets on its own."""
    rng = np.random.default_rng(8)
    probs = rng.dirichlet(np.ones(10))
    n = rng.choice([0, 7, 40, 600, 1500], 400)
    counts = np.array([rng.multinomial(k, probs) for k in n])
    anomalies = rng.binomial(n, rng.uniform(0.0, 0.1, len(n)))
    fleet, tails = goodness_of_fit(counts, probs, 1.3), betabinom_sf(anomalies, n, 0.6, 20.0)
    for i in range(0, len(n), 7):
        alone = goodness_of_fit(counts[i : i + 1], probs, 1.3)
        assert [part[i] for part in fleet] == [part[0] for part in alone]
        assert tails[i] == betabinom_sf(anomalies[i : i + 1], n[i : i + 1], 0.6, 20.0)[0]


def test_empty_rows_are_untested_with_p_one(drift_kernels: str) -> None:
    fit = goodness_of_fit(np.zeros((3, 4)), [0.25, 0.25, 0.25, 0.25])
    assert fit.p.tolist() == [1.0] * 3 and not fit.tested.any() and fit.chi2.tolist() == [0.0] * 3


def test_goodness_of_fit_rejects_bad_input(drift_kernels: str) -> None:
    with pytest.raises(ValueError):
        goodness_of_fit([1, 2, 3], [0.3, 0.3, 0.4])
    with pytest.raises(ValueError):
        goodness_of_fit([[1, 2]], [0.0, 0.0])
    for min_expected in (0.0, np.nan):
        with pytest.raises(ValueError):
            goodness_of_fit([[1, 2]], [0.5, 0.5], min_expected=min_expected)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 9, 10, 17, 40, 41, 99, 1000, 1001])
def test_chi_square_p_values_match_scipy_down_to_the_tiniest(df: int, drift_kernels: str) -> None:
    """p = P(chi2_df >= G / phi) from statistics near 0 to far into the tail, where scipy's chdtrc gives 0 below
    about 1e-308: the statistic is set through the dispersion, phi = G / x per row. df = 1000 is the most the
    C routine takes; 1001 runs the numpy code under either implementation."""
    rng = np.random.default_rng(df)
    probs = np.full(df + 1, 1 / (df + 1))
    counts = rng.multinomial(20 * (df + 1), probs, size=80)
    g = goodness_of_fit(counts, probs).g
    counts, g = counts[g > 0], g[g > 0]
    tail = [2.0 * df, 600.0, 1150.0, 1399.0, 1401.0, 1419.5, 1500.0, 2 * df + 700.0, 4000.0]
    x = np.concatenate([10 ** rng.uniform(-8, np.log10(5000), len(g) - len(tail)), tail])
    phi = g / x
    got = g_test_p(counts, probs, phi)
    want = special.chdtrc(df, g / phi)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert (want < 1e-200).any() and (want > 0.5).any()


@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_p_values_follow_scipy_for_any_dispersion(drift_kernels: str) -> None:
    """A dispersion of 0, below 0, NaN or infinite gives what scipy's chdtrc gives for G / phi (0 / 0 and
    negative statistics are NaN); untested rows keep p = 1. (numpy warns of those divisions.)"""
    counts = np.array([[28, 12, 10], [20, 15, 15], [0, 0, 0], [3, 1, 1], [400, 50, 50]])
    probs = np.array([0.4, 0.3, 0.3])
    for phi in (0.0, -1.0, np.nan, np.inf, 1e-300, np.array([1.0, 0.0, np.nan, -2.0, 0.5])):
        for statistic in ("g", "pearson"):
            fit = goodness_of_fit(counts, probs, phi, statistic=statistic)
            stat = fit.g if statistic == "g" else fit.chi2
            want = np.where(fit.df > 0, special.chdtrc(np.maximum(fit.df, 1), stat / phi), 1.0)
            np.testing.assert_allclose(fit.p, want, rtol=1e-9, atol=1e-300)
        np.testing.assert_array_equal(g_test_p(counts, probs, phi), goodness_of_fit(counts, probs, phi).p)


@pytest.mark.parametrize("seed", SEEDS)
def test_psi_and_js_distance_match_scipy(seed: int, drift_kernels: str) -> None:
    rng = np.random.default_rng(seed)
    counts, probs = random_counts(rng)
    got_psi, got_js = psi(counts, probs), js_distance(counts, probs)
    bins = counts.shape[1]
    e = (probs + 1e-4) / (1 + bins * 1e-4)
    for i, row in enumerate(counts):
        if row.sum() == 0:
            assert np.isnan(got_psi[i]) and np.isnan(got_js[i])
            continue
        a = (row / row.sum() + 1e-4) / (1 + bins * 1e-4)
        assert got_psi[i] == pytest.approx(stats.entropy(a, e) + stats.entropy(e, a), **TOL)
        assert got_js[i] == pytest.approx(jensenshannon(row / row.sum(), probs, base=2), **TOL)
    assert ((got_js[~np.isnan(got_js)] >= 0) & (got_js[~np.isnan(got_js)] <= 1)).all()


def test_effect_sizes_accept_a_baseline_per_row(drift_kernels: str) -> None:
    counts = np.array([[10, 30], [25, 15]])
    probs = np.array([[0.25, 0.75], [0.5, 0.5]])
    assert psi(counts, probs)[0] == pytest.approx(0.0, abs=1e-12)
    assert js_distance(counts, probs)[1] == pytest.approx(jensenshannon([25, 15], [0.5, 0.5], base=2), **TOL)


def random_parts(rng: np.random.Generator, parts: int, channels: int) -> list[np.ndarray]:
    """Raw samples of each part (samples, channels); some parts empty."""
    sizes = rng.choice([0, 1, 2, 7, 60], parts)
    return [rng.normal(rng.normal(0, 3, channels), rng.uniform(0.1, 2, channels), (k, channels)) for k in sizes]


def moments(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the firmware sends per part: n, mean and Welford's population variance (NaN when empty)."""
    empty = np.full(parts[0].shape[1], np.nan)
    n = np.array([len(x) for x in parts], dtype=float)
    mean = np.array([x.mean(axis=0) if len(x) else empty for x in parts])
    var = np.array([x.var(axis=0) if len(x) else empty for x in parts])
    return n, mean, var


@pytest.mark.parametrize("seed", SEEDS)
def test_pooling_by_group_is_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels, groups = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    parts = random_parts(rng, int(rng.integers(1, 40)), channels)
    label = rng.integers(0, groups, len(parts))
    n, mean, var = moments(parts)
    got = pool(n, mean, var, label, groups)
    for g in range(groups):
        raw = np.concatenate([parts[i] for i in np.flatnonzero(label == g)] + [np.zeros((0, channels))])
        assert got.n[g].tolist() == [len(raw)] * channels
        if len(raw) == 0:
            assert np.isnan(got.mean[g]).all() and np.isnan(got.var[g]).all()
            continue
        np.testing.assert_allclose(got.mean[g], raw.mean(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.var[g], raw.var(axis=0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_pooling_along_an_axis_is_exact_and_nests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devices, windows = int(rng.integers(1, 8)), int(rng.integers(1, 12))
    parts = random_parts(rng, devices * windows, 1)
    n, mean, var = moments(parts)
    by_device = pool_axis(n.reshape(devices, windows), mean.reshape(devices, windows), var.reshape(devices, windows))
    for d in range(devices):
        raw = np.concatenate(parts[d * windows : (d + 1) * windows])
        assert by_device.n[d] == len(raw)
        if len(raw):
            assert by_device.mean[d] == pytest.approx(raw.mean(), **TOL)
            assert by_device.var[d] == pytest.approx(raw.var(), **TOL)
    fleet = pool(by_device.n, by_device.mean, by_device.var, np.zeros(devices, dtype=int))
    direct = pool(n, mean[:, 0], var[:, 0], np.zeros(len(parts), dtype=int))
    assert fleet.n[0] == direct.n[0]
    if direct.n[0]:
        assert fleet.mean[0] == pytest.approx(direct.mean[0], **TOL)
        assert fleet.var[0] == pytest.approx(direct.var[0], **TOL)


def test_pooling_is_stable_far_from_zero() -> None:
    rng = np.random.default_rng(1)
    parts = [1e6 + rng.normal(0, 1e-3, 50) for _ in range(20)]
    got = pool_axis([50] * 20, [x.mean() for x in parts], [x.var() for x in parts])
    assert got.var == pytest.approx(np.concatenate(parts).var(), rel=1e-6)


def test_standardise_with_a_device_level() -> None:
    rng = np.random.default_rng(2)
    x, level = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    mu, sigma = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    np.testing.assert_allclose(standardise(x, mu, sigma, level), (x - level - mu) / sigma, rtol=1e-12)
    np.testing.assert_allclose(standardise(x, mu, sigma), (x - mu) / sigma, rtol=1e-12)
    x[0, 0] = np.nan
    got = standardise(x, mu, [1.0, 0.0, 1.0])
    assert np.isnan(got[0, 0]) and np.isnan(got[:, 1]).all()
    assert log_variance([0.0, np.e]).tolist() == [np.log(1e-4), 1.0]


def test_normal_p_values_match_scipy() -> None:
    z = np.random.default_rng(3).normal(0, 3, 500)
    np.testing.assert_allclose(one_sided_p(z), stats.norm.sf(z), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(two_sided_p(z), 2 * stats.norm.sf(np.abs(z)), rtol=1e-9, atol=1e-300)
    assert np.isnan(two_sided_p([np.nan])[0]) and np.isnan(one_sided_p([np.nan])[0])


def test_estimated_accuracy_is_the_calibrated_expectation_with_a_true_standard_error(drift_kernels: str) -> None:
    rng = np.random.default_rng(4)
    hist = rng.integers(0, 60, (8, 10))
    hist[0] = 0
    acc = np.linspace(0.3, 0.98, 10)
    got = estimated_accuracy(hist, acc)
    assert np.isnan(got.accuracy[0]) and np.isnan(got.se[0])
    for i in range(1, 8):
        p = np.repeat(acc, hist[i])
        assert got.accuracy[i] == pytest.approx(p.mean(), **TOL)
        assert got.se[i] == pytest.approx(np.sqrt((p * (1 - p)).sum()) / len(p), **TOL)
    right = rng.binomial(hist[1], acc, size=(20_000, 10)).sum(axis=1) / hist[1].sum()
    assert right.mean() == pytest.approx(got.accuracy[1], abs=3 * got.se[1] / np.sqrt(20_000))
    assert right.std() == pytest.approx(got.se[1], rel=0.03)


@pytest.mark.parametrize("seed", SEEDS)
def test_anomaly_tests_are_beta_binomial(seed: int, drift_kernels: str) -> None:
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 3000, 80)
    rate, c = float(rng.uniform(0.001, 0.2)), float(rng.choice([5.0, 150.0, np.inf]))
    a = rng.binomial(n, rng.beta(rate * 50, (1 - rate) * 50, len(n)))
    got_p, got_z = anomaly_p(a, n, rate, c), anomaly_z(a, n, rate, c)
    for i in range(len(n)):
        if n[i] == 0:
            assert got_p[i] == 1.0 and np.isnan(got_z[i])
            continue
        model = stats.binom(n[i], rate) if np.isinf(c) else stats.betabinom(n[i], rate * c, (1 - rate) * c)
        assert got_p[i] == pytest.approx(upper_tail(model, a[i], n[i]), rel=1e-9, abs=1e-300)
        assert got_z[i] == pytest.approx((a[i] - model.mean()) / model.std(), **TOL)
    assert anomaly_p([0, 2], [10, 10], 0.0, np.inf).tolist() == [1.0, 0.0]


def upper_tail(model: Any, a: int, n: int) -> float:
    """P(X >= a) as scipy's pmf summed over a..n, smallest first (scipy's own sf is 1 - cdf: it loses the
    far tail)."""
    return float(np.sort(model.pmf(np.arange(max(a, 0), n + 1))).sum())


@functools.cache
def beta_binomial_cases(seed: int) -> list[tuple[np.ndarray, np.ndarray, float, float, np.ndarray]]:
    """(a, n, alpha, beta, P(X >= a) by scipy's pmf) for `test_vectorised_beta_binomial_tail_matches_scipy`:
    summed once for both implementations (the pmf sums are most of the test's time)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(6):
        n = rng.integers(0, 6000, 150)
        rate, c = float(rng.uniform(0.001, 0.4)), float(rng.choice([0.5, 3.0, 40.0, 900.0]))
        alpha, beta = rate * c, (1 - rate) * c
        spread = rng.uniform(0.3, 4.0, len(n))
        a = rng.binomial(n, np.clip(rng.beta(max(alpha, 0.1), max(beta, 0.1), len(n)) * spread, 0, 1))
        a[:3] = (0, n[1] + 1, n[2])
        want = np.array([upper_tail(stats.betabinom(n[i], alpha, beta), a[i], n[i]) for i in range(len(n))])
        cases.append((a, n, alpha, beta, want))
    return cases


@pytest.mark.parametrize("seed", SEEDS)
def test_vectorised_beta_binomial_tail_matches_scipy(seed: int, drift_kernels: str) -> None:
    for a, n, alpha, beta, want in beta_binomial_cases(seed):
        got = betabinom_sf(a, n, alpha, beta)
        for i in range(len(n)):
            # beta < 1 rows with small tails are scipy's own 1 - cdf (the documented fallback): 1e-9 absolutely
            tolerance = {"rel": 1e-9, "abs": 1e-9 if beta < 1 else 1e-300}
            assert got[i] == pytest.approx(want[i], **tolerance), (a[i], n[i], alpha, beta)


def both_paths(monkeypatch: pytest.MonkeyPatch, function: Any, *args: Any) -> tuple[Any, Any]:
    """(result of the C routines, result of the numpy code) of function(*args)."""
    assert native.routines is not None, "fleetwatch.drift._kernels is not built: python3 setup.py build_ext -i"
    c = function(*args)
    with monkeypatch.context() as patch:
        patch.setattr(native, "routines", None)
        return c, function(*args)


#: How far the C routines' floats may be from the numpy code's. `python benchmarks/drift_kernels.py` prints how
#: far they are on a 100,000-device window: df, Pearson's chi2 and the accuracy estimate to the bit, G and PSI
#: to their logs' last bits, the chi-square p to scipy's rounding, and the beta-binomial tail about 1e-11 (its
#: upper tail starts from pmf(a) walked up from pmf(0), not from log-beta functions).
SAME_STATISTIC = {"rtol": 1e-12, "atol": 1e-12}
SAME_P = {"rtol": 1e-11, "atol": 1e-300}
SAME_TAIL = {"rtol": 1e-10, "atol": 1e-300}


def assert_same_counts_tests(monkeypatch: pytest.MonkeyPatch, counts: np.ndarray, probs: np.ndarray, phi: Any) -> None:
    for statistic in ("g", "pearson"):
        c, numpy_fit = both_paths(monkeypatch, goodness_of_fit, counts, probs, phi, 5.0, statistic)
        np.testing.assert_array_equal(c.df, numpy_fit.df)
        for got, want in ((c.g, numpy_fit.g), (c.chi2, numpy_fit.chi2)):
            np.testing.assert_allclose(got, want, **SAME_STATISTIC)
        np.testing.assert_allclose(c.p, numpy_fit.p, **SAME_P)
    np.testing.assert_allclose(*both_paths(monkeypatch, g_test_p, counts, probs, phi), **SAME_P)
    np.testing.assert_allclose(*both_paths(monkeypatch, psi, counts, probs), **SAME_STATISTIC)
    c, numpy_estimate = both_paths(monkeypatch, estimated_accuracy, counts, np.linspace(0.3, 0.99, len(probs)))
    np.testing.assert_allclose(c.accuracy, numpy_estimate.accuracy, **SAME_STATISTIC)
    np.testing.assert_allclose(c.se, numpy_estimate.se, **SAME_STATISTIC)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_c_routines_give_the_numpy_codes_floats(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    counts, probs = random_counts(rng)
    bins = counts.shape[1]
    edges = np.array([np.full(bins, 10.0**12), np.eye(bins)[0] * 10**9, np.zeros(bins), np.eye(bins)[-1] * 3])
    counts = np.vstack([counts, edges])
    assert_same_counts_tests(monkeypatch, counts, probs, rng.uniform(0.5, 3.0, len(counts)))
    assert_same_counts_tests(monkeypatch, counts[:0], probs, 1.0)
    assert_same_counts_tests(monkeypatch, np.asfortranarray(counts[:, ::-1]), probs[::-1], 2.0)
    for rate, c in ((0.02, 200.0), (0.01, 20.0), (0.4, 900.0), (0.2, 3.0), (0.3, 0.5)):
        n = rng.integers(0, 8000, 400)
        a = rng.binomial(n, np.clip(rng.beta(rate * c, (1 - rate) * c, len(n)) * 2, 0, 1)).astype(float)
        n = n.astype(float)
        a[:5], n[:5] = (0.5, 3.0, -1.0, 2.0, 2.5), (10.0, 7.5, 5.0, np.nan, 30.0)  # not whole numbers, no data
        np.testing.assert_allclose(*both_paths(monkeypatch, betabinom_sf, a, n, rate * c, (1 - rate) * c), **SAME_TAIL)
        np.testing.assert_allclose(*both_paths(monkeypatch, anomaly_p, a, n, rate, c), **SAME_TAIL)


ONE_IMPLEMENTATION = [HealthCheck.function_scoped_fixture]  # monkeypatch only switches the routines


@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # phi 0 and NaN on purpose
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=200, deadline=None, suppress_health_check=ONE_IMPLEMENTATION)
@given(
    counts=hnp.arrays(np.int64, st.tuples(st.integers(0, 8), st.integers(1, 12)), elements=st.integers(0, 10**12)),
    weights=st.lists(st.sampled_from([0.0, 1e-9, 0.01, 0.1, 0.3, 1.0]), min_size=12, max_size=12),
    phi=st.sampled_from([1.0, 2.5, 0.0, np.nan]),
)
def test_the_c_routines_agree_on_any_counts(
    monkeypatch: pytest.MonkeyPatch, counts: np.ndarray, weights: list[float], phi: float
) -> None:
    probs = np.array(weights[: counts.shape[1]])
    probs = probs if probs.sum() > 0 else np.ones(counts.shape[1])
    assert_same_counts_tests(monkeypatch, counts, probs, phi)


def test_a_large_call_split_over_two_threads_gives_each_row_what_small_calls_give() -> None:
    """The C routines split calls of 16,384 rows or more over two threads (rows are independent): the same
    floats as the same rows in calls too small to split."""
    assert native.routines is not None, "the C routines are not built: python3 setup.py build_ext -i"
    rng = np.random.default_rng(11)
    rows, chunk = 40_000, 5_000
    probs = rng.dirichlet(np.ones(10))
    n = rng.integers(0, 3000, rows)
    counts = rng.multinomial(n, probs)
    anomalies = rng.binomial(n, 0.03)
    phi = rng.uniform(0.8, 2.0, rows)

    def chunked(fn: Any, *arrays: np.ndarray) -> Any:
        parts = [fn(*(a[i : i + chunk] for a in arrays)) for i in range(0, rows, chunk)]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)
        return type(parts[0])(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    whole, split = goodness_of_fit(counts, probs, phi), chunked(lambda c, f: goodness_of_fit(c, probs, f), counts, phi)
    for got, expected in zip(whole, split, strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(psi(counts, probs), chunked(lambda c: psi(c, probs), counts))
    np.testing.assert_array_equal(
        betabinom_sf(anomalies, n, 0.6, 20.0), chunked(lambda a, m: betabinom_sf(a, m, 0.6, 20.0), anomalies, n)
    )
    tables, index = [np.zeros((3, rows + 7)) for _ in range(2)], rng.permutation(rows + 7)[:rows]
    z = rng.normal(0.3, 1.5, rows)
    whole_step = cusum_update(tables[:1], index, z[None], 1.0, 6.0)
    for i in range(0, rows, chunk):
        part = cusum_update(tables[1:], index[i : i + chunk], z[None, i : i + chunk], 1.0, 6.0)
        np.testing.assert_array_equal(whole_step.statistic[0, i : i + chunk], part.statistic[0])
        np.testing.assert_array_equal(whole_step.run[0, i : i + chunk], part.run[0])
    np.testing.assert_array_equal(tables[0], tables[1])


def test_the_c_routines_refuse_malformed_calls() -> None:
    routines = native.routines
    assert routines is not None, "fleetwatch.drift._kernels is not built: python3 setup.py build_ext -i"
    f64, i64 = np.empty(2), np.empty(2, dtype=np.int64)
    fit_args = (np.zeros(8), 4, np.full(4, 0.25), np.ones(1), 5.0, False, f64, f64, i64, f64)
    routines.goodness_of_fit(*fit_args)  # well formed: 2 rows of 4 bins
    for position, bad in (
        (0, np.zeros(7)),
        (2, np.full(3, 0.25)),
        (3, np.ones(3)),
        (4, 0.0),
        (8, np.empty(3, np.int64)),
    ):
        with pytest.raises(ValueError):
            routines.goodness_of_fit(*fit_args[:position], bad, *fit_args[position + 1 :])
    with pytest.raises(ValueError):  # the p-value of chi2 needs chi2
        routines.goodness_of_fit(*fit_args[:5], True, np.empty(0), *fit_args[7:])
    bins = routines.MAX_BINS + 1
    with pytest.raises(ValueError):
        routines.goodness_of_fit(
            np.zeros(bins),
            bins,
            np.full(bins, 1 / bins),
            np.ones(1),
            5.0,
            False,
            *(np.empty(1),) * 2,
            np.empty(1, np.int64),
            np.empty(1),
        )
    with pytest.raises(ValueError):
        routines.psi(np.zeros(8), 4, np.full(3, 0.25), 1e-4, f64)
    with pytest.raises(ValueError):
        routines.accuracy(np.zeros(8), 4, np.full(4, 0.5), f64, np.empty(3))
    with pytest.raises(ValueError):
        routines.betabinom_sf(np.ones(2), np.ones(2), 0.0, 1.0, np.zeros(3), f64)
    with pytest.raises(ValueError):
        routines.betabinom_sf(np.ones(2), np.ones(3), 1.0, 1.0, np.zeros(3), f64)


def test_poisson_tail_matches_scipy() -> None:
    rng = np.random.default_rng(6)
    count, expected = rng.integers(0, 15, 300), rng.uniform(0, 6, 300)
    np.testing.assert_allclose(poisson_p(count, expected), stats.poisson.sf(count - 1, expected), rtol=1e-9)


def test_docstring_examples(drift_kernels: str) -> None:
    assert doctest.testmod(kernels, raise_on_error=False).failed == 0
