"""Fitting baselines: from training data, or from a reference period of fleet telemetry. Pure.

From training data (what the model saw before it shipped): raw input windows are aggregated exactly as the
firmware does (mean and population variance per channel over a window's samples, at wire resolution), so
the reference distributions are of the same statistics devices send. The validation set's top-1
confidences and predicted classes give the confidence histogram and the class priors; with labels, the
calibration map (accuracy per confidence bin) for label-free accuracy estimation.

From a reference period (what the deployed fleet looked like while it was healthy): each device's own
daily profile per channel (level plus the first harmonic of a day, least squares), `sigma_within` = the
pooled standard deviation of window means around each device's own profile, the anomaly rate with its
overdispersion, latency (log scale), memory and reboots. The profiles' own estimation error, averaged over
the devices from each fit's (X'X)^-1 in units of sigma_within^2: `level_variance` (the level's, a bias that
stays in every later score of the device) and `cycle_variance` (the harmonic's at a uniformly random time
of day, a bias that averages out over a day); docs/drift.md says how the engine accounts for both.
Idle windows (inference_count == 0) carry no input statistics and are left out of the input fits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fleetwatch.baselines.model import DAY_S, Baseline, ChannelBaseline, Gaussian
from fleetwatch.drift.stats import goodness_of_fit

CONFIDENCE_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
#: Training data file format (.npz): these arrays, plus optional `labels` (N,) and scalars `window_s`.
TRAINING_ARRAYS = ("windows", "confidence", "predicted")
#: A device needs this many active reference windows before its own level is trusted.
MIN_DEVICE_WINDOWS = 12
_LOG_FLOOR = 1e-4


def aggregate_windows(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw input windows (W, samples, channels) -> window means and population variances, at wire
    resolution (0.001 and 0.0001), as the firmware reports them."""
    mean = np.round(windows.mean(axis=1), 3)
    var = np.round(windows.var(axis=1), 4)
    return mean, var


def fit_training(
    arrays: Mapping[str, np.ndarray],
    *,
    model_id: int,
    version: str,
    fitted_at: int,
    window_s: int = 3600,
    n_classes: int = 4,
) -> Baseline:
    """A baseline from training data: `windows` (W, samples, channels) raw inputs, `confidence` (N,) top-1
    confidences and `predicted` (N,) classes of a validation set, optional `labels` (N,)."""
    missing = [k for k in TRAINING_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"training data lacks {missing}; expected arrays {TRAINING_ARRAYS} (+ optional labels)")
    windows = np.asarray(arrays["windows"], dtype=float)
    if windows.ndim != 3 or windows.shape[1] < 2:
        raise ValueError("`windows` must be (windows, samples >= 2, channels)")
    mean, var = aggregate_windows(windows)
    log_var = np.log(np.maximum(var, _LOG_FLOOR))
    channels = tuple(
        ChannelBaseline(
            window_mean=Gaussian(float(mean[:, c].mean()), float(mean[:, c].std(ddof=1))),
            sigma_within=float(mean[:, c].std(ddof=1)),
            log_var=Gaussian(float(log_var[:, c].mean()), float(log_var[:, c].std(ddof=1))),
        )
        for c in range(windows.shape[2])
    )
    confidence = np.clip(np.asarray(arrays["confidence"], dtype=float), 0.0, 1.0)
    bins = np.minimum((confidence * 10).astype(int), 9)
    hist = np.bincount(bins, minlength=10)
    predicted = np.asarray(arrays["predicted"], dtype=int)
    priors = np.bincount(predicted, minlength=n_classes)[:n_classes]
    calibration = None
    if "labels" in arrays:
        correct = np.asarray(arrays["labels"], dtype=int) == predicted
        hits = np.bincount(bins, weights=correct, minlength=10)
        midpoints = (np.array(CONFIDENCE_EDGES[:-1]) + np.array(CONFIDENCE_EDGES[1:])) / 2
        calibration = tuple(np.where(hist > 0, hits / np.maximum(hist, 1), midpoints).tolist())
    return Baseline(
        model_id=model_id,
        version=version,
        source="training",
        fitted_at=fitted_at,
        time_range=None,
        window_s=window_s,
        channels=channels,
        confidence=tuple((hist / hist.sum()).tolist()),
        confidence_edges=CONFIDENCE_EDGES,
        class_priors=tuple((priors / priors.sum()).tolist()),
        calibration=calibration,
        anomaly_rate=0.0,
        anomaly_dispersion=1.0,
        anomaly_concentration=float("inf"),
        latency_p95_ms=None,
        mem_peak_pct=None,
        reboot_rate=None,
        windows=len(windows),
        devices=0,
    )


