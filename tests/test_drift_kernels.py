"""Every drift kernel against scipy (or a plain reference) on random inputs, to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from fleetwatch.drift.multitest import bh_qvalues, binomial_tail, holm
from fleetwatch.drift.stats import (
    _merge_groups,
    anomaly_p,
    estimated_accuracy,
    goodness_of_fit,
    js_distance,
    pool,
    psi,
)

SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_goodness_of_fit_matches_scipy_after_the_same_merge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(3, 12))
    probs = rng.dirichlet(np.ones(bins) * 0.7)
    n = rng.integers(0, 2000, 60)
    counts = np.array([rng.multinomial(k, probs) for k in n])
    chi2, g, df, p = goodness_of_fit(counts, probs, dispersion=1.0)
    klass = np.floor(np.log2(np.maximum(n, 1)))
    for i in range(len(n)):
        if n[i] == 0:
            assert np.isnan(p[i])
            continue
        labels = _merge_groups(probs, float(n[(klass == klass[i]) & (n > 0)].min()), 5.0)
        merged = np.bincount(labels, weights=counts[i])
        expected = np.bincount(labels, weights=probs) * n[i]
        assert (expected >= 5 - 1e-9).all() or len(merged) == 1
        ref_chi2 = stats.chisquare(merged, expected).statistic
        ref_g = stats.power_divergence(merged, expected, lambda_="log-likelihood")
        assert chi2[i] == pytest.approx(ref_chi2, rel=1e-9, abs=1e-9)
        assert g[i] == pytest.approx(ref_g.statistic, rel=1e-9, abs=1e-9)
        assert df[i] == len(merged) - 1
        if df[i] > 0:
            assert p[i] == pytest.approx(ref_g.pvalue, rel=1e-9, abs=1e-12)


def test_dispersion_scales_the_statistic() -> None:
    counts = np.array([[30, 50, 20]])
    _, g, df, p = goodness_of_fit(counts, np.array([0.4, 0.4, 0.2]), dispersion=2.5)
    assert p[0] == pytest.approx(stats.chi2.sf(g[0] / 2.5, df[0]), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_js_distance_and_psi(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10))
    counts = rng.multinomial(500, rng.dirichlet(np.ones(10)), size=20)
    js = js_distance(counts, probs)
    for i in range(20):
        assert js[i] == pytest.approx(jensenshannon(counts[i] / counts[i].sum(), probs, base=2), abs=1e-9)
    eps = 1e-4
    a = (counts / counts.sum(axis=1, keepdims=True) + eps) / (1 + 10 * eps)
    e = (probs + eps) / (1 + 10 * eps)
    assert np.allclose(psi(counts, probs), ((a - e) * np.log(a / e)).sum(axis=1), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_pooling_is_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(rng.normal(), rng.uniform(0.5, 2), int(rng.integers(1, 50))) for _ in range(30)]
    groups = rng.integers(0, 4, 30)
    n = np.array([len(x) for x in parts])
    mean = np.array([x.mean() for x in parts])
    var = np.array([x.var() for x in parts])
    total, pm, pv = pool(n, mean, var, groups, 4)
    for g in range(4):
        raw = np.concatenate([parts[i] for i in np.flatnonzero(groups == g)] or [np.array([])])
        if len(raw) == 0:
            assert total[g] == 0 and np.isnan(pm[g])
            continue
        assert total[g] == len(raw)
        assert pm[g] == pytest.approx(raw.mean(), rel=1e-9, abs=1e-12)
        assert pv[g] == pytest.approx(raw.var(), rel=1e-9, abs=1e-12)


def test_estimated_accuracy_is_the_calibrated_expectation() -> None:
    rng = np.random.default_rng(3)
    hist = rng.integers(0, 100, (5, 10))
    acc = np.linspace(0.05, 0.95, 10)
    mean, se = estimated_accuracy(hist, acc)
    for i in range(5):
        p = np.repeat(acc, hist[i])
        assert mean[i] == pytest.approx(p.mean(), rel=1e-12)
        assert se[i] == pytest.approx(np.sqrt((p * (1 - p)).sum()) / len(p), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_anomaly_tail_is_beta_binomial(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 1000, 50)
    a = rng.binomial(n, 0.05)
    got = anomaly_p(a, n, 0.03, 150.0)
    ref = [stats.betabinom.sf(a[i] - 1, n[i], 0.03 * 150, 0.97 * 150) for i in range(50)]
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-15)
    assert np.allclose(anomaly_p(a, n, 0.03, float("inf")), stats.binom.sf(a - 1, n, 0.03), rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_bh_matches_scipy_and_ignores_nan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, (4, 200)) ** 3
    p[:, ::17] = np.nan
    q = bh_qvalues(p, axis=1)
    for row in range(4):
        valid = ~np.isnan(p[row])
        assert np.allclose(q[row, valid], stats.false_discovery_control(p[row, valid]), atol=1e-12)
        assert np.isnan(q[row, ~valid]).all()
    assert np.allclose(bh_qvalues(p.T, axis=0).T, q, equal_nan=True)


def test_holm_against_a_reference() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = rng.uniform(0, 0.2, int(rng.integers(1, 8)))
        order = np.argsort(p)
        ref = np.empty_like(p)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (len(p) - rank) * p[i]))
            ref[i] = running
        assert np.allclose(holm(p), ref, atol=1e-15)


def test_binomial_tail_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    m = rng.integers(1, 500, 100)
    x = rng.integers(0, 30, 100)
    alpha = rng.uniform(1e-5, 0.2, 100)
    assert np.allclose(binomial_tail(x, m, alpha), stats.binom.sf(x - 1, m, alpha), rtol=1e-9, atol=1e-300)
