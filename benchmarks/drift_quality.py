"""Drift detection quality: fleetwatch's engine against per-device daily tests, on simulated fleets.

A fleet of `--devices` devices reports hourly. The first 7 days are the reference period: one baseline is
fitted on them (`fleetwatch.baselines.fit_reference`). The next `--days` days are evaluated window by window
with `fleetwatch.drift.engine.evaluate` (default `DriftSettings`; cohorts from `cohort_masks`: the inventory's
site tag, fw_version, model_id and the fleet; the sites hold 5%, 25%, 35% and 35% of the devices). Each scenario
changes 10% of the devices (the cohort scenarios: 5% of them, in one site) from window 36 of the evaluated period
(noon of its second day):

- control: no change (false alarms only);
- input mean +1 sigma on channel 0 (recall within 48 windows; delay against Siegmund's approximation);
- confidence degradation 0.3, class priors (0.4, 0.3, 0.2, 0.1) -> (0.2, 0.2, 0.3, 0.3), input variance
  doubled on channel 0, anomaly rate 2% -> 8% (recall within 24 windows each);
- cohort: +0.5 sigma on channel 0 for every device of site=north (50 devices), to be found at cohort level
  within 6 windows: a cause the devices sharing a site tag share;
- cohort, a minority: the same shift for 50 of the 250 devices of site=south, to be found on site=south.

A change is detected at the first window at or after its onset with a non-ok finding of a matching signal on
the changed device (cohort scenarios: on the site's cohort); delay 1 = found in the onset window. A false alarm
is a non-ok finding on a device or cohort the change did not touch, or before the onset.

Side by side, what a user would run per device without fleetwatch: once a day, each device's 24 window-level
rows (input means and variances, confidence-bin and class shares, anomaly rate, latency p95, peak memory;
idle windows dropped) against its own 7 reference days:

- Evidently's `DataDriftPreset` with its default tests (per column: K-S p < 0.05 for numeric columns, a
  chi-square or z-test for columns with <= 5 distinct values; dataset drift: a share of drifted columns of
  0.5 or more). A report takes over a second here (mostly plotly rendering), so Evidently runs on a sample:
  `--evidently-devices` devices of each scenario (changed ones, from the onset day on, 3 days) and of the
  control run (every day), on two processes;
- a plain two-sample K-S test per column (`scipy.stats.ks_2samp`, p < 0.05) on every device and day, and the
  same with a Bonferroni correction over the columns (p < 0.05 / 23); for the cohort scenarios, the K-S test
  on each site's devices pooled.

A daily check can only alarm when a day closes: with the onset at noon its first chance is 12 windows in.
Devices a change does not target are bit-for-bit the control run (the simulator's guarantee, asserted here),
so the daily tests' false alarms are counted on the control run.

    python benchmarks/drift_quality.py [--devices 1000] [--days 14] [--evidently-devices 8] [--quick]
                                       [--set NAME=VALUE ...]   (a scalar DriftSettings field, for what-if runs)

Evidently is optional (`--evidently-devices 0` skips it): pip install "evidently==0.7.23" "pandas<3".
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from _machine import describe
from scipy import stats

from fleetwatch.baselines import Baseline, fit_reference
from fleetwatch.drift.engine import DriftSettings, EngineState, evaluate
from fleetwatch.drift.scopes import cohort_masks
from fleetwatch.drift.sequential import average_run_length, detection_delay, threshold
from fleetwatch.frames import Registry, format_fw_version
from fleetwatch.simulate import Change, FleetSpec, Target, Telemetry, inventory_csv, simulate, truth
from fleetwatch.sinks.model import field_kind

SCHEMA = Registry.builtin().get(1)
ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DAYS = 7
DAY = 24
#: Window of the evaluated period at which every change starts (noon of its second day).
ONSET = 36
ALPHA = 0.05
#: Each site's share of the fleet (exact): the cohort scenarios shift all of site=north, a fifth of site=south.
SITES = {"north": 0.05, "south": 0.25, "east": 0.35, "west": 0.35}
EVIDENTLY_DAYS = 3
ENGINE = "fleetwatch engine, every window"
KS = f"K-S per device and column, p < {ALPHA}, daily"
KS_BONFERRONI = "same, Bonferroni over the columns, daily"
KS_SITE = f"K-S pooled per site, p < {ALPHA}, daily"
EVIDENTLY_COLUMNS = "Evidently DataDriftPreset column tests, daily"
EVIDENTLY_DATASET = "Evidently DataDriftPreset dataset drift, daily"
#: Window-level columns the daily tests compare, as a user would lay them out.
COLUMNS = (
    *(f"input_mean_{c}" for c in range(3)),
    *(f"input_var_{c}" for c in range(3)),
    *(f"conf_share_{b}" for b in range(10)),
    *(f"class_share_{k}" for k in range(4)),
    "anomaly_rate",
    "latency_p95_ms",
    "mem_peak_pct",
)


@dataclass(frozen=True)
class Scenario:
    """A change; the engine signals and daily-test columns (name prefixes) that count as finding it; the
    windows after the onset within which it must be found; the cohort that must find it (if any)."""

    name: str
    change: Change | None
    signals: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    horizon: int = 0
    cohort: str = ""


@dataclass
class Detection:
    """One method on one scenario: delay per changed unit (windows; NaN: never found), false alarms (findings,
    or drifted columns for the daily tests), the clean device-days and how many of them had a false alarm,
    and false alarms above the device (cohort key, signal) -> count."""

    delays: np.ndarray
    false_alarms: int = 0
    false_days: int = 0
    clean_days: float = 0.0
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)

    def recall(self, horizon: int) -> str:
        found = int((np.nan_to_num(self.delays, nan=np.inf) <= horizon).sum())
        return f"{100 * found / len(self.delays):.0f}% ({found}/{len(self.delays)})" if len(self.delays) else "-"

    def median_delay(self) -> float:
        found = self.delays[np.isfinite(self.delays)]
        return float(np.median(found)) if len(found) else np.nan

    def per_1000_days(self) -> float:
        return 1000 * self.false_alarms / self.clean_days if self.clean_days else np.nan

    def share_of_days(self) -> float:
        return 100 * self.false_days / self.clean_days if self.clean_days else np.nan


def scenarios(n_devices: int, first_window: int) -> list[Scenario]:
    """The scenarios, for changes that start ONSET windows after `first_window` (the first evaluated)."""
    onset = first_window + ONSET
    many = Target(count=max(n_devices // 10, 1), seed=1)
    site = Target(where="site=north")
    few = Target(where="site=south", count=max(n_devices // 20, 1), seed=2)
    return [
        Scenario("control", None),
        Scenario(
            "input mean +1 sigma (ch 0)",
            Change("input_mean_shift", 1.0, many, onset, channels=(0,)),
            ("input_mean",),
            ("input_mean",),
            48,
        ),
        Scenario(
            "confidence degradation 0.3",
            Change("confidence_degradation", 0.3, many, onset),
            ("confidence", "accuracy"),
            ("conf_share",),
            24,
        ),
        Scenario(
            "class priors -> (0.2, 0.2, 0.3, 0.3)",
            Change("class_prior_shift", 1.0, many, onset, priors=(0.2, 0.2, 0.3, 0.3)),
            ("class_prior",),
            ("class_share",),
            24,
        ),
        Scenario(
            "input variance x2 (ch 0)",
            Change("input_var_change", 2.0, many, onset, channels=(0,)),
            ("input_var",),
            ("input_var",),
            24,
        ),
        Scenario(
            "anomaly rate 2% -> 8%", Change("anomaly_rate", 0.08, many, onset), ("anomaly_rate",), ("anomaly_rate",), 24
        ),
        Scenario(
            f"cohort: +0.5 sigma (ch 0), all {round(SITES['north'] * n_devices)} devices of site=north",
            Change("input_mean_shift", 0.5, site, onset, channels=(0,)),
            ("input_mean", "device_alarms"),
            ("input_mean",),
            6,
            cohort="site=north",
        ),
        Scenario(
            f"cohort: +0.5 sigma (ch 0), {few.count} of the {round(SITES['south'] * n_devices)} devices of site=south",
            Change("input_mean_shift", 0.5, few, onset, channels=(0,)),
            ("input_mean", "device_alarms"),
            ("input_mean",),
            6,
            cohort="site=south",
        ),
    ]


def fleet_spec(n_devices: int, seed: int) -> FleetSpec:
    """The benchmark's fleet: hourly windows, the default devices, sites in the shares of `SITES`."""
    return FleetSpec(n_devices=n_devices, seed=seed, tags={"site": SITES})


