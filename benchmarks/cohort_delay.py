"""Cohort detection over many simulated fleets: how soon a site's cohort finds a shift of its devices, and how
often cohorts alarm on a fleet where nothing changed, for several cohort budgets at once.

drift_quality.py measures every scenario on one fleet; a cohort's detection delay is then one draw of a
random variable. Here each of `--seeds` fleets (drift_quality.py's `fleet_spec(devices, seed=s)`: hourly
windows, sites of 5%, 25%, 35% and 35% of the devices) gets a baseline fitted on 7 reference days, then:

- drift_quality.py's two cohort scenarios: +0.5 sigma on channel 0 for every device of site=north (50 of
  1,000), and for 50 of the 250 devices of site=south, from window 36 of the evaluated period, each evaluated
  for 36 + `--horizon` windows; the delay is the first window at or after the onset with a non-ok input_mean
  or device_alarms finding on the site's cohort (1 = the onset window; censored at `--horizon`);
- the control (no change) over `--days` days: every non-ok cohort or fleet finding is a false alarm.

Each budget in `--budgets` (`DriftSettings.cohort_arl0_windows`, expected windows between a cohort's false
alarms) runs the engine on the same telemetry, so the rows differ only by the budget. The expected delay
beside each is Siegmund's approximation for the site's mean Stouffer Z per window (`detection_delay`), and
the same by simulating the CUSUM on N(Z, 1) steps; the site's Z over the control says how far its spread
departs from N(0, 1).

    python benchmarks/cohort_delay.py [--seeds 20] [--devices 1000] [--days 14] [--horizon 48]
                                      [--budgets 8760,2190,730]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
from _machine import describe
from drift_quality import (
    DAY,
    ONSET,
    REFERENCE_DAYS,
    fleet_spec,
    frames,
    inventory_of,
    reference_baseline,
    revision,
    run_engine,
    scenarios,
    table,
)

from fleetwatch.drift.engine import DriftSettings, Scores, device_scores
from fleetwatch.drift.sequential import detection_delay
from fleetwatch.simulate import simulate, truth


@dataclass
class Case:
    """One cohort scenario on one fleet: the site's expected Stouffer Z per window, the standard deviation of
    its Z over the control's windows, and per budget the delay (NaN when not found within the horizon)."""

    z: float
    control_z_sd: float
    delays: dict[float, float] = field(default_factory=dict)


@dataclass
class Fleet:
    """One simulated fleet: the bias variance of the devices' fitted profiles, the cohort scenarios by name,
    and per budget the cohort and fleet false alarms in the control."""

    error_var: float
    cases: dict[str, Case] = field(default_factory=dict)
    false_alarms: dict[float, int] = field(default_factory=dict)


def one_fleet(seed: int, args: argparse.Namespace, budgets: list[float]) -> Fleet:
    """Simulate fleet `seed` and run the cohort scenarios and the control at every budget."""
    spec = fleet_spec(args.devices, seed)
    inventory = inventory_of(spec)
    ref_w = REFERENCE_DAYS * DAY
    _, baseline = reference_baseline(spec, ref_w)
    shifted_w, control_w = ONSET + args.horizon, args.days * DAY
    control = frames(simulate(spec, n_windows=control_w, start_window=ref_w))
    first_at = spec.start + (ref_w + 1) * spec.window_s
    ratio = spec.sigma(0) / (baseline.channels[0].sigma_within * baseline.score_scale)
    sites = np.array([inventory[d]["site"] for d in control["device"][::control_w].tolist()])
    settings = DriftSettings()
    control_scores = [
        device_scores(
            {k: v[j::control_w] for k, v in control.items()}, baseline, settings, first_at + j * spec.window_s
        )
        for j in range(control_w)
    ]
    fleet = Fleet(baseline.score_error_var)
    for scenario in (s for s in scenarios(args.devices, ref_w) if s.cohort and s.change):
        members = sites == scenario.cohort.partition("=")[2]
        moved = int(truth(spec, [scenario.change]).targets[0].sum())
        case = Case(
            moved * scenario.change.value * ratio / np.sqrt(members.sum()),
            float(np.std([site_z(scores, members) for scores in control_scores])),
        )
        shifted = frames(simulate(spec, [scenario.change], n_windows=shifted_w, start_window=ref_w))
        for budget in budgets:
            settings = DriftSettings(cohort_arl0_windows=budget)
            alerts, _ = run_engine(shifted, shifted_w, baseline, inventory, settings, first_at, spec.window_s)
            found = [
                j
                for j, scope, key, signal in alerts
                if scope == "cohort" and key == scenario.cohort and j >= ONSET and signal.startswith(scenario.signals)
            ]
            case.delays[budget] = min(found) - ONSET + 1 if found else np.nan
        fleet.cases[scenario.name] = case
    for budget in budgets:
        settings = DriftSettings(cohort_arl0_windows=budget)
        alerts, _ = run_engine(control, control_w, baseline, inventory, settings, first_at, spec.window_s)
        fleet.false_alarms[budget] = sum(1 for _, scope, _, _ in alerts if scope != "device")
    return fleet


