"""The canary judge: its statistics against scipy and brute force, and its verdicts on simulated rollouts.

Simulated rollouts come from `fleetwatch.simulate.rollouts` (shared with `benchmarks/judge_power.py`,
which measures the rates these tests only bound): one fleet holds many independent rollouts (each
`PER_ARM` canary and `PER_ARM` control devices), judged at `LOOKS` hourly looks over a 6 h bake.
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from fleetwatch.actions.judge import (
    MIDPOINTS,
    Look,
    device_table,
    hodges_lehmann,
    judge,
    judge_frames,
    mann_whitney,
    median_interval,
    spent_alpha,
)
from fleetwatch.actions.rollout_config import JudgeConfig
from fleetwatch.baselines.model import Baseline
from fleetwatch.drift.multitest import holm
from fleetwatch.drift.stats import psi
from fleetwatch.simulate import ModelProfile
from fleetwatch.simulate import rollouts as rollouts_module
from fleetwatch.simulate.rollouts import LOOKS, PER_ARM, WORSE_CANARIES, judge_rollouts, simulate_rollouts

CONFIG = JudgeConfig()


# -- kernels against references --------------------------------------------------------------------------
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_mann_whitney_matches_scipy_with_and_without_ties(alternative: str) -> None:
    rng = np.random.default_rng(3)
    for decimals in (None, 1, 0):
        x = rng.normal(0.3, 1, (40, 17))
        y = rng.normal(0.0, 1, (40, 23))
        if decimals is not None:
            x, y = np.round(x, decimals), np.round(y, decimals)
        ours = mann_whitney(x, y)
        ref = stats.mannwhitneyu(x, y, axis=-1, method="asymptotic", use_continuity=True, alternative=alternative)
        np.testing.assert_allclose(ours.u, ref.statistic, rtol=0, atol=1e-9)
        p = ours.p_greater if alternative == "greater" else ours.p_less
        np.testing.assert_allclose(p, ref.pvalue, rtol=1e-10, atol=1e-12)


def test_mann_whitney_all_tied_is_no_evidence() -> None:
    mw = mann_whitney(np.zeros(5), np.zeros(7))
    assert float(mw.p_greater) == 1.0 and float(mw.p_less) == 1.0


def test_hodges_lehmann_is_the_median_of_pairwise_differences() -> None:
    rng = np.random.default_rng(4)
    for n1, n2 in [(2, 3), (7, 7), (15, 9), (20, 31)]:
        x, y = rng.normal(1, 2, (25, n1)), np.round(rng.exponential(1, (25, n2)), 1)
        estimate, low, high = hodges_lehmann(x, y, 0.9)
        brute = [np.median([a - b for a, b in itertools.product(xi, yi)]) for xi, yi in zip(x, y, strict=True)]
        np.testing.assert_allclose(estimate, brute, rtol=0, atol=1e-12)
        assert np.all(low <= estimate) and np.all(estimate <= high)


def test_hodges_lehmann_interval_inverts_the_mann_whitney_test() -> None:
    """Lower end of the (1 - 2a) interval > delta exactly when the one-sided test of shift <= delta rejects
    at a (continuous data: no ties)."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(0.5, 1, (300, 15)), rng.normal(0, 1, (300, 18))
    _, low, high = hodges_lehmann(x, y, 0.9)
    for delta in (0.0, 0.3, 0.6, 1.0):
        assert np.array_equal(mann_whitney(x - delta, y).p_greater <= 0.05, low > delta)
        assert np.array_equal(mann_whitney(x - delta, y).p_less <= 0.05, high < delta)