def frames(telemetry: Telemetry) -> dict[str, np.ndarray]:
    """Telemetry as `Store.read_frames` returns it (flat names, tags as strings); rows device-major."""
    cols = telemetry.columns
    start = np.asarray(cols["window_start"], dtype=np.int64)
    out: dict[str, np.ndarray] = {
        "time": start,
        "device": np.asarray(telemetry.device, dtype=object),
        "fw_version": format_fw_version(cols["fw_version"]),
        "model_id": np.asarray(cols["model_id"]).astype(str).astype(object),
        "seq": np.asarray(cols["seq"], dtype=np.int64),
        "window_s": np.asarray(cols["window_s"], dtype=np.int64),
        "received": np.asarray(telemetry.received, dtype=np.int64),
        "clock_estimated": start == 0,
    }
    for f in SCHEMA.fields:
        dtype = np.float64 if field_kind(f) == "float" else np.int64
        values = np.asarray(cols[f.decoded], dtype=dtype).reshape(len(start), f.count)
        out.update({name: values[:, i] for i, name in enumerate(f.column_names)})
    return out


def inventory_of(spec: FleetSpec) -> dict[str, dict[str, str]]:
    """The simulated fleet's inventory as `fleet.inventory` reads it: device -> {tag: value}."""
    return {
        row["device"]: {k: v for k, v in row.items() if k != "device"}
        for row in csv.DictReader(io.StringIO(inventory_csv(spec)))
    }


