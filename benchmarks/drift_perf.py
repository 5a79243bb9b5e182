"""Drift cycle performance: 24 windows of a 100,000-device fleet read from the embedded store and evaluated,
against a per-device scipy loop running the same tests.

Setup (not timed): a simulated fleet (`FleetSpec`, hourly windows) is encoded to frames, decoded and written
with `write_frames` to a fresh embedded store (DuckDB) in a temporary directory under /tmp: one reference day,
then `--windows` evaluated windows, each window's frames in device order, or with `--shuffle` in a random
order (as they arrive from a fleet over MQTT; the store then has to sort every window it reads). The
baseline is fitted from the reference day as read back from the store.

Timed, window by window as `DriftRunner.check` does it: `read_frames` of the window (the columns a drift
check reads, `drift_columns`), `cohort_masks` (site from the inventory, fw_version, model_id, fleet) and
`evaluate` (default `DriftSettings`), carrying the engine state from one window to the next. The inventory
is indexed once before (`InventoryIndex`), as the runner does when it starts.

The baseline: a per-device Python loop calling scipy for each test the engine runs (two-sided z and CUSUM
update for the 3 input means and 3 log variances, G-test via `scipy.stats.power_divergence` and `chi2.sf`
with the dispersion for the confidence histogram and the class counts, PSI, label-free accuracy with
`norm.sf`, `betabinom.sf` for anomalies, `norm.sf` for latency and memory), then Benjamini-Hochberg across
devices per signal (`scipy.stats.false_discovery_control`). It runs on the first `--loop-devices` devices of
the same windows; its time is extrapolated linearly to the whole fleet (every step is per device except BH,
which is O(n log n) and a negligible share).

    python benchmarks/drift_perf.py [--devices 100000] [--windows 24] [--loop-devices 1000] [--shuffle] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import tempfile
import time
from collections import Counter

import numpy as np
from _machine import describe
from drift_quality import revision
from scipy import stats

from fleetwatch.baselines import Baseline, fit_reference
from fleetwatch.baselines.model import DAY_S
from fleetwatch.drift.engine import CHANNELS, DriftSettings, EngineState, evaluate
from fleetwatch.drift.runner import drift_columns
from fleetwatch.drift.scopes import InventoryIndex, cohort_masks
from fleetwatch.frames import Registry, decode_buffer
from fleetwatch.simulate import FleetSimulator, FleetSpec, inventory_csv
from fleetwatch.sinks import open_store
from fleetwatch.sinks.base import Store

REGISTRY = Registry.builtin()
SCHEMA = REGISTRY.get(1)
REFERENCE_WINDOWS = 24
TARGET_S = 10.0
TARGET_RATIO = 100.0


def write_windows(
    store: Store, simulator: FleetSimulator, n_windows: int, shuffle: np.random.Generator | None = None
) -> None:
    """Simulate, encode, decode and store `n_windows` windows of the whole fleet, one window at a time, each
    in device order or, with `shuffle`, in a random order."""
    for _ in range(n_windows):
        telemetry = simulator.step()
        frames = telemetry.frames()
        order = shuffle.permutation(len(frames)) if shuffle is not None else np.arange(len(frames))
        lengths = np.full(len(frames), SCHEMA.frame_len)
        device, received = telemetry.device[order], telemetry.received[order]
        result = decode_buffer(frames[order].tobytes(), lengths, device, received, REGISTRY)
        assert not result.rejects, result.reject_counts()
        store.write_frames(result.batches[SCHEMA.id])


def cycle(
    store: Store,
    baseline: Baseline,
    inventory: InventoryIndex,
    settings: DriftSettings,
    ends: list[int],
    window_s: int,
) -> tuple[dict[str, float], list[dict[str, np.ndarray]], Counter[str]]:
    """The timed drift cycle: seconds per part, the windows read, and the non-ok findings per signal."""
    seconds = {"read_frames": 0.0, "cohort_masks": 0.0, "evaluate": 0.0}
    state = EngineState()
    windows = []
    alerts: Counter[str] = Counter()
    for at in ends:
        started = time.perf_counter()
        window = store.read_frames(at - window_s, at, schema=SCHEMA, columns=drift_columns(SCHEMA))
        read = time.perf_counter()
        cohorts = cohort_masks(window, inventory)
        masked = time.perf_counter()
        findings, state = evaluate(window, {baseline.model_id: baseline}, cohorts, state, settings, at, window_s)
        done = time.perf_counter()
        seconds["read_frames"] += read - started
        seconds["cohort_masks"] += masked - read
        seconds["evaluate"] += done - masked
        windows.append(window)
        alerts.update(f.signal for f in findings if f.severity != "ok")
    return seconds, windows, alerts


def scipy_loop(
    windows: list[dict[str, np.ndarray]], baseline: Baseline, settings: DriftSettings, ends: list[int], n: int
) -> float:
    """Seconds for the per-device scipy loop over the first `n` devices of every window."""
    k, h = settings.cusum_delta / 2, settings.h
    sums: dict[tuple[str, str], tuple[float, float]] = {}
    conf = np.array(baseline.confidence)
    used_conf = conf > 0
    priors = np.array(baseline.class_priors)
    accuracy_map = baseline.accuracy_map()
    expected_accuracy = float(conf @ accuracy_map)
    rate, concentration = baseline.anomaly_rate, baseline.anomaly_concentration
    latency, memory = baseline.latency_p95_ms, baseline.mem_peak_pct
    started = time.perf_counter()
    for window, at in zip(windows, ends, strict=True):
        phase = 2 * np.pi * ((at - baseline.window_s / 2) % DAY_S) / DAY_S
        basis = np.array([1.0, np.sin(phase), np.cos(phase)])
        p_values: dict[str, list[float]] = {}
        effects: dict[str, list[float]] = {}
        for i in range(n):
            device = str(window["device"][i])
            count = float(window["inference_count"][i])
            profile = baseline.device_levels.get(device)
            for c, channel in enumerate(baseline.channels[:CHANNELS]):
                level = float(np.reshape(profile, (CHANNELS, 3))[c] @ basis) if profile else channel.window_mean.mean
                z_mean = (float(window[f"input_mean_{c}"][i]) - level) / channel.sigma_within
                z_var = (
                    np.log(max(float(window[f"input_var_{c}"][i]), 1e-4)) - channel.log_var.mean
                ) / channel.log_var.sd
                for signal, z in ((f"input_mean_{c}", z_mean), (f"input_var_{c}", z_var)):
                    upper, lower = sums.get((device, signal), (0.0, 0.0))
                    upper, lower = max(0.0, upper + z - k), max(0.0, lower - z - k)
                    sums[(device, signal)] = (0.0, 0.0) if max(upper, lower) > h else (upper, lower)
                    p_values.setdefault(signal, []).append(2 * stats.norm.sf(abs(z)))
            if count >= settings.min_inferences:
                hist = np.array([window[f"conf_hist_{b}"][i] for b in range(10)], dtype=float)
                classes = np.array([window[f"class_counts_{b}"][i] for b in range(len(priors))], dtype=float)
                for signal, counts, probs, used, dispersion in (
                    ("confidence", hist, conf, used_conf, baseline.confidence_dispersion),
                    ("class_prior", classes, priors, priors > 0, baseline.class_dispersion),
                ):
                    g = stats.power_divergence(counts[used], count * probs[used], lambda_="log-likelihood").statistic
                    p_values.setdefault(signal, []).append(stats.chi2.sf(g / dispersion, used.sum() - 1))
                    share = (counts / count + 1e-4) / (1 + 1e-4 * len(counts))
                    expected = (probs + 1e-4) / (1 + 1e-4 * len(probs))
                    effects.setdefault(signal, []).append(np.sum((share - expected) * np.log(share / expected)))
                accuracy = hist @ accuracy_map / count
                se = np.sqrt(hist @ (accuracy_map * (1 - accuracy_map))) / count
                drop = (expected_accuracy - accuracy) / (se * np.sqrt(baseline.confidence_dispersion))
                p_values.setdefault("accuracy", []).append(stats.norm.sf(drop))
                anomalies = float(window["anomaly_count"][i])
                tail = stats.betabinom.sf(anomalies - 1, int(count), rate * concentration, (1 - rate) * concentration)
                p_values.setdefault("anomaly_rate", []).append(tail)
                z = (np.log(max(float(window["latency_p95_ms"][i]), 1e-3)) - latency.mean) / latency.sd
                p_values.setdefault("latency_p95", []).append(stats.norm.sf(z))
            z = (float(window["mem_peak_pct"][i]) - memory.mean) / memory.sd
            p_values.setdefault("memory", []).append(stats.norm.sf(z))
        for values in p_values.values():
            stats.false_discovery_control(np.array(values))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--loop-devices", type=int, default=1000, help="devices the scipy loop runs on")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--shuffle", action="store_true", help="write each window's frames in a random order")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 devices, 4 windows, loop on 200")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.windows, args.loop_devices = 5000, 4, 200
    spec = FleetSpec(n_devices=args.devices, seed=args.seed)
    inventory = InventoryIndex(
        {
            row["device"]: {k: v for k, v in row.items() if k != "device"}
            for row in csv.DictReader(io.StringIO(inventory_csv(spec)))
        }
    )
    settings = DriftSettings()
    directory = tempfile.mkdtemp(prefix="fleetwatch-drift-perf-", dir="/tmp")
    try:
        store = open_store(f"embedded://{directory}")
        simulator = FleetSimulator(spec)
        started = time.perf_counter()
        shuffle = np.random.default_rng(args.seed) if args.shuffle else None
        write_windows(store, simulator, REFERENCE_WINDOWS + args.windows, shuffle)
        setup_s = time.perf_counter() - started
        reference_end = spec.start + REFERENCE_WINDOWS * spec.window_s
        baseline = fit_reference(
            store.read_frames(spec.start, reference_end, schema=SCHEMA),
            model_id=spec.model_id,
            version="bench-v1",
            fitted_at=reference_end,
            time_range=(spec.start, reference_end),
        )
        ends = [reference_end + (j + 1) * spec.window_s for j in range(args.windows)]
        seconds, windows, alerts = cycle(store, baseline, inventory, settings, ends, spec.window_s)
        store.close()
    finally:
        shutil.rmtree(directory)
    assert all(len(w["device"]) == args.devices for w in windows), "every device has one frame per window"
    loop_s = scipy_loop(windows, baseline, settings, ends, args.loop_devices)
    loop_fleet = loop_s * args.devices / args.loop_devices
    total = sum(seconds.values())

    print(
        f"Command: `python benchmarks/drift_perf.py --devices {args.devices} --windows {args.windows} "
        f"--loop-devices {args.loop_devices} --seed {args.seed}{' --shuffle' if args.shuffle else ''}`\n\n"
        f"Machine: {describe()}\n\nCode: {revision()}\n"
    )
    print(
        f"Setup (not timed): {args.devices * (REFERENCE_WINDOWS + args.windows):,} frames simulated, encoded, "
        f"decoded and written to the embedded store in {setup_s:.0f} s. Baseline fitted on the first "
        f"{REFERENCE_WINDOWS} windows (short: the quality benchmark measures false alarms); non-ok findings in "
        f"the cycle: {sum(alerts.values())} ({', '.join(f'{k} {v}' for k, v in alerts.most_common())}).\n"
    )
    print(f"| part | seconds for {args.windows} windows | per window |")
    print("|---|---:|---:|")
    for part, value in seconds.items():
        print(f"| `{part}` | {value:.2f} | {value / args.windows:.3f} |")
    print(f"| **drift cycle** | **{total:.2f}** | **{total / args.windows:.3f}** |")
    print(
        f"| scipy per-device loop, {args.loop_devices:,} devices (measured) | {loop_s:.2f} | "
        f"{loop_s / args.windows:.3f} |"
    )
    print(
        f"| scipy per-device loop, {args.devices:,} devices (extrapolated x{args.devices / args.loop_devices:.0f}) "
        f"| {loop_fleet:,.0f} | {loop_fleet / args.windows:.1f} |"
    )
    print(
        f"\nTargets: cycle <= {TARGET_S:.0f} s: {'met' if total <= TARGET_S else 'NOT met'} ({total:.1f} s). "
        f">= {TARGET_RATIO:.0f}x the scipy loop: {'met' if loop_fleet / total >= TARGET_RATIO else 'NOT met'} "
        f"({loop_fleet / total:,.0f}x for the cycle, {loop_fleet / seconds['evaluate']:,.0f}x for `evaluate` alone)."
    )


if __name__ == "__main__":
    main()
