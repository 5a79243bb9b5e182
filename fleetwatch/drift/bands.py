"""The baseline band of every checked device and signal, as the device dashboard draws it. Pure.

For one window (columns as `Store.read_frames` returns them, one row per device) and the baselines by
model_id: per device and drift signal, what the baseline expects (`mean`) and the band `lower`..`upper`
of +-BAND_SD standard deviations, in the unit the dashboard plots the signal in (the same spreads the
drift engine scores the window with):

- `input_mean_<c>`: the device's own level at the window's middle (its daily profile; the fleet level for
  a device the baseline does not know), +- 3 sigma_within (the fleet's sd for an unknown device);
- `input_var_<c>`: exp(mean log variance), the window variance and not its log; exp(log mean +- 3 sd);
- `anomaly_rate`: the baseline rate r, +- 3 sd of a beta-binomial rate at the window's n inferences,
  sd^2 = r (1 - r) / n (1 + (n - 1) / (c + 1));
- `accuracy`: the baseline histogram's estimated accuracy with the bin midpoints (as the dashboard
  computes it, whatever calibration the baseline has), +- 3 se sqrt(dispersion), se of the window's
  histogram;
- `latency_p95`: exp(mean log p95 latency) in ms, exp(log mean +- 3 sd);
- `memory`: the mean peak memory in %, +- 3 sd.

Rates and accuracy are clipped to [0, 1]. A signal the baseline has no statistics for (latency, memory),
or a window without inferences (anomaly rate, accuracy), gets no band.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fleetwatch.baselines.model import Baseline
from fleetwatch.drift.engine import CHANNELS
from fleetwatch.drift.stats import estimated_accuracy

MEASUREMENT = "baseline_band"
#: Half the band's width, in standard deviations.
BAND_SD = 3.0

Bands = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def device_bands(window: Mapping[str, np.ndarray], baseline: Baseline, at: int) -> Bands:
    """signal -> (mean, lower, upper) per row of `window` (devices of `baseline`'s model); NaN = no band."""
    levels, known = baseline.levels_for(window["device"], at - baseline.window_s / 2)
    n = np.asarray(window["inference_count"], dtype=float)
    bands: Bands = {}
    for c, channel in enumerate(baseline.channels[:CHANNELS]):
        sd = np.where(known, channel.sigma_within, channel.window_mean.sd)
        bands[f"input_mean_{c}"] = _around(levels[:, c], sd)
        bands[f"input_var_{c}"] = _log_normal(np.full(len(n), channel.log_var.mean), channel.log_var.sd)
    r, concentration = baseline.anomaly_rate, baseline.anomaly_concentration
    with np.errstate(divide="ignore", invalid="ignore"):
        inflation = 1 + (n - 1) / (concentration + 1) if np.isfinite(concentration) else 1.0
        rate_sd = np.where(n > 0, np.sqrt(r * (1 - r) / n * inflation), np.nan)
    bands["anomaly_rate"] = _around(np.where(n > 0, r, np.nan), rate_sd, clip=True)
    edges = np.asarray(baseline.confidence_edges)
    midpoints = (edges[:-1] + edges[1:]) / 2  # the dashboards' calibration map, whatever the baseline's
    counts = np.stack([np.asarray(window[f"conf_hist_{b}"], dtype=float) for b in range(len(midpoints))], axis=1)
    se = estimated_accuracy(counts, midpoints).se * np.sqrt(baseline.confidence_dispersion)
    expected = float(np.dot(baseline.confidence, midpoints))
    bands["accuracy"] = _around(np.where(n > 0, expected, np.nan), se, clip=True)
    if baseline.latency_p95_ms is not None:
        gauss = baseline.latency_p95_ms
        bands["latency_p95"] = _log_normal(np.full(len(n), gauss.mean), gauss.sd)
    if baseline.mem_peak_pct is not None:
        gauss = baseline.mem_peak_pct
        bands["memory"] = _around(np.full(len(n), gauss.mean), np.full(len(n), gauss.sd))
    return bands


def band_columns(
    window: Mapping[str, np.ndarray], baselines: Mapping[int, Baseline], at: int, window_s: int
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(time, tags, fields) of the `baseline_band` points of one window: time = the window's start (as the
    telemetry it bands, so both fall in one dashboard bucket), tags `device` and `signal`, fields `mean`,
    `lower`, `upper`. Devices whose model has no baseline get none."""
    device = np.asarray(window["device"], dtype=object)
    model = np.asarray(window["model_id"]).astype(str)
    parts: dict[str, list[np.ndarray]] = {"device": [], "signal": [], "mean": [], "lower": [], "upper": []}
    for model_id, baseline in sorted(baselines.items()):
        rows = model == str(model_id)
        if not rows.any():
            continue
        subset = {name: np.asarray(values)[rows] for name, values in window.items()}
        for signal, band in device_bands(subset, baseline, at).items():
            keep = np.isfinite(band[0])
            parts["device"].append(device[rows][keep])
            parts["signal"].append(np.full(int(keep.sum()), signal, dtype=object))
            for name, values in zip(("mean", "lower", "upper"), band, strict=True):
                parts[name].append(values[keep])
    columns = {
        name: np.concatenate(arrays) if arrays else np.zeros(0, dtype=object if name in ("device", "signal") else float)
        for name, arrays in parts.items()
    }
    tags = {name: columns[name] for name in ("device", "signal")}
    fields = {name: columns[name] for name in ("mean", "lower", "upper")}
    return np.full(len(columns["device"]), at - window_s, dtype=np.int64), tags, fields


def _around(mean: np.ndarray, sd: np.ndarray, *, clip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lower, upper = mean - BAND_SD * sd, mean + BAND_SD * sd
    if clip:
        lower, upper = np.clip(lower, 0, 1), np.clip(upper, 0, 1)
    return mean, lower, upper


def _log_normal(log_mean: np.ndarray, log_sd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.exp(log_mean), np.exp(log_mean - BAND_SD * log_sd), np.exp(log_mean + BAND_SD * log_sd)
