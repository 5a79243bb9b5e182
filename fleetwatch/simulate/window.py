"""One aggregation window of the whole fleet, drawn for every device at once.

Each quantity comes from its own stream of (seed, window), and every change is applied on top of the
baseline draw (shifts, factors, thinning of counts) from streams of its own, so devices a change does not
target are bit-for-bit what they would be without it. Values leave here as the firmware packs them:
rounded to the wire resolution and clipped to the wire type, with the saturated flag where clipping bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwatch.simulate._streams import window_generator
from fleetwatch.simulate.changes import Effects
from fleetwatch.simulate.fleet import Fleet
from fleetwatch.simulate.spec import HIGH_CONFIDENCE_BINS, LOW_CONFIDENCE_BINS, FleetSpec

U16_MAX = 65535
TIME_SYNCED, SATURATED, LOW_BATTERY, REBOOTED = 1, 2, 4, 8


@dataclass(frozen=True)
class WindowDraw:
    """One window, per device: body and envelope columns (no seq, fw_version, model_id) in the decoder's
    types (wire integers, or float64 in engineering units for scaled fields), reboots, receive time."""

    columns: dict[str, np.ndarray]
    rebooted: np.ndarray
    received: np.ndarray


def draw_window(fleet: Fleet, window: int, effects: Effects, forced_reboots: np.ndarray) -> WindowDraw:
    """Draw window `window` for every device under `effects`; `forced_reboots` reboot regardless (OTA)."""
    spec = fleet.spec
    n = len(fleet)
    opened = spec.start + window * spec.window_s

    rng = window_generator(spec.seed, window, "counts")
    counts = rng.poisson(fleet.rate)
    counts[rng.random(n) < spec.idle_probability] = 0
    saturated = counts > U16_MAX
    counts = np.minimum(counts, U16_MAX)
    idle = counts == 0

    input_mean, input_var, clipped = _inputs(fleet, window, opened, effects, idle)
    saturated |= clipped
    p50, p95, clipped = _latency(fleet, window, effects, idle)
    saturated |= clipped
    battery, clipped = _battery(fleet, window)
    saturated |= clipped

    rebooted = draw_reboots(spec, window, effects.reboot_rate) | forced_reboots
    memory = fleet.memory_pct + spec.memory_window_sd * window_generator(spec.seed, window, "memory").standard_normal(n)
    delay = np.ceil(window_generator(spec.seed, window, "delay").exponential(spec.received_delay_s, n))
    flags = (
        fleet.has_clock * TIME_SYNCED
        + saturated * SATURATED
        + (battery < spec.low_battery_mv) * LOW_BATTERY
        + rebooted * REBOOTED
    )
    columns = {
        "window_start": np.where(fleet.has_clock, opened, 0).astype(np.uint32),
        "window_s": np.full(n, spec.window_s, dtype=np.uint16),
        "inference_count": counts.astype(np.uint16),
        "anomaly_count": _anomalies(spec, window, counts, effects.anomaly_rate).astype(np.uint16),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "mem_peak_pct": np.clip(np.rint(memory + effects.memory_delta), 0, 100).astype(np.uint8),
        "flags": flags.astype(np.uint8),
        "battery_mv": battery.astype(np.uint16),
        "input_mean": input_mean,
        "input_var": input_var,
        "conf_hist": _confidence(spec, window, counts, effects.keep_high).astype(np.uint16),
        "class_counts": _classes(spec, window, counts, effects.class_shifts).astype(np.uint16),
    }
    return WindowDraw(columns, rebooted, (opened + spec.window_s + delay).astype(np.int64))


def draw_reboots(spec: FleetSpec, window: int, rate: np.ndarray) -> np.ndarray:
    """Which devices reboot in `window`, each with probability `rate`."""
    return window_generator(spec.seed, window, "reboot").random(spec.n_devices) < rate


def to_wire(value: np.ndarray, per_unit: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Round to the wire resolution (1 / per_unit) and clip to the wire range [low, high] in raw units.

    Returns the value in engineering units exactly as a decoder reports it, and per row whether clipping bit.
    """
    raw = np.rint(value * per_unit)
    clipped = np.clip(raw, low, high)
    hit = raw != clipped
    return clipped / per_unit, hit.any(axis=1) if hit.ndim > 1 else hit


