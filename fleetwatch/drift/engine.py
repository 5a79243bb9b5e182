"""The drift engine: one window of the whole fleet in, findings out, device -> cohort -> fleet. Pure.

`evaluate(window, baselines, cohorts, state, settings, at)` takes the telemetry of one window (columns as
`Store.read_frames` returns them; at most one row per device), the baselines by model_id, the cohort
membership, and the state carried from the previous window (CUSUM sums, open findings). It returns the
findings and the new state. No I/O, no clock: `at` is the end of the evaluated window.

Signals and how each is decided (docs/drift.md says why):

| signal | per device | control |
|---|---|---|
| `input_mean_<c>` | z = (window mean - own profile) / sigma_within (*); two-sided CUSUM | ARL0 budget (*) |
| `input_var_<c>` | z = (log window variance - baseline) / sd; two-sided CUSUM | ARL0 budget |
| `confidence` | G-test of the confidence histogram vs baseline, / dispersion; PSI | BH q across devices |
| `class_prior` | G-test of class counts vs baseline priors, / dispersion; PSI | BH q across devices |
| `anomaly_rate` | quasi-binomial z, one-sided up | BH q across devices |
| `accuracy` | label-free estimated accuracy vs baseline, one-sided down | BH q across devices |
| `latency_p95` | z vs baseline, one-sided up | BH q across devices |
| `memory` | z vs baseline, one-sided up | BH q across devices |

(*) sigma_within widened by the fitted profile's harmonic error, and h raised for its level's error
(`Baseline.score_scale`, `score_bias_var`; docs/drift.md). The input_var scores are measured from the
fleet's reference, whose error is negligible: their h is `device_h(0)`.

A device finding needs significance (a CUSUM alarm, or q <= q_max) AND an effect at least the signal's
minimum; for the snapshot tests (all but the input signals) in two consecutive windows, because real
faults persist and the heavy tails of field counts produce single-window excursions.

Cohorts (inventory tags, fw_version, model_id) and the fleet get two kinds of evidence: the
Stouffer combination of their devices' window scores (a CUSUM on it for the input signals, with a
false-alarm budget per cohort of its own, `cohort_arl0_windows`; BH across cohorts for the others), which
pools shifts no single device can show, and the number of devices in alarm against a binomial bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import special

from fleetwatch.baselines.model import Baseline
from fleetwatch.drift.multitest import bh_qvalues, binomial_tail
from fleetwatch.drift.sequential import CusumState, cusum_step, threshold
from fleetwatch.drift.stats import (
    anomaly_p,
    estimated_accuracy,
    goodness_of_fit,
    one_sided_p,
    psi,
    two_sided_p,
)
from fleetwatch.findings import Finding
from fleetwatch.keyindex import contains, positions

CHANNELS = 3


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds; defaults and the reasons for them are in docs/drift.md."""

    q_max: float = 0.01
    arl0_windows: float = 24_000.0
    cusum_delta: float = 1.0
    min_inferences: int = 30
    min_effect: Mapping[str, float] = field(
        default_factory=lambda: {
            "input_mean": 0.5,
            "input_var": 0.3,
            "confidence": 0.2,
            "class_prior": 0.2,
            "anomaly_rate": 0.02,
            "accuracy": 0.05,
            "latency_p95": 0.5,
            "memory": 10.0,
        }
    )
    cohort_min_effect: float = 0.25
    critical_factor: float = 3.0

    #: The budget is per device over all signals: each of the six sequential signals gets 1/12 of it, the
    #: snapshot tests (BH-controlled, with minimum effects) use what is left.
    sequential_share: float = 1 / 12

    #: A cohort's own budget (expected windows between its false alarms, all signals; hourly: one per
    #: cohort-year), shared among its signals as the device budget is.
    cohort_arl0_windows: float = 8_760.0
    #: The cohort CUSUM runs on the Stouffer Z and is tuned to 2 units of Z a window.
    cohort_delta: float = 2.0
    #: An input-signal cohort finding needs a mean device z over the CUSUM's run of at least this: a tenth of
    #: the cohort's devices moved by the device minimum (input_mean 0.5).
    cohort_min_shift: float = 0.05

    @property
    def h(self) -> float:
        """CUSUM threshold for a device whose level is known exactly: `device_h(0)`."""
        return self.device_h(0.0)

    def device_h(self, bias_var: float) -> float:
        """CUSUM threshold: one sequential signal's share of the per-device false-alarm budget, averaged
        over devices whose scores carry a persistent N(0, bias_var) bias (`Baseline.score_bias_var`)."""
        return _threshold(self.arl0_windows / self.sequential_share, self.cusum_delta, bias_var)

    def cohort_h(self, bias_var: float) -> float:
        """The cohort CUSUM's threshold: one sequential signal's share of the cohort budget. A cohort's Z
        carries the sum of its m devices' biases over sqrt(m), of the same variance bias_var
        (`Baseline.score_error_var`: its runs are shorter than a day, so the harmonic's error counts too)."""
        return _threshold(self.cohort_arl0_windows / self.sequential_share, self.cohort_delta, bias_var)