def site_z(scores: Scores, members: np.ndarray) -> float:
    """The site's Stouffer Z of channel 0's input-mean scores, as the engine pools them."""
    z = scores.z["input_mean_0"][members]
    valid = np.isfinite(z)
    return float(z[valid].sum() / np.sqrt(valid.sum()))


def simulated_delay(h: float, delta: float, z: float, runs: int = 20_000, seed: int = 0) -> float:
    """Mean windows to alarm of the upper CUSUM (k = delta / 2, from 0) on N(z, 1) steps, by simulation."""
    rng = np.random.default_rng(seed)
    sums, took = np.zeros(runs), np.zeros(runs)
    alive = np.ones(runs, dtype=bool)
    step = 0
    while alive.any():
        step += 1
        sums[alive] = np.maximum(0.0, sums[alive] + rng.normal(z, 1.0, int(alive.sum())) - delta / 2)
        hit = alive & (sums > h)
        took[hit] = step
        alive &= ~hit
    return float(took.mean())


def _censored(delay: float, horizon: int) -> str:
    return f"{delay:.0f}" if np.isfinite(delay) else f"> {horizon}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="simulated fleets (seeds 1..N)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14, help="evaluated days of the control")
    parser.add_argument("--horizon", type=int, default=48, help="windows after the onset the cohort scenario runs")
    parser.add_argument("--budgets", default="8760,2190,730", help="cohort_arl0_windows values, comma-separated")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    started = time.perf_counter()
    runs = [one_fleet(seed, args, budgets) for seed in range(1, args.seeds + 1)]
    print(
        f"Command: `python benchmarks/cohort_delay.py --seeds {args.seeds} --devices {args.devices} --days "
        f"{args.days} --horizon {args.horizon} --budgets {args.budgets}`\n\nMachine: {describe()}\n\n"
        f"Code: {revision()}\n"
    )
    rows = []
    for name in runs[0].cases:
        cases = [run.cases[name] for run in runs]
        z, spread = np.array([case.z for case in cases]), np.array([case.control_z_sd for case in cases])
        print(
            f"{name}: the site's expected Stouffer Z per window over the {args.seeds} fleets: mean {z.mean():.2f} "
            f"(min {z.min():.2f}, max {z.max():.2f}); the standard deviation of its Z over the control's windows "
            f"(1 for N(0, 1) scores): mean {spread.mean():.2f} (min {spread.min():.2f}, max {spread.max():.2f}).\n"
        )
        for budget in budgets:
            settings = DriftSettings(cohort_arl0_windows=budget)
            h = float(np.mean([settings.cohort_h(run.error_var) for run in runs]))
            delays = np.array([case.delays[budget] for case in cases])
            found = delays[np.isfinite(delays)]
            rows.append(
                [
                    name,
                    f"{budget:,.0f}",
                    f"{h:.2f}",
                    f"{detection_delay(h, settings.cohort_delta, float(z.mean())):.1f}",
                    f"{simulated_delay(h, settings.cohort_delta, float(z.mean())):.1f}",
                    _censored(np.median(np.nan_to_num(delays, nan=np.inf)), args.horizon),
                    f"{found.mean():.1f}" if len(found) else "-",
                    f"{100 * np.mean(np.nan_to_num(delays, nan=np.inf) <= 6):.0f}%",
                    f"{len(found)}/{len(delays)}",
                    f"{sum(run.false_alarms[budget] for run in runs)} in {args.seeds * args.days} fleet-days",
                ]
            )
    table(
        [
            "scenario",
            "cohort_arl0_windows",
            "cohort h (mean)",
            "expected delay (Siegmund)",
            "expected delay (simulated N(Z, 1) steps)",
            "median delay",
            "mean delay of the found",
            "found within 6",
            f"found within {args.horizon}",
            "cohort/fleet false alarms, control",
        ],
        rows,
        left=1,
    )
    print(f"\nWhole run {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