def _inputs(
    fleet: Fleet, window: int, opened: int, effects: Effects, idle: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window mean = level + cycle + jitter + sampling noise (+ shift); variance = spread^2 chi2(m-1)/m."""
    spec = fleet.spec
    n, m = len(fleet), spec.samples_per_window
    rng = window_generator(spec.seed, window, "inputs")
    jitter, noise = rng.standard_normal((2, n, fleet.level.shape[1]))
    chi = rng.standard_gamma((m - 1) / 2, size=noise.shape) * (2 / m)
    time_of_cycle = ((opened + spec.window_s / 2) % spec.cycle_period_s) / spec.cycle_period_s
    cycle = np.asarray(spec.cycle_amplitude) * np.sin(2 * np.pi * time_of_cycle + fleet.phase)[:, None]
    spread2 = np.asarray(spec.input_spread) ** 2 * effects.var_factor
    mean = (
        fleet.level
        + cycle
        + np.asarray(spec.window_jitter_sd) * jitter
        + np.sqrt(spread2 / m) * noise
        + effects.shift * spec.sigma()
    )
    var = spread2 * chi
    mean[idle] = 0.0
    var[idle] = 0.0
    mean, mean_hit = to_wire(mean, 1000, -32768, 32767)
    var, var_hit = to_wire(var, 10000, 0, U16_MAX)
    return mean, var, mean_hit | var_hit


def _dirichlet_multinomial(
    rng: np.random.Generator, counts: np.ndarray, probs: tuple[float, ...], concentration: float
) -> np.ndarray:
    """Counts over categories: per-row probabilities ~ Dirichlet(concentration * probs), then multinomial."""
    probs_array = np.asarray(probs)
    weights = rng.standard_gamma(concentration * probs_array, size=(len(counts), len(probs_array)))
    total = weights.sum(axis=1, keepdims=True)
    p = np.where(total > 0, weights / np.where(total > 0, total, 1.0), probs_array)
    return rng.multinomial(counts, p)


def _confidence(spec: FleetSpec, window: int, counts: np.ndarray, keep_high: np.ndarray) -> np.ndarray:
    """Top-1 confidence bins; degradation moves each high-bin inference to a low bin with prob 1 - keep_high."""
    hist = _dirichlet_multinomial(
        window_generator(spec.seed, window, "confidence"), counts, spec.confidence_probs, spec.confidence_concentration
    )
    rows = np.flatnonzero(keep_high < 1.0)
    if rows.size:
        rng = window_generator(spec.seed, window, "confidence_change")
        high = np.ix_(rows, HIGH_CONFIDENCE_BINS)
        moved = rng.binomial(hist[high], (1.0 - keep_high[rows])[:, None])
        hist[high] -= moved
        low = np.full(len(LOW_CONFIDENCE_BINS), 1.0 / len(LOW_CONFIDENCE_BINS))
        hist[np.ix_(rows, LOW_CONFIDENCE_BINS)] += rng.multinomial(moved.sum(axis=1), low)
    return hist


def _classes(
    spec: FleetSpec, window: int, counts: np.ndarray, shifts: tuple[tuple[np.ndarray, float, np.ndarray], ...]
) -> np.ndarray:
    """Predicted classes; a prior shift redraws each inference's class from the new priors with prob fraction."""
    classes = _dirichlet_multinomial(
        window_generator(spec.seed, window, "classes"), counts, spec.class_priors, spec.class_concentration
    )
    rng = window_generator(spec.seed, window, "class_change")
    for mask, fraction, priors in shifts:
        rows = np.flatnonzero(mask)
        redrawn = rng.binomial(classes[rows], fraction)
        classes[rows] += rng.multinomial(redrawn.sum(axis=1), priors) - redrawn
    return classes


def _anomalies(spec: FleetSpec, window: int, counts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Beta-binomial around spec.anomaly_rate, then moved to the target rate: extra anomalies among the
    normal inferences with prob (target - r) / (1 - r), or each anomaly kept with prob target / r."""
    rate, kappa = spec.anomaly_rate, spec.anomaly_concentration
    rng = window_generator(spec.seed, window, "anomaly")
    q = rng.beta(rate * kappa, (1 - rate) * kappa, len(counts)) if 0.0 < rate < 1.0 else np.full(len(counts), rate)
    anomalies = rng.binomial(counts, q)
    up, down = target > rate, target < rate
    if up.any() or down.any():
        rng = window_generator(spec.seed, window, "anomaly_change")
        anomalies[up] += rng.binomial(counts[up] - anomalies[up], (target[up] - rate) / (1.0 - rate))
        anomalies[down] = rng.binomial(anomalies[down], target[down] / rate)
    return anomalies


def _latency(
    fleet: Fleet, window: int, effects: Effects, idle: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p50 = device p50 * lognormal window factor * change factors; p95 = p50 * spec.latency_p95_factor."""
    spec = fleet.spec
    z = window_generator(spec.seed, window, "latency").standard_normal(len(fleet))
    p50 = np.where(idle, 0.0, fleet.latency_p50_ms * np.exp(spec.latency_window_sd * z) * effects.latency_factor)
    p50, p50_hit = to_wire(p50, 10, 0, U16_MAX)
    p95, p95_hit = to_wire(p50 * spec.latency_p95_factor, 10, 0, U16_MAX)
    return p50, p95, p50_hit | p95_hit


def _battery(fleet: Fleet, window: int) -> tuple[np.ndarray, np.ndarray]:
    """A sawtooth from full to empty (recharged at empty) at the device's drain rate, plus noise."""
    spec = fleet.spec
    span = spec.battery_full_mv - spec.battery_empty_mv
    drained = (fleet.battery_drain_mv * window + fleet.battery_phase * span) % span
    noise = spec.battery_noise_mv * window_generator(spec.seed, window, "battery").standard_normal(len(fleet))
    return to_wire(spec.battery_full_mv - drained + noise, 1, 0, U16_MAX)