@lru_cache(maxsize=64)
def _threshold(arl0: float, delta: float, bias_var: float) -> float:
    return threshold(arl0, delta, bias_var)


SEQUENTIAL = tuple(f"input_mean_{c}" for c in range(CHANNELS)) + tuple(f"input_var_{c}" for c in range(CHANNELS))


@dataclass(frozen=True, eq=False)
class SumTable:
    """The CUSUM sums of one signal: keys (device ids or cohort names) sorted, beside rows of (upper,
    lower, run). Keys whose sums are back at (0, 0) are left out."""

    keys: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Rows (upper, lower, run) for `keys`, zeros for keys not in the table."""
        index, found = positions(self.keys, keys)
        out = np.zeros((len(found), 3))
        out[found] = self.rows[index[found]]
        return out

    def put(self, keys: np.ndarray, rows: np.ndarray) -> SumTable:
        """A table with `keys` set to `rows` (at most one row per key)."""
        keys = np.asarray(keys, dtype=str)
        kept = ~contains(keys, self.keys)
        moving = (rows[:, 0] != 0) | (rows[:, 1] != 0)
        all_keys = np.concatenate([self.keys[kept], keys[moving]])
        order = np.argsort(all_keys, kind="stable")
        return SumTable(all_keys[order], np.concatenate([self.rows[kept], rows[moving]])[order])

    def to_json(self) -> dict[str, list]:
        return {"keys": self.keys.tolist(), "rows": self.rows.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> SumTable:
        # state files written before the columnar form hold {key: [upper, lower, run]}
        if "keys" not in data or "rows" not in data:
            data = {"keys": list(data), "rows": list(data.values())}
        return cls().put(np.array(data["keys"], dtype=str), np.array(data["rows"], dtype=float).reshape(-1, 3))


@dataclass(frozen=True)
class EngineState:
    """Carried from window to window: CUSUM sums by signal, the open findings, and the (signal, device)
    pairs whose snapshot test was significant in the last window ("hot")."""

    cusum: Mapping[str, SumTable] = field(default_factory=dict)
    open: frozenset[tuple[str, str, str]] = frozenset()
    hot: frozenset[tuple[str, str]] = frozenset()

    def sums(self, signal: str, keys: np.ndarray) -> CusumState:
        rows = self.cusum.get(signal, SumTable()).get(keys)
        return CusumState(rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int64))

    def with_sums(self, signal: str, keys: np.ndarray, state: CusumState) -> EngineState:
        rows = np.column_stack([state.upper, state.lower, state.run.astype(float)])
        return replace(self, cusum={**self.cusum, signal: self.cusum.get(signal, SumTable()).put(keys, rows)})

    def open_keys(self, scope: str, signal: str) -> np.ndarray:
        """The keys of `scope` with an open finding of `signal`."""
        return np.array([k for s, k, g in self.open if s == scope and g == signal], dtype=str)

    def hot_devices(self, signal: str) -> np.ndarray:
        return np.array([d for g, d in self.hot if g == signal], dtype=str)

    def to_json(self) -> dict:
        return {
            "cusum": {s: t.to_json() for s, t in self.cusum.items()},
            "open": sorted(list(x) for x in self.open),
            "hot": sorted(list(x) for x in self.hot),
        }

    @classmethod
    def from_json(cls, data: dict) -> EngineState:
        cusum = {s: SumTable.from_json(t) for s, t in data["cusum"].items()}
        return cls(cusum, frozenset(tuple(x) for x in data["open"]), frozenset(tuple(x) for x in data.get("hot", [])))


@dataclass(frozen=True)
class Scores:
    """Per device and signal, for one window: z (signed evidence), p, effect, effect name."""

    z: dict[str, np.ndarray]
    p: dict[str, np.ndarray]
    effect: dict[str, np.ndarray]
    effect_name: dict[str, str]


def device_scores(window: Mapping[str, np.ndarray], baseline: Baseline, settings: DriftSettings, at: int) -> Scores:
    """Every signal's score for every device of one window against one baseline (vectorised)."""
    n = np.asarray(window["inference_count"], dtype=float)
    active = n >= settings.min_inferences
    z: dict[str, np.ndarray] = {}
    p: dict[str, np.ndarray] = {}
    effect: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    levels, known = baseline.levels_for(window["device"], at - baseline.window_s / 2)
    for c, channel in enumerate(baseline.channels[:CHANNELS]):
        sd = np.where(known, channel.sigma_within * baseline.score_scale, channel.window_mean.sd)
        zc = (np.asarray(window[f"input_mean_{c}"], dtype=float) - levels[:, c]) / sd
        z[f"input_mean_{c}"] = np.where(n > 0, zc, np.nan)
        effect[f"input_mean_{c}"], names[f"input_mean_{c}"] = z[f"input_mean_{c}"], "sigma"
        log_var = np.log(np.maximum(np.asarray(window[f"input_var_{c}"], dtype=float), 1e-4))
        zv = (log_var - channel.log_var.mean) / channel.log_var.sd
        z[f"input_var_{c}"] = np.where(n > 0, zv, np.nan)
        effect[f"input_var_{c}"] = np.where(n > 0, log_var - channel.log_var.mean, np.nan)
        names[f"input_var_{c}"] = "log_ratio"
    for signal, prefix, bins, probs, dispersion in (
        ("confidence", "conf_hist_", 10, baseline.confidence, baseline.confidence_dispersion),
        ("class_prior", "class_counts_", len(baseline.class_priors), baseline.class_priors, baseline.class_dispersion),
    ):
        counts = np.stack([np.asarray(window[f"{prefix}{b}"], dtype=float) for b in range(bins)], axis=1)
        _, _, _, pv = goodness_of_fit(counts, np.array(probs), dispersion)
        p[signal] = np.where(active, pv, np.nan)
        effect[signal], names[signal] = np.where(active, psi(counts, np.array(probs)), np.nan), "psi"
        z[signal] = np.where(active, -special.ndtri(np.clip(p[signal], 1e-300, 1)), np.nan)
        if signal == "confidence":
            accuracy, se = estimated_accuracy(counts, baseline.accuracy_map())
            expected = float(np.dot(baseline.confidence, baseline.accuracy_map()))
            drop = (expected - accuracy) / np.maximum(se * np.sqrt(dispersion), 1e-9)
            z["accuracy"] = np.where(active, drop, np.nan)
            p["accuracy"] = np.where(active, one_sided_p(drop), np.nan)
            effect["accuracy"], names["accuracy"] = np.where(active, expected - accuracy, np.nan), "accuracy_drop"
    pa = anomaly_p(window["anomaly_count"], n, baseline.anomaly_rate, baseline.anomaly_concentration)
    p["anomaly_rate"] = np.where(active, pa, np.nan)
    z["anomaly_rate"] = np.where(active, -special.ndtri(np.clip(pa, 1e-300, 1)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.asarray(window["anomaly_count"], dtype=float) / n
    effect["anomaly_rate"], names["anomaly_rate"] = (
        np.where(active, rate - baseline.anomaly_rate, np.nan),
        "rate_increase",
    )
    for signal, column, gauss, relative in (
        ("latency_p95", "latency_p95_ms", baseline.latency_p95_ms, True),
        ("memory", "mem_peak_pct", baseline.mem_peak_pct, False),
    ):
        if gauss is None or gauss.sd <= 0:
            continue
        values = np.asarray(window[column], dtype=float)
        zl = (
            (np.log(np.maximum(values, 1e-3)) - gauss.mean) / gauss.sd if relative else (values - gauss.mean) / gauss.sd
        )
        mask = active if signal == "latency_p95" else np.ones(len(values), dtype=bool)
        z[signal] = np.where(mask, zl, np.nan)
        p[signal] = np.where(mask, one_sided_p(zl), np.nan)
        delta = np.exp(np.log(np.maximum(values, 1e-3)) - gauss.mean) - 1 if relative else values - gauss.mean
        effect[signal], names[signal] = np.where(mask, delta, np.nan), "relative_increase" if relative else "points"
    for signal in SEQUENTIAL:
        p[signal] = two_sided_p(z[signal])
    return Scores(z, p, effect, names)


def _severity(significant: np.ndarray, effect: np.ndarray, minimum: float, factor: float) -> np.ndarray:
    size = np.abs(np.nan_to_num(effect))
    out = np.where(significant & (size >= minimum), "warning", "ok").astype(object)
    out[significant & (size >= minimum * factor)] = "critical"
    return out


def evaluate(
    window: Mapping[str, np.ndarray],
    baselines: Mapping[int, Baseline],
    cohorts: Mapping[str, np.ndarray],
    state: EngineState,
    settings: DriftSettings,
    at: int,
    window_s: int,
) -> tuple[list[Finding], EngineState]:
    """Evaluate one window. `cohorts[name]` is a boolean mask over the window's rows."""
    devices = np.asarray(window["device"], dtype=object).astype(str)
    model_ids = np.asarray(window["model_id"]).astype(str)
    findings: list[Finding] = []
    alarms = np.zeros(len(devices), dtype=bool)
    stouffer_z: dict[str, np.ndarray] = {}
    hot_now: set[tuple[str, str]] = set()
    for model in sorted(set(model_ids.tolist())):
        baseline = baselines.get(int(model))
        if baseline is None:
            continue
        rows = model_ids == model
        thresholds = {"input_mean": settings.device_h(baseline.score_bias_var), "input_var": settings.device_h(0.0)}
        sub = {k: np.asarray(v)[rows] for k, v in window.items()}
        scores = device_scores(sub, baseline, settings, at)
        for signal in scores.z:
            full = stouffer_z.setdefault(signal, np.full(len(devices), np.nan))
            full[rows] = scores.z[signal]
        for signal, zs in scores.z.items():
            base = signal.rsplit("_", 1)[0] if signal in SEQUENTIAL else signal
            minimum = settings.min_effect.get(base, 0.0)
            if signal in SEQUENTIAL:
                step = cusum_step(state.sums(signal, devices[rows]), zs, settings.cusum_delta, thresholds[base])
                state = state.with_sums(signal, devices[rows], step.state)
                significant = step.alarm
                effect = step.run_mean if base == "input_mean" else np.where(step.alarm, scores.effect[signal], 0.0)
                statistic = step.statistic
                p = two_sided_p(step.run_mean * np.sqrt(np.maximum(step.state.run + step.alarm * 1, 1)))
                q = bh_qvalues(np.where(np.isnan(zs), np.nan, p))
            else:
                p = scores.p[signal]
                q = bh_qvalues(p)
                effect, statistic = scores.effect[signal], zs
                now = (np.nan_to_num(q, nan=1.0) <= settings.q_max) & (np.abs(np.nan_to_num(effect)) >= minimum)
                before = contains(state.hot_devices(signal), devices[rows])
                hot_now |= {(signal, d) for d in devices[rows][now].tolist()}
                significant = now & before
            severity = _severity(significant, effect, minimum, settings.critical_factor)
            alarms[np.flatnonzero(rows)[severity != "ok"]] = True
            findings += _device_findings(
                devices[rows],
                signal,
                severity,
                statistic,
                p,
                q,
                effect,
                scores.effect_name[signal],
                baseline.version,
                at,
                window_s,
                int(model),
                state,
            )
    used = [baselines[int(m)].score_error_var for m in set(model_ids.tolist()) if int(m) in baselines]
    group_findings, state = _group_findings(
        cohorts, devices, stouffer_z, alarms, state, settings, max(used, default=0.0), at, window_s
    )
    findings += group_findings
    evaluated = {f.identity for f in findings}
    still_open = {i for i in state.open if i not in evaluated}
    open_now = frozenset(still_open | {f.identity for f in findings if f.severity != "ok"})
    return findings, replace(state, open=open_now, hot=frozenset(hot_now))


def _device_findings(
    devices: np.ndarray,
    signal: str,
    severity: np.ndarray,
    statistic: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    effect: np.ndarray,
    effect_name: str,
    version: str,
    at: int,
    window_s: int,
    model_id: int,
    state: EngineState,
) -> list[Finding]:
    """Findings for devices that alarm, and "ok" for devices whose open finding cleared."""
    out = []
    for i in np.flatnonzero((severity != "ok") | contains(state.open_keys("device", signal), devices)):
        out.append(
            Finding(
                scope="device",
                key=str(devices[i]),
                signal=signal,
                statistic=_num(statistic[i]),
                p=_num(p[i], 1.0),
                q=_num(q[i], 1.0),
                effect=_num(effect[i]),
                effect_name=effect_name,
                severity=str(severity[i]),
                baseline_version=version,
                window_start=at - window_s,
                window_end=at,
                model_id=model_id,
            )
        )
    return out


def _stouffer(cohorts: Mapping[str, np.ndarray], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cohort keys, Stouffer Z = sum z / sqrt(m) over the cohort's devices with a score)."""
    keys = np.array(list(cohorts), dtype=object)
    if not len(keys):
        return keys, np.zeros(0)
    masks = np.stack([cohorts[k] for k in keys.tolist()])
    valid = np.isfinite(z)
    m = (masks & valid).sum(axis=1)
    total = masks.astype(float) @ np.where(valid, z, 0.0)
    return keys, np.where(m > 0, total / np.sqrt(np.maximum(m, 1)), np.nan)


def _group_findings(
    cohorts: Mapping[str, np.ndarray],
    devices: np.ndarray,
    z: Mapping[str, np.ndarray],
    alarms: np.ndarray,
    state: EngineState,
    settings: DriftSettings,
    error_var: float,
    at: int,
    window_s: int,
) -> tuple[list[Finding], EngineState]:
    """Cohort and fleet findings: pooled (Stouffer) evidence per signal (a CUSUM for the input signals, its
    threshold for the fitted profiles' error `error_var` in the input-mean scores) and device alarms vs
    binomial."""
    keys = np.array(list(cohorts), dtype=object)
    if not len(keys):
        return [], state
    was_open = state.open
    masks = np.stack([cohorts[k] for k in keys.tolist()])
    out: list[Finding] = []
    for signal, zs in z.items():
        _, combined = _stouffer(cohorts, zs)
        m = (masks & np.isfinite(zs)).sum(axis=1)
        mean_z = np.where(m > 0, combined / np.sqrt(np.maximum(m, 1)), np.nan)
        if signal in SEQUENTIAL:
            h = settings.cohort_h(error_var if signal.startswith("input_mean") else 0.0)
            step = cusum_step(state.sums(signal, keys), combined, settings.cohort_delta, h)
            state = state.with_sums(signal, keys, step.state)
            p = two_sided_p(combined)
            significant, statistic, minimum = step.alarm, step.statistic, settings.cohort_min_shift
            effect = np.where(m > 0, step.run_mean / np.sqrt(np.maximum(m, 1)), np.nan)
        else:
            p = one_sided_p(combined)
            significant, statistic = np.nan_to_num(bh_qvalues(p), nan=1.0) <= settings.q_max, combined
            effect, minimum = mean_z, settings.cohort_min_effect
        q = bh_qvalues(p)
        severity = _severity(significant, effect, minimum, settings.critical_factor)
        out += _scoped(keys, signal, severity, statistic, p, q, effect, "mean_z", at, window_s, was_open)
    alpha = 1.0 / settings.arl0_windows + settings.q_max / max(len(devices), 1)
    x = (masks & alarms).sum(axis=1)
    total = masks.sum(axis=1)
    p = binomial_tail(x, total, min(alpha, 1.0))
    q = bh_qvalues(p)
    share = np.where(total > 0, x / np.maximum(total, 1), 0.0)
    severity = _severity(q <= settings.q_max, share, 0.05, 4.0)
    out += _scoped(
        keys, "device_alarms", severity, x.astype(float), p, q, share, "share_of_devices", at, window_s, was_open
    )
    return out, state


def _scoped(
    keys: np.ndarray,
    signal: str,
    severity: np.ndarray,
    statistic: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    effect: np.ndarray,
    effect_name: str,
    at: int,
    window_s: int,
    was_open: frozenset[tuple[str, str, str]],
) -> list[Finding]:
    out = []
    for i, key in enumerate(keys.tolist()):
        scope = "fleet" if key == "fleet" else "cohort"
        if severity[i] == "ok" and (scope, key, signal) not in was_open:
            continue
        out.append(
            Finding(
                scope=scope,
                key=key,
                signal=signal,
                statistic=_num(statistic[i]),
                p=_num(p[i], 1.0),
                q=_num(q[i], 1.0),
                effect=_num(effect[i]),
                effect_name=effect_name,
                severity=str(severity[i]),
                baseline_version="",
                window_start=at - window_s,
                window_end=at,
            )
        )
    return out


def _num(value: float, default: float = 0.0) -> float:
    return default if value is None or not np.isfinite(value) else float(value)