def reference_baseline(spec: FleetSpec, ref_w: int) -> tuple[dict[str, np.ndarray], Baseline]:
    """The first `ref_w` windows of the fleet (its reference period) and the baseline fitted on them."""
    reference = frames(simulate(spec, n_windows=ref_w))
    baseline = fit_reference(
        reference,
        model_id=int(reference["model_id"][0]),
        version="bench-v1",
        fitted_at=spec.start + ref_w * spec.window_s,
        time_range=(spec.start, spec.start + ref_w * spec.window_s),
    )
    return reference, baseline


def run_engine(
    columns: Mapping[str, np.ndarray],
    n_windows: int,
    baseline: Baseline,
    inventory: Mapping[str, Mapping[str, str]],
    settings: DriftSettings,
    first_at: int,
    window_s: int,
) -> tuple[list[tuple[int, str, str, str]], float]:
    """Non-ok findings as (window, scope, key, signal) over every window, and the seconds `evaluate` took."""
    state = EngineState()
    alerts = []
    took = 0.0
    for j in range(n_windows):
        rows = {k: v[j::n_windows] for k, v in columns.items()}
        at = first_at + j * window_s
        started = time.perf_counter()
        found, state = evaluate(
            rows, {baseline.model_id: baseline}, cohort_masks(rows, inventory), state, settings, at, window_s
        )
        took += time.perf_counter() - started
        alerts += [(j, f.scope, f.key, f.signal) for f in found if f.severity != "ok"]
    return alerts, took