def _holm_reference(p: np.ndarray) -> np.ndarray:
    """Holm by its definition: adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = np.empty(m)
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def test_holm_matches_its_definition() -> None:
    rng = np.random.default_rng(6)
    for _ in range(200):
        p = rng.uniform(0, 0.2, rng.integers(1, 9)) ** rng.uniform(0.5, 3)
        np.testing.assert_allclose(holm(p), _holm_reference(p), rtol=0, atol=1e-15)


def test_alpha_spending_functions() -> None:
    for spending in ("pocock", "obrien_fleming"):
        spent = [spent_alpha(0.05, t, spending) for t in np.linspace(0, 1, 41)]
        assert spent[0] == 0 and spent[-1] == 0.05 and np.all(np.diff(spent) >= 0) and np.all(np.diff(spent[4:]) > 0)
        assert spent_alpha(0.05, 1.7, spending) == 0.05
    # Lan-DeMets O'Brien-Fleming at t = 1/2, alpha = 0.05: 2 - 2 Phi(1.95996 / sqrt(0.5)) = 0.005575
    assert spent_alpha(0.05, 0.5, "obrien_fleming") == pytest.approx(0.005575, abs=2e-6)
    assert spent_alpha(0.05, 0.5, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 2))
    # Pocock spends early, O'Brien-Fleming late
    assert spent_alpha(0.05, 1 / 6, "pocock") > 100 * spent_alpha(0.05, 1 / 6, "obrien_fleming")


# -- device values ---------------------------------------------------------------------------------------
def _windows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Store columns from a few hand-written windows (unlisted fields zero)."""
    names = ["time", "device", "fw_version", "model_id", "inference_count", "anomaly_count", "latency_p95_ms"]
    names += ["mem_peak_pct", "flags", *(f"conf_hist_{b}" for b in range(10))]
    return {
        n: np.array([r.get(n, 0) for r in rows], dtype=object if n in ("device", "fw_version", "model_id") else float)
        for n in names
    }


def test_device_table_values_and_expected_reboots() -> None:
    hist = {"conf_hist_9": 80, "conf_hist_5": 20}
    base = {"fw_version": "1.0.0", "model_id": "7", "inference_count": 100, "latency_p95_ms": 10.0, **hist}
    rows = [
        {
            **base,
            "device": "a",
            "time": 0,
            "anomaly_count": 3,
            "mem_peak_pct": 50,
            "flags": 8,
        },  # first window: expected
        {**base, "device": "a", "time": 3600, "anomaly_count": 1, "mem_peak_pct": 60, "flags": 8},  # unexpected
        {**base, "device": "a", "time": 7200, "fw_version": "1.1.0", "latency_p95_ms": 40.0, "flags": 8},  # update
        {**base, "device": "b", "time": 0, "inference_count": 0, "conf_hist_9": 0, "conf_hist_5": 0},  # idle
    ]
    table = device_table(_windows(rows), reference=np.array([0, 0, 0, 0, 0, 0.2, 0, 0, 0, 0.8]))
    assert table.devices.tolist() == ["a", "b"]
    assert table.windows.tolist() == [3, 1]
    assert table.reboots.tolist() == [1, 0]
    assert table.values["reboot_rate"][0] == pytest.approx(1 / 3)
    assert table.values["anomaly_rate"][0] == pytest.approx(math.log(4.5 / 301))
    assert table.values["latency_p95"][0] == pytest.approx(math.log(10 * 10 * 40) / 3)
    # calibration = bin midpoints: (80 * 0.95 + 20 * 0.55) / 100, negated (lower accuracy is worse)
    assert table.values["accuracy"][0] == pytest.approx(-0.87)
    assert table.values["confidence_psi"][0] == pytest.approx(0.0, abs=1e-9)
    assert table.values["memory"][0] == pytest.approx(110 / 3)
    assert table.memory_max.tolist() == [60, 0]
    assert all(math.isnan(table.values[m][1]) for m in ("anomaly_rate", "latency_p95", "accuracy", "confidence_psi"))
    assert MIDPOINTS[9] == pytest.approx(0.95)


# -- calibration maps and reference from the models' baselines ------------------------------------------
def _baseline(model_id: int, calibration: tuple[float, ...] | None, confidence: tuple[float, ...]) -> Baseline:
    """A baseline with only what the judge reads: the calibration map and the confidence proportions."""
    return Baseline(
        model_id=model_id,
        version=f"model-{model_id}-v1",
        source="training",
        fitted_at=0,
        time_range=None,
        window_s=3600,
        channels=(),
        confidence=confidence,
        confidence_edges=tuple(np.linspace(0, 1, 11).tolist()),
        class_priors=(),
        calibration=calibration,
        anomaly_rate=0.01,
        anomaly_dispersion=1.0,
        anomaly_concentration=0.0,
        latency_p95_ms=None,
        mem_peak_pct=None,
        reboot_rate=None,
        windows=0,
        devices=0,
    )


