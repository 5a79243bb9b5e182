"""Severity of a test result: significant after multiple-testing control AND an effect big enough to matter.

Significance alone is not enough: a device that runs 5,000 inferences a window makes a G-test detect a
shift nobody would act on. An effect size alone is not enough either: a device that ran 40 inferences
shows large PSI values by chance. So a result is

- `CRITICAL` (2) when q <= q_max and |effect| >= critical_effect,
- `WARNING` (1) when q <= q_max and |effect| >= min_effect,
- `NONE` (0) otherwise, including a NaN q or effect (no test).

The default thresholds are for PSI, the effect of the count tests. Effects in other units (sd of a
level, a rate increase, an accuracy drop) need thresholds of their own.

>>> severity([0.001, 0.001, 0.001, 0.2, np.nan], [0.05, 0.15, 0.4, 0.4, 0.4]).tolist()
[0, 1, 2, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

NONE, WARNING, CRITICAL = 0, 1, 2


@dataclass(frozen=True)
class SeverityThresholds:
    """When a result becomes a warning or critical.

    - `q_max` = 0.01: a BH q-value cap, so at most about 1 in 100 alerts raised on a check is a false
      discovery; ops staff stop reading a channel where more are.
    - `min_effect` = 0.1 and `critical_effect` = 0.25: the PSI bands in common use since credit scoring
      (below 0.1 no material shift, 0.1 to 0.25 a moderate shift worth a look, above 0.25 a major shift
      that calls for action such as retraining).
    """

    q_max: float = 0.01
    min_effect: float = 0.1
    critical_effect: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.q_max <= 1:
            raise ValueError("q_max must be in (0, 1]")
        if not 0 <= self.min_effect <= self.critical_effect:
            raise ValueError("thresholds must satisfy 0 <= min_effect <= critical_effect")


def severity(q: ArrayLike, effect: ArrayLike, thresholds: SeverityThresholds | None = None) -> np.ndarray:
    """Severity codes (int8: 0 none, 1 warning, 2 critical) of results with q-values `q` and effects."""
    limits = thresholds or SeverityThresholds()
    q = np.asarray(q, dtype=float)
    size = np.abs(np.asarray(effect, dtype=float))
    significant = q <= limits.q_max
    codes = np.where(significant & (size >= limits.min_effect), WARNING, NONE)
    return np.where(significant & (size >= limits.critical_effect), CRITICAL, codes).astype(np.int8)