def score_engine(
    alerts: Sequence[tuple[int, str, str, str]],
    scenario: Scenario,
    targeted: set[str],
    touched_cohorts: set[str],
    n_devices: int,
    n_windows: int,
) -> tuple[Detection, np.ndarray]:
    """The engine's detection of the scenario, and the device-level delays of the changed devices."""
    onset = ONSET if scenario.change else n_windows
    first: dict[str, int] = {}
    false_days: set[tuple[str, int]] = set()
    detection = Detection(np.zeros(0))
    for j, scope, key, signal in alerts:
        after = j >= onset
        if scope == "device" and after and key in targeted:
            if signal.startswith(scenario.signals):
                first.setdefault(key, j)
        elif scope == "device":
            detection.false_alarms += 1
            detection.signals[signal] += 1
            false_days.add((key, j // DAY))
        elif after and key in touched_cohorts:
            if key == scenario.cohort and signal.startswith(scenario.signals):
                first.setdefault(key, j)
        else:
            detection.groups[(key, signal)] += 1

    def delays(units: Sequence[str]) -> np.ndarray:
        return np.array([first[u] - onset + 1 if u in first else np.nan for u in units], dtype=float)

    devices = delays(sorted(targeted))
    detection.delays = delays([scenario.cohort]) if scenario.cohort else devices
    detection.false_days = len(false_days)
    detection.clean_days = (n_devices * n_windows - len(targeted) * (n_windows - onset)) / DAY
    return detection, devices


def features(columns: Mapping[str, np.ndarray], n_devices: int) -> np.ndarray:
    """(devices, windows, COLUMNS) window-level values; idle windows (no inference) are NaN."""
    n = np.asarray(columns["inference_count"], dtype=float)
    derived: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        derived |= {f"conf_share_{b}": columns[f"conf_hist_{b}"] / n for b in range(10)}
        derived |= {f"class_share_{k}": columns[f"class_counts_{k}"] / n for k in range(4)}
        derived["anomaly_rate"] = columns["anomaly_count"] / n
    values = np.stack([np.asarray(derived[c] if c in derived else columns[c], dtype=float) for c in COLUMNS], axis=1)
    values[n == 0] = np.nan
    return values.reshape(n_devices, -1, len(COLUMNS))


def ks_daily(reference: np.ndarray, current: np.ndarray, per_day: int = DAY) -> np.ndarray:
    """K-S p-values (units, days, COLUMNS) of each unit's days against its reference rows: reference is
    (units, rows, COLUMNS), current (units, days x per_day, COLUMNS) in day order."""
    days = current.shape[1] // per_day
    cur = current[:, : days * per_day].reshape(len(current), days, per_day, -1).transpose(0, 1, 3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return stats.ks_2samp(reference.transpose(0, 2, 1)[:, None], cur, axis=-1, nan_policy="omit").pvalue


def site_ks(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """K-S p-values (1, days, COLUMNS) of the windows of a site's devices (devices, windows, COLUMNS), pooled
    day by day, against their pooled reference windows."""
    days = current.shape[1] // DAY
    by_day = current[:, : days * DAY].reshape(len(current), days, DAY, -1).transpose(1, 0, 2, 3)
    return ks_daily(reference.reshape(1, -1, len(COLUMNS)), by_day.reshape(1, -1, len(COLUMNS)), len(current) * DAY)


def daily_delays(decisions: np.ndarray, onset: int) -> np.ndarray:
    """(units, days) drift decisions -> windows from the onset to the end of the first drifted day at or after
    the onset day (NaN: none)."""
    later = decisions[:, onset // DAY :]
    day = onset // DAY + np.argmax(later, axis=1)
    return np.where(later.any(axis=1), (day + 1) * DAY - onset, np.nan)


def column_mask(prefixes: tuple[str, ...]) -> np.ndarray:
    return np.array([bool(prefixes) and c.startswith(prefixes) for c in COLUMNS], dtype=bool)


def score_daily(decisions: np.ndarray, scenario: Scenario) -> Detection:
    """A daily method on the control run, decisions (units, days, COLUMNS): its false alarms; on a change,
    decisions of the changed units: their delays."""
    if scenario.change is None:
        return Detection(np.zeros(0), int(decisions.sum()), int(decisions.any(axis=2).sum()), decisions[..., 0].size)
    return Detection(daily_delays(decisions[:, :, column_mask(scenario.columns)].any(axis=2), ONSET))


def evidently_check(job: tuple[np.ndarray, np.ndarray]) -> tuple[bool, np.ndarray, float]:
    """One Evidently DataDriftPreset report with its default tests, of a device-day against its reference
    days: (dataset drift, drifted per column in COLUMNS order, seconds)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    warnings.simplefilter("ignore")
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    reference, current = job
    definition = DataDefinition(numerical_columns=list(COLUMNS))

    def dataset(values: np.ndarray) -> Dataset:
        frame = pd.DataFrame(values[~np.isnan(values).any(axis=1)], columns=list(COLUMNS))
        return Dataset.from_pandas(frame, data_definition=definition)

    snapshot = Report([DataDriftPreset()], include_tests=True).run(dataset(current), dataset(reference))
    dataset_drift = False
    drifted = np.zeros(len(COLUMNS), dtype=bool)
    for test in snapshot.dict()["tests"]:
        failed = str(test["status"]).endswith("FAIL")
        params = test["metric_config"]["params"]
        if "column" in params:
            drifted[COLUMNS.index(params["column"])] = failed
        else:
            dataset_drift = failed
    return dataset_drift, drifted, time.perf_counter() - started


@dataclass(frozen=True)
class EvidentlyJob:
    """One sampled device-day: its scenario, device and day, the data, and the K-S decisions for it."""

    scenario: Scenario
    device: int
    day: int
    data: tuple[np.ndarray, np.ndarray]
    ks_drifted: np.ndarray


def run_evidently(jobs: Sequence[EvidentlyJob], results: dict[str, dict[str, Detection]]) -> str:
    """Run the sampled reports on two processes, add Evidently's results to `results`; a summary line."""
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(evidently_check, [job.data for job in jobs]))
    wall = time.perf_counter() - started
    done = list(zip(jobs, answers, strict=True))
    for scenario in {job.scenario for job in jobs}:
        mine = [(job, answer) for job, answer in done if job.scenario == scenario]
        devices = sorted({job.device for job, _ in mine})
        columns = np.zeros((len(devices), max(job.day for job, _ in mine) + 1, len(COLUMNS)), dtype=bool)
        whole = np.zeros(columns.shape[:2], dtype=bool)
        for job, (dataset_drift, drifted, _) in mine:
            columns[devices.index(job.device), job.day] = drifted
            whole[devices.index(job.device), job.day] = dataset_drift
        results[scenario.name][EVIDENTLY_COLUMNS] = score_daily(columns, scenario)
        results[scenario.name][EVIDENTLY_DATASET] = (
            Detection(daily_delays(whole, ONSET)) if scenario.change else score_daily(whole[:, :, None], scenario)
        )
    agree = np.mean([np.array_equal(job.ks_drifted, columns) for job, (_, columns, _) in done])
    per_report = np.mean([seconds for *_, seconds in answers])
    return (
        f"Evidently {version('evidently')}: {len(jobs)} reports, {per_report:.2f} s per report on one core "
        f"({wall:.0f} s wall on 2 processes); its column tests decide as the plain K-S test on "
        f"{100 * agree:.1f}% of the sampled device-days."
    )


def revision() -> str:
    """The commit measured, and the files under fleetwatch/ that differ from it (uncommitted work)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()

    dirty = git("status", "--porcelain", "--", "fleetwatch").splitlines()
    changed = f" + uncommitted changes to {', '.join(line.split(maxsplit=1)[1] for line in dirty)}" if dirty else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{changed}"


def fmt(value: float, spec: str = ".2f") -> str:
    return "-" if not np.isfinite(value) else format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _groups(groups: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{key} {signal} x{n}" for (key, signal), n in sorted(groups.items())) or "none"


def report(
    plan: Sequence[Scenario],
    results: Mapping[str, Mapping[str, Detection]],
    device_delays: Mapping[str, np.ndarray],
    settings: DriftSettings,
    baseline: Baseline,
    sigma: float,
    site_sizes: Mapping[str, tuple[int, int]],
) -> None:
    """The markdown tables: false alarms on the control run, detection per scenario, delays vs Siegmund;
    `sigma` is the simulator's 1 sigma of channel 0; per cohort scenario, the changed devices' delays found
    individually and (changed devices, site size)."""
    h = settings.device_h(baseline.score_bias_var)
    cohort_h = settings.cohort_h(baseline.score_error_var)
    control = results[plan[0].name]
    print("\n### False alarms on the control run (no change)\n")
    table(
        ["method", "units x days checked", "false alarms per 1,000 unit-days", "unit-days with a false alarm"],
        [
            [label, f"{d.clean_days:,.0f}", fmt(d.per_1000_days(), ".1f"), fmt(d.share_of_days(), ".2f") + "%"]
            for label, d in control.items()
        ],
    )
    engine = control[ENGINE]
    budget = 1000 * DAY / settings.arl0_windows
    sequential = 1000 * 6 * DAY / (settings.arl0_windows / settings.sequential_share)
    print(
        f"\nUnits are devices, sites for the pooled test; a false alarm is a finding (engine) or a drifted column "
        f"(daily tests). Engine device false alarms by signal: "
        f"{', '.join(f'{name} x{n}' for name, n in sorted(engine.signals.items())) or 'none'}; cohort and fleet "
        f"false alarms: {_groups(engine.groups)}. Bound implied by the settings: arl0_windows = "
        f"{settings.arl0_windows:,.0f} windows per device is {budget:.2f} false alarms per 1,000 device-days for "
        f"all signals together, of which the six CUSUMs (1/12 of it each: input mean h = {h:.2f} for devices whose "
        f"level was fitted, `DriftSettings().device_h(baseline.score_bias_var)`, bias variance "
        f"{baseline.score_bias_var:.5f}; input variance h = {settings.h:.2f}) take {sequential:.2f}. Cohorts: "
        f"{settings.cohort_arl0_windows:,.0f} windows per cohort, input mean h = {cohort_h:.2f} "
        f"(`cohort_h(baseline.score_error_var)`), input variance h = {settings.cohort_h(0.0):.2f}."
    )

    print("\n### Detection\n")
    rows = []
    for scenario in plan[1:]:
        for label, d in results[scenario.name].items():
            rows.append(
                [scenario.name, str(scenario.horizon), label, d.recall(scenario.horizon), fmt(d.median_delay(), ".0f")]
            )
    table(["scenario", "within (windows)", "method", "recall", "median delay (windows)"], rows, left=3)
    print("\nEngine false alarms while the changes ran (devices and cohorts the change did not touch, or before it):\n")
    table(
        ["scenario", "device false alarms per 1,000 device-days", "cohort/fleet false alarms"],
        [
            [s.name, fmt(results[s.name][ENGINE].per_1000_days(), ".2f"), _groups(results[s.name][ENGINE].groups)]
            for s in plan[1:]
        ],
    )
    cohorts = [s for s in plan if s.cohort and s.change]
    for cohort in cohorts:
        found = device_delays[cohort.name]
        print(
            f"\n{cohort.name}: the engine row is the site's cohort; individually the engine found "
            f"{Detection(found).recall(48)} of the {len(found)} shifted devices within 48 windows "
            f"and {int(np.isfinite(found).sum())} by the end of the run."
        )
    print("\nEvidently was not run per site.")

    shift = plan[1]
    delays = results[shift.name][ENGINE].delays
    h0 = threshold(24_000, 1.0)
    ratio = sigma / (baseline.channels[0].sigma_within * baseline.score_scale)
    pooled = []
    for cohort in cohorts:
        moved, size = site_sizes[cohort.name]
        per_window = moved * cohort.change.value * ratio / np.sqrt(size)
        pooled.append(
            [
                f"{cohort.name}: the site's Stouffer CUSUM (h = {cohort_h:.2f}, delta {settings.cohort_delta:g}): "
                f"Z = {per_window:.2f} per window (mean z {per_window / np.sqrt(size):.3f}, "
                f"cohort_min_shift {settings.cohort_min_shift})",
                f"{detection_delay(cohort_h, settings.cohort_delta, per_window):.1f}",
            ]
        )
    print("\n### Delay against Siegmund's approximation\n")
    table(
        ["quantity", "windows"],
        [
            [
                f"`detection_delay(threshold(24000, 1), 1, 1)`: h = {h0:.2f}, a 1 sigma shift",
                f"{detection_delay(h0, 1, 1):.1f}",
            ],
            [
                f"the engine's h = `DriftSettings().device_h(baseline.score_bias_var)` = {h:.2f} (two-sided ARL0 "
                f"{average_run_length(h, settings.cusum_delta):,.0f} windows for a known level), a 1 sigma shift",
                f"{detection_delay(h, settings.cusum_delta, 1.0):.1f}",
            ],
            [
                f"the engine's h; the simulator's 1 sigma is {ratio:.3f} sd of the engine's scores",
                f"{detection_delay(h, settings.cusum_delta, ratio):.1f}",
            ],
            [
                f"measured ({shift.name}): median (mean) delay of the {int(np.isfinite(delays).sum())} found",
                f"{fmt(np.nanmedian(delays), '.0f')} ({fmt(np.nanmean(delays), '.1f')})",
            ],
            *pooled,
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14, help="evaluated days, after the 7 reference days")
    parser.add_argument("--evidently-devices", type=int, default=8, help="sampled devices per scenario (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a scalar DriftSettings field (what-if)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 devices, 4 days, 2 Evidently devices")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.days, args.evidently_devices = 200, 4, 2
    if args.evidently_devices and importlib.util.find_spec("evidently") is None:
        parser.error('Evidently is not installed: pip install "evidently==0.7.23" "pandas<3", or --evidently-devices 0')
    started = time.perf_counter()
    spec = fleet_spec(args.devices, args.seed)
    inventory = inventory_of(spec)
    ids = np.array(sorted(inventory), dtype=object)
    sites = np.array([inventory[d]["site"] for d in ids.tolist()], dtype=object)
    ref_w, eval_w = REFERENCE_DAYS * DAY, args.days * DAY
    overrides = dict(item.split("=", 1) for item in args.set)
    settings = DriftSettings(**{name: float(value) for name, value in overrides.items()})
    reference, baseline = reference_baseline(spec, ref_w)
    ref_features = features(reference, args.devices)
    first_at = spec.start + (ref_w + 1) * spec.window_s
    plan = scenarios(args.devices, ref_w)
    print(
        f"Command: `python benchmarks/drift_quality.py --devices {args.devices} --days {args.days} "
        f"--evidently-devices {args.evidently_devices} --seed {args.seed}"
        f"{''.join(f' --set {item}' for item in args.set)}`\n\nMachine: {describe()}\n\nCode: {revision()}\n"
    )

    results: dict[str, dict[str, Detection]] = {}
    jobs: list[EvidentlyJob] = []
    control = ks_control = np.zeros(0)
    device_delays: dict[str, np.ndarray] = {}
    site_sizes: dict[str, tuple[int, int]] = {}
    engine_seconds = 0.0
    for scenario in plan:
        changes = [scenario.change] if scenario.change else []
        columns = frames(simulate(spec, changes, n_windows=eval_w, start_window=ref_w))
        targets = truth(spec, changes).targets[0] if changes else np.zeros(args.devices, dtype=bool)
        targeted = set(ids[targets].tolist())
        touched = {"fleet", f"fw_version={spec.fw_version}", f"model_id={baseline.model_id}"} if targeted else set()
        touched |= {f"site={s}" for s in set(sites[targets].tolist())}
        alerts, took = run_engine(columns, eval_w, baseline, inventory, settings, first_at, spec.window_s)
        engine_seconds += took
        engine, device_delays[scenario.name] = score_engine(alerts, scenario, targeted, touched, args.devices, eval_w)
        if scenario.cohort:
            site_sizes[scenario.name] = (len(targeted), int((sites == scenario.cohort.partition("=")[2]).sum()))
        results[scenario.name] = {ENGINE: engine}
        current = features(columns, args.devices)
        if scenario.change is None:
            control, ks_control = current, ks_daily(ref_features, current)
        else:
            assert np.array_equal(current[~targets], control[~targets], equal_nan=True), "untargeted devices changed"
        p = ks_control if scenario.change is None else ks_daily(ref_features[targets], current[targets])
        if not scenario.cohort:
            results[scenario.name][KS] = score_daily(p < ALPHA, scenario)
            results[scenario.name][KS_BONFERRONI] = score_daily(p < ALPHA / len(COLUMNS), scenario)
        if scenario.change is None or scenario.cohort:
            pooled = [s for s in np.unique(sites).tolist() if not scenario.cohort or scenario.cohort == f"site={s}"]
            p_site = np.concatenate([site_ks(ref_features[sites == s], current[sites == s]) for s in pooled])
            results[scenario.name][KS_SITE] = score_daily(p_site < ALPHA, scenario)
        if args.evidently_devices and not scenario.cohort:
            sample = (np.flatnonzero(targets) if targeted else np.arange(args.devices))[: args.evidently_devices]
            onset_day = ONSET // DAY
            days = range(onset_day, min(onset_day + EVIDENTLY_DAYS, args.days)) if targeted else range(args.days)
            jobs += [
                EvidentlyJob(scenario, d, k, (ref_features[d], current[d, k * DAY : (k + 1) * DAY]), p[i, k] < ALPHA)
                for i, d in enumerate(sample.tolist())
                for k in days
            ]
        print(f"<!-- {scenario.name}: {len(alerts)} non-ok findings, evaluate {took:.1f} s -->")
    evidently_line = run_evidently(jobs, results) if jobs else "Evidently skipped (--evidently-devices 0)."
    report(plan, results, device_delays, settings, baseline, spec.sigma(0), site_sizes)
    print(f"\n{evidently_line}")
    print(
        f"Engine: {engine_seconds:.1f} s of `evaluate` for {len(plan) * eval_w} windows of {args.devices} devices "
        f"({1000 * engine_seconds / (len(plan) * eval_w):.0f} ms per window); whole run "
        f"{time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
