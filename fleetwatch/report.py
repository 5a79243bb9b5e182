"""`fleetwatch report`: one HTML page of plots, each signal against its baseline band, findings marked.

For people who would rather look than read: a device's (or a cohort's mean) window values over time, the
baseline's expected level with a band of +-3 sd, and a red mark at every window with a non-ok finding.
Plots are rendered with matplotlib to inline SVG, so the page is one self-contained file an alert can
link to.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np

from fleetwatch.baselines.model import Baseline


def signal_series(columns: Mapping[str, np.ndarray], baseline: Baseline) -> dict[str, tuple[np.ndarray, float, float]]:
    """Signal -> (values per row, expected level, sd) for the signals worth plotting."""
    n = np.asarray(columns["inference_count"], dtype=float)
    out: dict[str, tuple[np.ndarray, float, float]] = {}
    for c, channel in enumerate(baseline.channels):
        values = np.where(n > 0, np.asarray(columns[f"input_mean_{c}"], dtype=float), np.nan)
        out[f"input_mean_{c}"] = (values, channel.window_mean.mean, channel.window_mean.sd)
        log_var = np.log(np.maximum(np.asarray(columns[f"input_var_{c}"], dtype=float), 1e-4))
        out[f"input_var_{c} (log)"] = (np.where(n > 0, log_var, np.nan), channel.log_var.mean, channel.log_var.sd)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.asarray(columns["anomaly_count"], dtype=float) / n
    sd = float(
        np.sqrt(
            baseline.anomaly_dispersion * baseline.anomaly_rate * (1 - baseline.anomaly_rate) / max(np.nanmedian(n), 1)
        )
    )
    out["anomaly_rate"] = (rate, baseline.anomaly_rate, sd)
    hist = np.stack([np.asarray(columns[f"conf_hist_{b}"], dtype=float) for b in range(10)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = hist @ baseline.accuracy_map() / n
    expected = float(np.dot(baseline.confidence, baseline.accuracy_map()))
    out["estimated_accuracy"] = (accuracy, expected, float(np.nanstd(accuracy)) or 0.01)
    if baseline.latency_p95_ms is not None:
        log_p95 = np.log(np.maximum(np.asarray(columns["latency_p95_ms"], dtype=float), 1e-3))
        out["latency_p95 (log ms)"] = (log_p95, baseline.latency_p95_ms.mean, baseline.latency_p95_ms.sd)
    return out


def render(
    title: str,
    time: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, float, float]],
    alerts: Mapping[str, np.ndarray],
    notes: list[str],
) -> str:
    """The HTML page: one plot per signal; `alerts[signal]` are window-end times of non-ok findings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    when = [datetime.fromtimestamp(int(t), UTC) for t in np.asarray(time).tolist()]
    figures = []
    for name, (values, level, sd) in series.items():
        fig, ax = plt.subplots(figsize=(9, 2.4))
        ax.plot(when, values, lw=1, color="#1f4e79", label="window value")
        ax.axhline(level, color="#555", lw=0.8, ls="--", label="baseline")
        ax.axhspan(level - 3 * sd, level + 3 * sd, color="#9ecae1", alpha=0.35, label="baseline +-3 sd")
        base = name.split(" ")[0]
        for t in np.asarray(alerts.get(base, []), dtype=np.int64).tolist():
            ax.axvline(datetime.fromtimestamp(t, UTC), color="#c0392b", lw=0.8, alpha=0.6)
        ax.set_title(name, loc="left", fontsize=10)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
        fig.autofmt_xdate()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight")
        plt.close(fig)
        figures.append(buffer.getvalue().split("?>", 1)[-1])
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><ul>{items}</ul>{''.join(figures)}</body></html>"
    )