def fit_reference(
    columns: Mapping[str, np.ndarray],
    *,
    model_id: int,
    version: str,
    fitted_at: int,
    time_range: tuple[int, int],
    calibration: tuple[float, ...] | None = None,
    cohort: str = "",
) -> Baseline:
    """A baseline from a reference period of telemetry columns (as `Store.read_frames` returns them)."""
    device = np.asarray(columns["device"], dtype=object).astype(str)
    count = np.asarray(columns["inference_count"], dtype=float)
    if len(device) == 0:
        raise ValueError("no telemetry in the reference period")
    active = count > 0
    ids, index = np.unique(device, return_inverse=True)
    n_channels = sum(1 for k in columns if k.startswith("input_mean_"))
    channels = []
    per_device = np.bincount(index[active], minlength=len(ids))
    trusted = per_device >= MIN_DEVICE_WINDOWS
    middle = np.asarray(columns["time"], dtype=float) + _window_mid(columns)
    phase = 2 * np.pi * (middle % DAY_S) / DAY_S
    design = np.stack([np.ones(len(phase)), np.sin(phase), np.cos(phase)], axis=1)[active]
    gram = np.zeros((len(ids), 3, 3))
    np.add.at(gram, index[active], design[:, :, None] * design[:, None, :])
    solvable = trusted & (np.abs(np.linalg.det(gram)) > 1e-9)
    profiles = np.zeros((len(ids), n_channels, 3))
    inverse = np.linalg.inv(gram[solvable]) if solvable.any() else np.zeros((0, 3, 3))
    for c in range(n_channels):
        mean = np.asarray(columns[f"input_mean_{c}"], dtype=float)
        log_var = np.log(np.maximum(np.asarray(columns[f"input_var_{c}"], dtype=float), _LOG_FLOOR))
        rhs = np.zeros((len(ids), 3))
        np.add.at(rhs, index[active], design * mean[active, None])
        coef = np.zeros((len(ids), 3))
        coef[solvable] = np.linalg.solve(gram[solvable], rhs[solvable][:, :, None])[:, :, 0]
        sums = np.bincount(index[active], weights=mean[active], minlength=len(ids))
        coef[~solvable, 0] = sums[~solvable] / np.maximum(per_device[~solvable], 1)
        profiles[:, c] = coef
        residual = mean[active] - (design * coef[index[active]]).sum(axis=1)
        dof = max(int(active.sum()) - 3 * int(solvable.sum()) - int((~solvable & (per_device > 0)).sum()), 1)
        channels.append(
            ChannelBaseline(
                window_mean=Gaussian(float(mean[active].mean()), float(mean[active].std(ddof=1))),
                sigma_within=float(np.sqrt((residual**2).sum() / dof)),
                log_var=Gaussian(float(log_var[active].mean()), float(log_var[active].std(ddof=1))),
            )
        )
    hist = np.stack([np.asarray(columns[f"conf_hist_{b}"], dtype=float) for b in range(10)], axis=1).sum(axis=0)
    n_classes = sum(1 for k in columns if k.startswith("class_counts_"))
    classes = np.stack([np.asarray(columns[f"class_counts_{k}"], dtype=float) for k in range(n_classes)], axis=1)
    anomalies = np.asarray(columns["anomaly_count"], dtype=float)
    rate, dispersion = _anomaly_rate_and_dispersion(anomalies[active], count[active])
    mean_n = float(count[active].mean())
    concentration = float("inf") if dispersion <= 1.0 or mean_n <= 1 else 1 / ((dispersion - 1) / (mean_n - 1)) - 1
    flags = np.asarray(columns["flags"], dtype=np.int64)
    conf_rows = np.stack([np.asarray(columns[f"conf_hist_{b}"], dtype=float) for b in range(10)], axis=1)[active]
    return Baseline(
        model_id=model_id,
        version=version,
        source="reference",
        fitted_at=fitted_at,
        time_range=time_range,
        window_s=int(np.median(np.asarray(columns["window_s"]))),
        channels=tuple(channels),
        confidence=tuple((hist / max(hist.sum(), 1)).tolist()),
        confidence_edges=CONFIDENCE_EDGES,
        class_priors=tuple((classes.sum(axis=0) / max(classes.sum(), 1)).tolist()),
        calibration=calibration,
        anomaly_rate=rate,
        anomaly_dispersion=dispersion,
        anomaly_concentration=concentration,
        latency_p95_ms=_gaussian(np.log(np.maximum(np.asarray(columns["latency_p95_ms"], dtype=float)[active], 1e-3))),
        mem_peak_pct=_gaussian(np.asarray(columns["mem_peak_pct"], dtype=float)),
        reboot_rate=float(((flags >> 3) & 1).mean()),
        windows=len(device),
        devices=len(ids),
        confidence_dispersion=_dispersion(conf_rows, hist),
        class_dispersion=_dispersion(classes[active], classes.sum(axis=0)),
        device_levels={str(d): tuple(profiles[i].ravel().tolist()) for i, d in enumerate(ids) if solvable[i]},
        level_variance=float(inverse[:, 0, 0].mean()) if len(inverse) else 0.0,
        cycle_variance=float((inverse[:, 1, 1] + inverse[:, 2, 2]).mean() / 2) if len(inverse) else 0.0,
        cohort=cohort,
    )


def _window_mid(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(columns["window_s"], dtype=float) / 2 if "window_s" in columns else 1800.0


def _dispersion(rows: np.ndarray, totals: np.ndarray) -> float:
    """Overdispersion of count vectors against their pooled proportions: mean G / df (at least 1).

    A multinomial gives 1; windows whose mix varies more (Dirichlet-multinomial) give more, and the
    engine divides its G statistics by this so a healthy fleet does not alarm on sampling noise."""
    _, g, df, _ = goodness_of_fit(rows, totals / max(totals.sum(), 1))
    ok = df > 0
    return max(float(np.mean(g[ok] / df[ok])), 1.0) if ok.any() else 1.0


def _gaussian(values: np.ndarray) -> Gaussian:
    return Gaussian(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def _anomaly_rate_and_dispersion(anomalies: np.ndarray, count: np.ndarray) -> tuple[float, float]:
    """Pooled rate p and the quasi-binomial dispersion phi = Pearson chi2 / (windows - 1), at least 1.

    Under a plain binomial phi is 1; beta-binomial windows (the rate itself varies window to window) give
    phi > 1, and the engine widens its anomaly test by sqrt(phi).
    """
    p = float(anomalies.sum() / max(count.sum(), 1))
    if len(count) < 2 or p <= 0 or p >= 1:
        return p, 1.0
    chi2 = ((anomalies - count * p) ** 2 / (count * p * (1 - p))).sum()
    return p, max(float(chi2 / (len(count) - 1)), 1.0)
