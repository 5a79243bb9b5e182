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
false-alarm budget per cohort of its own, `cohort_arl0_windows`; for the others a p-value within their share
of that budget, `cohort_alpha`), which
pools shifts no single device can show, and the number of devices in alarm against a binomial bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

import numpy as np
from scipy import special

from fleetwatch.baselines.model import Baseline
from fleetwatch.drift.multitest import FalseDiscovery, bh_qvalues, binomial_tail
from fleetwatch.drift.sequential import CusumState, CusumUpdate, cusum_update, threshold
from fleetwatch.drift.stats import (
    anomaly_p,
    estimated_accuracy,
    g_test_p,
    one_sided_p,
    psi,
    two_sided_p,
)
from fleetwatch.findings import Finding
from fleetwatch.keyindex import KeyIndex, as_keys, as_rows

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

    @property
    def cohort_alpha(self) -> float:
        """The p-value a cohort's snapshot signal must reach in a window: the share of the cohort budget each
        sequential signal gets too (`sequential_share` / `cohort_arl0_windows`), so that the six snapshot
        and six sequential signals of a cohort together keep one false alarm per `cohort_arl0_windows`."""
        return self.sequential_share / self.cohort_arl0_windows

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
    """The CUSUM sums of every signal and stream (device ids, or cohort names): the streams numbered by one
    `KeyIndex` that all signals share, and per signal a (3, streams) array: upper, lower and run of every
    stream in that order (a window's devices are then a run of each row, copied as one block). A stream
    a signal has not set is at rest: (0, 0, 0)."""

    keys: KeyIndex = field(default_factory=KeyIndex)
    rows: Mapping[str, np.ndarray] = field(default_factory=dict)

    def get(self, signal: str, keys: np.ndarray) -> CusumState:
        """The sums of `signal` for `keys` (at rest for keys not in the table)."""
        index, found = self.keys.positions(keys)
        return self.at(signal, index, found)

    def at(self, signal: str, index: np.ndarray, found: np.ndarray | None = None) -> CusumState:
        """The sums of `signal` at rows `index` of `keys` (at rest where not `found`)."""
        if signal not in self.rows:
            return CusumState.zeros(len(index))
        values = np.array(self.rows[signal][:, as_rows(index)])
        if found is not None:
            values[:, ~found] = 0
        return CusumState(values[0], values[1], values[2].astype(np.int64))

    def with_keys(self, keys: np.ndarray) -> SumTable:
        """The table with `keys` among its streams (at rest where they are new)."""
        grown, rows, _ = _grown(self.keys, self.rows, keys)
        return self if grown is self.keys else SumTable(grown, rows)

    def put(self, signal: str, keys: np.ndarray, state: CusumState) -> SumTable:
        """A table with `signal` set to `state` for `keys` (at most one stream per key)."""
        grown = self.with_keys(keys)
        return grown.put_at(signal, grown.keys.positions(keys)[0], state)

    def put_at(self, signal: str, index: np.ndarray, state: CusumState) -> SumTable:
        """A table with `signal` set to `state` at rows `index` of `keys`; a stream at rest, (0, 0, run),
        is kept as (0, 0, 0)."""
        table = self.rows[signal].copy() if signal in self.rows else _at_rest(len(self.keys))
        moving = (state.upper != 0) | (state.lower != 0)
        table[:, as_rows(index)] = state.upper, state.lower, state.run * moving
        return SumTable(self.keys, {**self.rows, signal: table})

    def to_json(self) -> dict[str, dict[str, list]]:
        """Per signal, the streams not at rest: {signal: {"keys": [...], "rows": [[upper, lower, run]]}}."""
        out = {}
        for signal, table in self.rows.items():
            moving = (table[0] != 0) | (table[1] != 0)
            out[signal] = {"keys": self.keys.keys[moving].tolist(), "rows": table[:, moving].T.tolist()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, dict], keep: Callable[[str], bool] | None = None) -> SumTable:
        """The table `to_json` wrote; with `keep`, only the streams whose key it accepts."""
        table = cls()
        for signal, part in data.items():
            if not {"keys", "rows"} <= part.keys():  # written before the columnar form: {key: [upper, lower, run]}
                part = {"keys": list(part), "rows": list(part.values())}
            keys, rows = part["keys"], part["rows"]
            if keep is not None:
                kept = [i for i, key in enumerate(keys) if keep(key)]
                keys, rows = [keys[i] for i in kept], [rows[i] for i in kept]
            rows = np.array(rows, dtype=float).reshape(-1, 3)
            sums = CusumState(rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int64))
            table = table.put(signal, np.array(keys, dtype=str), sums)
        return table


