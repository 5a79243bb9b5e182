"""Multiple-testing control and cohort evidence against scipy and plain reference implementations."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import stats

from fleetwatch.drift import multitest
from fleetwatch.drift.multitest import FalseDiscovery, bh_qvalues, binomial_tail, holm, stouffer

SEEDS = range(10)


def random_p(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """p-values with a mix of nulls and signals, ties, and NaNs (untested devices)."""
    p = rng.uniform(0, 1, shape) ** rng.choice([1.0, 4.0], shape)
    p[rng.uniform(size=shape) < 0.05] = 0.01
    p[rng.uniform(size=shape) < 0.1] = np.nan
    return p


def reference_holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down for one family, NaNs left out, as a textbook loop."""
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_bh_matches_scipy_along_any_axis(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(k) for k in rng.integers(1, 30, 3))
    p = random_p(rng, shape)
    axis = int(rng.integers(0, 3))
    q = bh_qvalues(p, axis=axis)
    assert q.shape == p.shape
    families = np.moveaxis(p, axis, -1).reshape(-1, shape[axis])
    got = np.moveaxis(q, axis, -1).reshape(-1, shape[axis])
    for family, qs in zip(families, got, strict=True):
        valid = ~np.isnan(family)
        assert np.isnan(qs[~valid]).all()
        if valid.any():
            np.testing.assert_allclose(qs[valid], stats.false_discovery_control(family[valid]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_false_discovery_gives_bh_qvalues_and_rejections_without_the_order_of_the_tests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = random_p(rng, (int(rng.integers(1, 3000)),))
    q = bh_qvalues(p)
    bh = FalseDiscovery(p)
    valid = ~np.isnan(p)
    assert np.isnan(bh.q(p)[~valid]).all()
    if valid.any():
        np.testing.assert_allclose(bh.q(p)[valid], stats.false_discovery_control(p[valid]), rtol=1e-9, atol=1e-12)
    some = rng.choice(len(p), size=min(len(p), 20), replace=False)
    assert np.array_equal(bh.q(p[some]), q[some], equal_nan=True)
    for level in (0.0, 0.01, 0.05, float(np.nanmedian(q)) if (~np.isnan(q)).any() else 0.5, 0.999):
        assert np.array_equal(bh.rejects(level), np.nan_to_num(q, nan=1.0) <= level)
    assert not FalseDiscovery(np.full(4, np.nan)).rejects(0.5).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_holm_matches_a_reference_along_any_axis(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = random_p(rng, (int(rng.integers(1, 12)), int(rng.integers(1, 12))))
    for axis in (0, 1):
        got = holm(p, axis=axis)
        for j in range(p.shape[1 - axis]):
            family = p[:, j] if axis == 0 else p[j]
            mine = got[:, j] if axis == 0 else got[j]
            np.testing.assert_allclose(mine, reference_holm(family), rtol=1e-12, atol=1e-15, equal_nan=True)


def test_holm_and_bh_on_edge_shapes() -> None:
    assert bh_qvalues(np.zeros(0)).shape == (0,)
    assert np.isnan(holm(np.full(3, np.nan))).all() and np.isnan(bh_qvalues(np.full(3, np.nan))).all()
    assert float(bh_qvalues(0.2)) == 0.2 and float(holm(0.2)) == 0.2
    assert holm([0.4, 0.4]).tolist() == [0.8, 0.8] and bh_qvalues([0.4, 0.4]).tolist() == [0.4, 0.4]


def test_binomial_bound_matches_scipy_over_cohorts() -> None:
    rng = np.random.default_rng(9)
    m = rng.integers(0, 5000, 400)
    x = np.minimum(rng.poisson(rng.uniform(0, 40, 400)), m + rng.integers(0, 2, 400))
    alpha = rng.choice([1e-6, 1e-4, 1 / 24_000, 0.01, 0.2], 400)
    np.testing.assert_allclose(binomial_tail(x, m, alpha), stats.binom.sf(x - 1, m, alpha), rtol=1e-9, atol=1e-300)
    assert binomial_tail(0, 0, 0.1) == 1.0 and binomial_tail(1, 0, 0.1) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_stouffer_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devices, cohorts = int(rng.integers(1, 200)), int(rng.integers(1, 6))
    z = rng.normal(rng.choice([0.0, 0.5]), 1, devices)
    z[rng.uniform(size=devices) < 0.1] = np.nan
    members = rng.uniform(size=(cohorts, devices)) < rng.uniform(0.05, 1.0, (cohorts, 1))
    out = stouffer(z, members)
    for c in range(cohorts):
        scores = z[members[c] & ~np.isnan(z)]
        assert out.m[c] == len(scores)
        if not len(scores):
            assert np.isnan(out.z[c]) and np.isnan(out.mean_z[c])
            continue
        ref = stats.combine_pvalues(stats.norm.sf(scores), method="stouffer")
        assert out.z[c] == pytest.approx(ref.statistic, rel=1e-9, abs=1e-9)
        assert stats.norm.sf(out.z[c]) == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
        assert out.mean_z[c] == pytest.approx(scores.mean(), rel=1e-9, abs=1e-12)
        assert out.se[c] == pytest.approx(1 / np.sqrt(len(scores)), rel=1e-12)


def test_stouffer_scores_of_several_signals_at_once() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 4))
    members = rng.uniform(size=(3, 50)) < 0.5
    out = stouffer(z, members)
    for s in range(4):
        np.testing.assert_allclose(out.z[:, s], stouffer(z[:, s], members).z, rtol=1e-12)


def test_stouffer_with_correlated_devices_stays_standard_normal() -> None:
    """Devices sharing an environment: z_i = sqrt(rho) u + sqrt(1 - rho) e_i. Plain Stouffer's Z then has
    variance 1 + (m - 1) rho (here 5.95); with rho it is N(0, 1)."""
    rng = np.random.default_rng(2)
    rho, m, repeats = 0.05, 100, 20_000
    z = np.sqrt(rho) * rng.standard_normal((1, repeats)) + np.sqrt(1 - rho) * rng.standard_normal((m, repeats))
    members = np.ones((1, m), dtype=bool)
    plain, corrected = stouffer(z, members), stouffer(z, members, rho=rho)
    assert plain.z.var() == pytest.approx(1 + (m - 1) * rho, rel=0.05)
    assert corrected.z.var() == pytest.approx(1.0, rel=0.05) and abs(corrected.z.mean()) < 0.03


def test_docstring_examples() -> None:
    assert doctest.testmod(multitest, raise_on_error=False).failed == 0
