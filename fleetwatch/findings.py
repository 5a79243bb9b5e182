"""Findings: what the drift engine concludes, and what the alerting side acts on.

A finding is one (scope, key, signal) evaluated over one window against one baseline. It carries the
evidence an ops team needs to trust it: the test statistic, the p-value, the q-value after multiple-testing
control, the effect size and the baseline it was compared with.

>>> f = Finding(scope="device", key="dev-00042", signal="input_mean_0", statistic=5.1, p=3e-7, q=2e-4,
...             effect=1.3, effect_name="z", severity="critical", baseline_version="m3268308804-v1",
...             window_start=1_795_000_000, window_end=1_795_003_600, model_id=3268308804)
>>> f.identity
('device', 'dev-00042', 'input_mean_0')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Scope = Literal["device", "cohort", "fleet"]
Severity = Literal["ok", "warning", "critical"]

SEVERITY_RANK: dict[str, int] = {"ok": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Finding:
    """One evaluated signal. `severity` "ok" means evaluated and clear (used to resolve open alerts)."""

    scope: Scope
    key: str
    signal: str
    statistic: float
    p: float
    q: float
    effect: float
    effect_name: str
    severity: Severity
    baseline_version: str
    window_start: int
    window_end: int
    model_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What dedupe keys on: one open alert per (scope, key, signal)."""
        return (self.scope, self.key, self.signal)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(**data)
