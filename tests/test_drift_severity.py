"""Severity: significance after multiple-testing control AND a minimum effect."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from fleetwatch.drift import severity as module
from fleetwatch.drift.severity import CRITICAL, NONE, WARNING, SeverityThresholds, severity


def test_both_significance_and_effect_are_needed() -> None:
    rng = np.random.default_rng(0)
    q, effect = rng.uniform(0, 0.05, (40, 30)), rng.normal(0, 0.3, (40, 30))
    limits = SeverityThresholds(q_max=0.02, min_effect=0.1, critical_effect=0.3)
    got = severity(q, effect, limits)
    assert got.dtype == np.int8 and got.shape == q.shape
    for code, qi, ei in zip(got.ravel(), q.ravel(), effect.ravel(), strict=True):
        expected = NONE if qi > 0.02 or abs(ei) < 0.1 else CRITICAL if abs(ei) >= 0.3 else WARNING
        assert code == expected


def test_no_test_is_no_alert() -> None:
    assert severity([np.nan, 0.0, 0.0], [1.0, np.nan, 1.0]).tolist() == [NONE, NONE, CRITICAL]


def test_defaults_are_the_documented_psi_bands() -> None:
    assert SeverityThresholds() == SeverityThresholds(q_max=0.01, min_effect=0.1, critical_effect=0.25)


@pytest.mark.parametrize("kwargs", [{"q_max": 0.0}, {"q_max": 1.5}, {"min_effect": 0.3, "critical_effect": 0.2}])
def test_inconsistent_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SeverityThresholds(**kwargs)


def test_docstring_examples() -> None:
    assert doctest.testmod(module, raise_on_error=False).failed == 0