class _Sums:
    """The CUSUM sums one `evaluate` call works on: the state's table, each signal's rows copied once and
    then updated in place (the caller's state is not changed), streams added as they come, several signals
    read and written at once. `table()` is the new state's."""

    def __init__(self, table: SumTable) -> None:
        self.keys = table.keys
        self.rows = {signal: rows.copy() for signal, rows in table.rows.items()}

    def index(self, keys: np.ndarray) -> np.ndarray:
        """The rows of `keys` (streams at rest added for the new ones)."""
        self.keys, self.rows, index = _grown(self.keys, self.rows, keys)
        return index

    def step(
        self, signals: Sequence[str], index: np.ndarray, z: np.ndarray, delta: float, h: np.ndarray
    ) -> CusumUpdate:
        """Feed the scores `z`, shaped (signals, rows), to the sums of `signals` at rows `index`, in place
        (`cusum_update`); the step's outcome."""
        tables = [self.rows.setdefault(signal, _at_rest(len(self.keys))) for signal in signals]
        return cusum_update(tables, index, z, delta, h)

    def table(self) -> SumTable:
        return SumTable(self.keys, self.rows)


def _at_rest(streams: int) -> np.ndarray:
    return np.zeros((3, streams))


def _grown(
    keys: KeyIndex, rows: Mapping[str, np.ndarray], queries: np.ndarray
) -> tuple[KeyIndex, dict[str, np.ndarray], np.ndarray]:
    """(`keys` with the queries among them, `rows` padded with streams at rest to match, the queries' rows)."""
    grown, index = keys.extended(queries)
    if grown is keys:
        return keys, dict(rows), index
    pad = _at_rest(len(grown) - len(keys))
    return grown, {signal: np.concatenate([table, pad], axis=1) for signal, table in rows.items()}, index