def _model_arms() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Ten canary devices on model 8 and ten control devices on model 7, identical telemetry: device i has
    70 + i inferences in confidence bin 9 and 30 - i in bin 5 (one window each)."""
    arms = []
    for model, prefix in (("8", "c"), ("7", "k")):
        rows = [
            {
                "device": f"{prefix}{i}",
                "fw_version": "1.0.0",
                "model_id": model,
                "inference_count": 100,
                "latency_p95_ms": 10.0,
                "conf_hist_9": 70 + i,
                "conf_hist_5": 30 - i,
            }
            for i in range(10)
        ]
        arms.append(_windows(rows))
    return arms[0], arms[1]


#: Model 8 is overconfident: right 60% of the time at confidence 0.9-1, 50% at 0.5-0.6.
OVERCONFIDENT = (*MIDPOINTS[:5], 0.5, *MIDPOINTS[6:9], 0.6)


def test_each_arm_is_estimated_with_its_own_models_calibration_map() -> None:
    canary, control = _model_arms()
    baselines = {8: _baseline(8, OVERCONFIDENT, (0.1,) * 10), 7: _baseline(7, None, (0.1,) * 10)}
    verdict = judge_frames(canary, control, CONFIG, Look(1.0), baselines=baselines)
    accuracy = next(m for m in verdict.metrics if m.metric == "accuracy")
    # canary device i: ((70 + i) 0.6 + (30 - i) 0.5) / 100 = (57 + 0.1 i) / 100, median over i = 0..9: 0.5745
    # control (model 7 has no fitted map: midpoints): ((70 + i) 0.95 + (30 - i) 0.55) / 100 = (83 + 0.4 i) / 100
    assert accuracy.canary_median == pytest.approx(0.5745)
    assert accuracy.control_median == pytest.approx(0.848)
    # Hodges-Lehmann: median over i, j of (-26 + 0.1 i - 0.4 j) / 100, symmetric around i = j = 4.5
    assert accuracy.estimate == pytest.approx(-0.2735)
    assert accuracy.status == "worse" and verdict.verdict == "rollback"
    assert verdict.sources == {
        "canary calibration": "model-8-v1 (fitted calibration)",
        "control calibration": "model-7-v1 (unfitted: bin midpoints)",
        "confidence reference": "model-7-v1 confidence proportions",
    }
    # the reference is model 7's baseline proportions (uniform), not control's pooled histogram
    control_hist = np.stack([control["conf_hist_9"], control["conf_hist_5"]], axis=1)
    expected_psi = psi(np.pad(control_hist, ((0, 0), (0, 8))), np.full(10, 0.1))
    psi_evidence = next(m for m in verdict.metrics if m.metric == "confidence_psi")
    assert psi_evidence.control_median == pytest.approx(float(np.median(expected_psi)))

    # without baselines both arms get the midpoints: identical devices, no accuracy difference
    plain = judge_frames(canary, control, CONFIG, Look(1.0))
    plain_accuracy = next(m for m in plain.metrics if m.metric == "accuracy")
    assert plain_accuracy.canary_median == pytest.approx(0.848) and plain_accuracy.estimate == pytest.approx(0.0)
    assert plain.verdict != "rollback"
    assert plain.sources["confidence reference"] == "control pooled histogram"


def test_a_model_without_a_baseline_falls_back_to_the_midpoints_and_says_so() -> None:
    canary, control = _model_arms()
    verdict = judge_frames(canary, control, CONFIG, Look(1.0), baselines={7: _baseline(7, OVERCONFIDENT, (0.1,) * 10)})
    accuracy = next(m for m in verdict.metrics if m.metric == "accuracy")
    assert accuracy.canary_median == pytest.approx(0.848)  # midpoints: (83 + 0.4 * 4.5) / 100
    assert accuracy.control_median == pytest.approx(0.5745)  # model 7's fitted map
    assert "canary model 8 has no baseline: its accuracy is estimated with the bin midpoints" in verdict.reasons
    assert verdict.sources["canary calibration"] == "bin midpoints (model 8 has no baseline)"
    assert verdict.to_json()["sources"]["control calibration"] == "model-7-v1 (fitted calibration)"


# -- simulated rollouts ----------------------------------------------------------------------------------
def test_rollouts_module_examples() -> None:
    assert doctest.testmod(rollouts_module, raise_on_error=False).failed == 0


def _run_rollouts(profile: ModelProfile, n_rollouts: int, seed: int) -> tuple[list[int | None], int]:
    """(look at which each rollout was rolled back, None if never; how many were promoted at the end)."""
    outcomes = judge_rollouts(simulate_rollouts(profile, n_rollouts, seed), CONFIG)
    return [o.rolled_back_at for o in outcomes], sum(o.verdict.verdict == "promote" for o in outcomes)


@pytest.mark.parametrize("scenario", list(WORSE_CANARIES))
def test_a_worse_canary_is_rolled_back_within_two_looks(scenario: str) -> None:
    looks, promoted = _run_rollouts(WORSE_CANARIES[scenario], n_rollouts=40, seed=11)
    caught = [k for k in looks if k is not None]
    print(f"{scenario}: {len(caught)}/40 rolled back, median look {np.median(caught)}, worst look {max(caught)}")
    assert len(caught) == 40 and max(caught) <= 2 and promoted == 0


def test_accuracy_scenario_is_ten_points() -> None:
    rollouts = simulate_rollouts(WORSE_CANARIES["accuracy -10 points"], n_rollouts=5, seed=12)
    canary, control = (rollouts.frames(rollouts.arms[:, arm].ravel(), LOOKS) for arm in (0, 1))
    accuracy = next(m for m in judge_frames(canary, control, CONFIG, Look(1.0)).metrics if m.metric == "accuracy")
    assert -0.12 < accuracy.estimate < -0.08 and accuracy.status == "worse" and accuracy.limit == pytest.approx(-0.02)


def test_equal_canaries_false_rollback_rate_over_200_rollouts() -> None:
    looks, promoted = _run_rollouts(ModelProfile(), n_rollouts=200, seed=13)
    false_rollbacks = sum(k is not None for k in looks)
    print(
        f"equal canary, {PER_ARM} vs {PER_ARM} devices, {LOOKS} looks: false rollback rate "
        f"{false_rollbacks / 200:.1%} ({false_rollbacks}/200), promoted at the end of the bake {promoted / 200:.0%}"
    )
    assert false_rollbacks / 200 <= 0.02
    assert promoted / 200 >= 0.3


def test_a_canary_at_the_margin_is_rarely_promoted() -> None:
    """Non-inferiority at the margin: promotion is the error the intersection-union test bounds by alpha."""
    looks, promoted = _run_rollouts(ModelProfile(latency_factor=CONFIG.latency_p95_ratio), n_rollouts=100, seed=14)
    print(f"latency exactly at the margin: promoted {promoted}/100, rolled back {sum(k is not None for k in looks)}")
    assert promoted <= 10


# -- verdict rules ---------------------------------------------------------------------------------------
def _arms(n_rollouts: int, profile: ModelProfile, seed: int, per: int) -> tuple[dict, dict]:
    rollouts = simulate_rollouts(profile, n_rollouts, seed)
    return tuple(rollouts.frames(arm[:per], LOOKS) for arm in rollouts.arms[0])


def test_no_promotion_before_the_end_of_the_bake_or_without_enough_devices() -> None:
    canary, control = _arms(1, ModelProfile(), seed=15, per=PER_ARM)
    assert judge_frames(canary, control, CONFIG, Look(5 / 6, 4 / 6)).verdict == "continue"
    few_canary, few_control = _arms(1, ModelProfile(), seed=15, per=5)
    verdict = judge_frames(few_canary, few_control, CONFIG, Look(1.0, 5 / 6))
    assert verdict.verdict == "continue"
    assert any("need 8" in r for r in verdict.reasons)


def test_no_windows_is_no_evidence() -> None:
    canary, _ = _arms(1, ModelProfile(), seed=15, per=PER_ARM)
    empty = {name: values[:0] for name, values in canary.items()}
    verdict = judge_frames(canary, empty, CONFIG, Look(1.0, 5 / 6))
    assert verdict.verdict == "continue" and verdict.n_control == 0
    assert {m.status for m in verdict.metrics} == {"no_data"}


def test_after_the_bake_only_guardrails_roll_back() -> None:
    canary, control = _arms(1, ModelProfile(latency_factor=1.5), seed=16, per=PER_ARM)
    assert judge_frames(canary, control, CONFIG, Look(1.0, 5 / 6)).verdict == "rollback"
    after = judge_frames(canary, control, CONFIG, Look(1.0, 1.0))
    assert after.alpha_look == 0 and after.verdict == "continue"
    hot_canary, hot_control = _arms(1, ModelProfile(memory_delta=38.0), seed=16, per=PER_ARM)
    hot = judge_frames(hot_canary, hot_control, CONFIG, Look(1.0, 1.0))
    assert hot.verdict == "rollback" and hot.reasons[0].startswith("guardrail memory_ceiling")


def test_reboots_guardrail_counts_only_unexpected_reboots() -> None:
    canary, control = _arms(1, ModelProfile(), seed=17, per=PER_ARM)
    flags = canary["flags"].astype(np.int64)
    assert (flags[::LOOKS] & 8).all()  # every canary device rebooted into the update in window 0
    quiet = judge_frames(canary, control, CONFIG, Look(1 / 6))
    assert not any(g.tripped for g in quiet.guardrails)
    crashing = dict(canary, flags=flags | 8)  # and then again in every window
    verdict = judge_frames(crashing, control, CONFIG, Look(1 / 6))
    assert verdict.verdict == "rollback" and verdict.reasons[0].startswith("guardrail reboots")


def test_verdict_json_contract() -> None:
    canary, control = _arms(1, ModelProfile(anomaly_factor=3.0), seed=18, per=PER_ARM)
    tables = [device_table(a, reference=np.full(10, 0.1)) for a in (canary, control)]
    out = judge(tables[0], tables[1], CONFIG, Look(0.5, 1 / 3)).to_json()
    assert out["verdict"] == "rollback"
    assert [m["metric"] for m in out["metrics"]] == [
        "anomaly_rate",
        "latency_p95",
        "accuracy",
        "confidence_psi",
        "memory",
        "reboot_rate",
    ]
    anomaly = out["metrics"][0]
    assert anomaly["status"] == "worse" and anomaly["scale"] == "ratio" and 2.0 < anomaly["estimate"] < 4.5
    assert anomaly["p_worse_holm"] <= out["alpha_look"] < 0.05
    assert {"guardrails", "reasons", "info", "info_before", "n_canary", "n_control"} <= set(out)


def test_median_interval_is_the_sign_test_interval() -> None:
    """The order statistics c and n + 1 - c where the exact binomial tails are still within the level; at
    least the nominal coverage for normal samples; unbounded when n is too small for the level."""
    for n in (10, 25, 60):
        x = np.arange(1.0, n + 1)
        _, low, high = median_interval(x, 0.9)
        c = int(low)
        assert high == n + 1 - c and stats.binom.cdf(c - 1, n, 0.5) <= 0.05 + 0.01
    rng = np.random.default_rng(4)
    covered = [lo <= 0 <= hi for _, lo, hi in (median_interval(rng.normal(0, 1, 25), 0.9) for _ in range(2000))]
    assert np.mean(covered) >= 0.89
    assert median_interval(np.array([1.0, 2.0, 3.0]), 0.9)[1:] == (-math.inf, math.inf)
    assert all(math.isnan(v) for v in median_interval(np.array([]), 0.9))