@dataclass(frozen=True)
class EngineState:
    """Carried from window to window: the devices' CUSUM sums by signal, the open findings, the (signal,
    device) pairs whose snapshot test was significant in the last window ("hot"), and the cohorts' CUSUM
    sums (a table of their own: a device may have a cohort's name, `fleet` say)."""

    cusum: SumTable = field(default_factory=SumTable)
    open: frozenset[tuple[str, str, str]] = frozenset()
    hot: frozenset[tuple[str, str]] = frozenset()
    cohort_cusum: SumTable = field(default_factory=SumTable)

    def sums(self, signal: str, keys: np.ndarray) -> CusumState:
        return self.cusum.get(signal, keys)

    def with_sums(self, signal: str, keys: np.ndarray, state: CusumState) -> EngineState:
        return replace(self, cusum=self.cusum.put(signal, keys, state))

    def open_keys(self, scope: str, signal: str) -> np.ndarray:
        """The keys of `scope` with an open finding of `signal`."""
        return np.array(self._grouped[0].get((scope, signal), []), dtype=str)

    def hot_devices(self, signal: str) -> np.ndarray:
        return np.array(self._grouped[1].get(signal, []), dtype=str)

    @cached_property
    def _grouped(self) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[str]]]:
        """(the open findings' keys by (scope, signal), the hot devices by signal): grouped once, asked for
        every signal."""
        open_by: dict[tuple[str, str], list[str]] = {}
        for scope, key, signal in self.open:
            open_by.setdefault((scope, signal), []).append(key)
        hot_by: dict[str, list[str]] = {}
        for signal, device in self.hot:
            hot_by.setdefault(signal, []).append(device)
        return open_by, hot_by

    def to_json(self) -> dict:
        return {
            "cusum": self.cusum.to_json(),
            "open": sorted(list(x) for x in self.open),
            "hot": sorted(list(x) for x in self.hot),
            "cohort_cusum": self.cohort_cusum.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> EngineState:
        if "cohort_cusum" in data:
            cohorts = SumTable.from_json(data["cohort_cusum"])
        else:  # written when the cohorts' sums were among the devices': `fleet` and the `tag=value` names
            cohorts = SumTable.from_json(data["cusum"], keep=lambda key: key == "fleet" or "=" in key)
        return cls(
            SumTable.from_json(data["cusum"]),
            frozenset(tuple(x) for x in data["open"]),
            frozenset(tuple(x) for x in data.get("hot", [])),
            cohorts,
        )


@dataclass(frozen=True)
class Scores:
    """Per device and signal, for one window: z (signed evidence), p (the snapshot signals: a sequential
    signal's p comes from its CUSUM), effect, effect name."""

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
        pv = g_test_p(counts, np.array(probs), dispersion)
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
    return Scores(z, p, effect, names)


#: Severity labels by level: 0 nothing to report, 1 significant and big enough, 2 `critical_factor` times that.
SEVERITIES = ("ok", "warning", "critical")


def _severity(significant: np.ndarray, effect: np.ndarray, minimum: float, factor: float) -> np.ndarray:
    """The severity level (into `SEVERITIES`) of every stream: numbers, so that a whole fleet's is compared
    and counted without 100,000 string comparisons; only the reported streams get their label."""
    levels = _big_enough(significant, effect, minimum).astype(np.intp)
    levels[_big_enough(significant, effect, minimum * factor)] = 2
    return levels


def _big_enough(significant: np.ndarray, effect: np.ndarray, minimum: float) -> np.ndarray:
    """significant & |effect| >= minimum (a NaN effect counts as 0), looked at only where significant: few."""
    rows = np.flatnonzero(significant)
    out = np.zeros(len(significant), dtype=bool)
    out[rows[np.abs(np.nan_to_num(effect[rows])) >= minimum]] = True
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
    devices = as_keys(window["device"])
    model_ids = as_keys(window["model_id"])
    models = sorted(set(model_ids.tolist()))
    findings: list[Finding] = []
    alarms = np.zeros(len(devices), dtype=bool)
    stouffer_z: dict[str, np.ndarray] = {}
    hot_now: set[tuple[str, str]] = set()
    sums = _Sums(state.cusum)
    for model in models:
        baseline = baselines.get(int(model))
        if baseline is None:
            continue
        if len(models) == 1:
            rows, sub = slice(None), window
        else:
            rows = model_ids == model
            sub = {k: np.asarray(v)[rows] for k, v in window.items()}
        keys = devices[rows]
        # one look-up of the devices for every signal: rows `index` of the CUSUM sums' streams
        index = sums.index(keys)
        scores = device_scores(sub, baseline, settings, at)
        for signal, zs in scores.z.items():
            if len(models) == 1:
                stouffer_z[signal] = zs
            else:
                stouffer_z.setdefault(signal, np.full(len(devices), np.nan))[rows] = zs
        # the six input signals' CUSUMs updated as one (signals, devices) array
        sequential = [signal for signal in scores.z if signal in SEQUENTIAL]
        thresholds = {"input_mean": settings.device_h(baseline.score_bias_var), "input_var": settings.device_h(0.0)}
        h = np.array([[thresholds[_base(signal)]] for signal in sequential])
        z = np.stack([scores.z[signal] for signal in sequential])
        step = sums.step(sequential, index, z, settings.cusum_delta, h)
        for signal, zs in scores.z.items():
            minimum = settings.min_effect.get(_base(signal), 0.0)
            if signal in SEQUENTIAL:
                j = sequential.index(signal)
                significant, statistic, run_mean = step.alarm[j], step.statistic[j], step.run_mean[j]
                effect = np.where(significant, scores.effect[signal], 0.0) if _base(signal) == "input_var" else run_mean
                bh = None  # the CUSUM's p-values only matter to the streams reported: made when there are some
            else:
                bh = FalseDiscovery(scores.p[signal])
                effect, statistic = scores.effect[signal], zs
                now = _big_enough(bh.rejects(settings.q_max), effect, minimum)
                before = _among(sums.keys, index, state.hot_devices(signal))
                hot_now |= {(signal, d) for d in keys[now].tolist()}
                significant = now & before
            severity = _severity(significant, effect, minimum, settings.critical_factor)
            flagged = severity > 0
            alarms[rows] |= flagged
            reported = np.flatnonzero(flagged | _among(sums.keys, index, state.open_keys("device", signal)))
            if not len(reported):
                continue
            if bh is None:
                p = two_sided_p(run_mean * np.sqrt(np.maximum(step.run[j] + significant, 1)))
                bh = FalseDiscovery(np.where(np.isnan(zs), np.nan, p))
            else:
                p = bh.p
            q = np.full(len(keys), np.nan)
            q[reported] = bh.q(bh.p[reported])
            findings += _findings(
                "device",
                keys,
                reported,
                signal,
                (severity, statistic, p, q, effect),
                scores.effect_name[signal],
                at,
                window_s,
                baseline.version,
                int(model),
            )
    used = [baselines[int(m)].score_error_var for m in models if int(m) in baselines]
    group_sums = _Sums(state.cohort_cusum)
    findings += _group_findings(
        cohorts, stouffer_z, alarms, group_sums, state.open, settings, max(used, default=0.0), at, window_s
    )
    identities = [f.identity for f in findings]
    evaluated = set(identities)
    still_open = {i for i in state.open if i not in evaluated}
    open_now = frozenset(still_open | {i for i, f in zip(identities, findings, strict=True) if f.severity != "ok"})
    return findings, replace(
        state, cusum=sums.table(), open=open_now, hot=frozenset(hot_now), cohort_cusum=group_sums.table()
    )


def _base(signal: str) -> str:
    """The signal's name without its channel (`input_mean_0` -> `input_mean`) for the input signals."""
    return signal.rsplit("_", 1)[0] if signal in SEQUENTIAL else signal


def _among(streams: KeyIndex, index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether the streams at rows `index` are among `keys` (a few: open findings, hot devices)."""
    if not len(keys):
        return np.zeros(len(index), dtype=bool)
    member = np.zeros(len(streams), dtype=bool)
    rows, found = streams.find(keys)
    member[rows[found]] = True
    return member[index]


def _findings(
    scope: str,
    keys: np.ndarray,
    rows: np.ndarray,
    signal: str,
    values: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    effect_name: str,
    at: int,
    window_s: int,
    version: str = "",
    model_id: int | None = None,
) -> list[Finding]:
    """Findings of `signal` for the streams at `rows` of `keys`, from their (severity, statistic, p, q,
    effect); in scope "cohort", the fleet's finding has scope "fleet"."""
    severity, statistic, p, q, effect = (np.asarray(v)[rows].tolist() for v in values)
    return [
        Finding(
            scope="fleet" if scope == "cohort" and key == "fleet" else scope,
            key=str(key),
            signal=signal,
            statistic=_num(stat),
            p=_num(p_value, 1.0),
            q=_num(q_value, 1.0),
            effect=_num(size),
            effect_name=effect_name,
            severity=SEVERITIES[level],
            baseline_version=version,
            window_start=at - window_s,
            window_end=at,
            model_id=model_id,
        )
        for key, level, stat, p_value, q_value, size in zip(
            keys[rows].tolist(), severity, statistic, p, q, effect, strict=True
        )
    ]


def _stouffer(members: np.ndarray, z: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(Stouffer Z = sum z / sqrt(m) over each cohort's devices with a score, m), shaped (signals, cohorts):
    `members` is the (cohorts, devices) membership as floats, `z` each signal's device scores. The sums
    and the counts (exact: sums of ones) are one matrix product for all signals: on a busy machine, each
    BLAS call pays for handing its work to its threads."""
    signals = len(z)
    both = np.empty((2 * signals, members.shape[1]))
    scores, valid = both[:signals], both[signals:]
    for row, zs in zip(scores, z, strict=True):
        row[:] = zs
    finite = np.isfinite(scores)
    valid[:] = finite
    scores[~finite] = 0.0
    sums = both @ members.T
    total, m = sums[:signals], sums[signals:].astype(np.int64)
    return np.where(m > 0, total / np.sqrt(np.maximum(m, 1)), np.nan), m


def _group_findings(
    cohorts: Mapping[str, np.ndarray],
    z: Mapping[str, np.ndarray],
    alarms: np.ndarray,
    sums: _Sums,
    was_open: frozenset[tuple[str, str, str]],
    settings: DriftSettings,
    error_var: float,
    at: int,
    window_s: int,
) -> list[Finding]:
    """Cohort and fleet findings: pooled (Stouffer) evidence per signal (a CUSUM for the input signals, its
    threshold for the fitted profiles' error `error_var` in the input-mean scores) and device alarms vs
    binomial."""
    keys = np.array(list(cohorts), dtype=object)
    if not len(keys):
        return []
    masks = np.stack([cohorts[k] for k in keys.tolist()])
    signals = list(z)
    combined, m = _stouffer(masks.astype(float), [z[s] for s in signals])
    mean_z = np.where(m > 0, combined / np.sqrt(np.maximum(m, 1)), np.nan)
    # the input signals' cohort CUSUMs as one (signals, cohorts) array
    sequential = [j for j, signal in enumerate(signals) if signal in SEQUENTIAL]
    names = [signals[j] for j in sequential]
    h = np.array([settings.cohort_h(error_var if _base(s) == "input_mean" else 0.0) for s in names]).reshape(-1, 1)
    index = sums.index(keys)
    step = sums.step(names, index, combined[sequential], settings.cohort_delta, h)
    out: list[Finding] = []
    for signal, zs, size, count in zip(signals, combined, mean_z, m, strict=True):
        if signal in SEQUENTIAL:
            j = names.index(signal)
            p = two_sided_p(zs)
            significant, statistic, minimum = step.alarm[j], step.statistic[j], settings.cohort_min_shift
            effect = np.where(count > 0, step.run_mean[j] / np.sqrt(np.maximum(count, 1)), np.nan)
        else:
            p = one_sided_p(zs)
            significant, statistic = np.nan_to_num(p, nan=1.0) <= settings.cohort_alpha, zs
            effect, minimum = size, settings.cohort_min_effect
        q = bh_qvalues(p)
        severity = _severity(significant, effect, minimum, settings.critical_factor)
        out += _scoped(keys, signal, (severity, statistic, p, q, effect), "mean_z", at, window_s, was_open)
    alpha = 1.0 / settings.arl0_windows + settings.q_max / max(len(alarms), 1)
    x = (masks & alarms).sum(axis=1)
    total = masks.sum(axis=1)
    p = binomial_tail(x, total, min(alpha, 1.0))
    q = bh_qvalues(p)
    share = np.where(total > 0, x / np.maximum(total, 1), 0.0)
    severity = _severity(q <= settings.q_max, share, 0.05, 4.0)
    values = (severity, x.astype(float), p, q, share)
    out += _scoped(keys, "device_alarms", values, "share_of_devices", at, window_s, was_open)
    return out


def _scoped(
    keys: np.ndarray,
    signal: str,
    values: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    effect_name: str,
    at: int,
    window_s: int,
    was_open: frozenset[tuple[str, str, str]],
) -> list[Finding]:
    """Cohort and fleet findings of `signal`: those with a severity, and "ok" for those whose open finding
    cleared."""
    severity = values[0]
    rows = [
        i
        for i, key in enumerate(keys.tolist())
        if severity[i] or ("fleet" if key == "fleet" else "cohort", key, signal) in was_open
    ]
    return _findings("cohort", keys, np.array(rows, dtype=np.intp), signal, values, effect_name, at, window_s)


def _num(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) else default
