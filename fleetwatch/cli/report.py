"""`fleetwatch report --device D | --cohort C [--from T0 --to T1] -o report.html`."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.backfill import parse_time


@click.command("report")
@click.option("--device", help="One device id.")
@click.option("--cohort", help="A cohort: tag=value from the inventory, fw_version=X.Y.Z or model_id=N (mean).")
@click.option("--from", "start", help="Unix s or ISO time (default: 7 days before --to).")
@click.option("--to", "end", help="Unix s or ISO time (default: now).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@config_option
def command(
    device: str | None, cohort: str | None, start: str | None, end: str | None, output: Path, config_path: Path | None
) -> None:
    """Plots of each signal against its baseline band with the findings marked, as one HTML file."""
    if bool(device) == bool(cohort):
        raise click.UsageError("say what to report on: --device D or --cohort tag=value")
    try:
        import matplotlib  # noqa: F401 - only checking that the optional extra is installed
    except ImportError:
        raise click.ClickException("reports need matplotlib: pip install 'fleetwatch[report]'") from None
    from fleetwatch.baselines import BaselineStore
    from fleetwatch.drift.scopes import cohort_masks, read_inventory
    from fleetwatch.frames import Registry
    from fleetwatch.report import render, signal_series
    from fleetwatch.sinks import open_store

    settings = settings_from(config_path)
    t1 = parse_time(end) if end else int(time.time())
    t0 = parse_time(start) if start else t1 - 7 * 86400
    store = open_store(settings.store_url)
    try:
        schema = Registry.with_dirs(settings.frames.schema_dirs).get(1)
        columns = store.read_frames(t0, t1, schema=schema, devices=[device] if device else None)
        key = device or cohort or ""
        findings = store.read_table("findings", t0, t1 + 1, columns=["severity"], where={"key": [key]})
    finally:
        store.close()
    if cohort:
        inventory = read_inventory(settings.fleet.inventory) if settings.fleet.inventory else None
        mask = cohort_masks(columns, inventory).get(cohort)
        if mask is None:
            raise click.ClickException(f"no device of cohort {cohort!r} reported between {t0} and {t1}")
        columns = _mean_per_window(columns, mask)
    if not len(columns["time"]):
        raise click.ClickException(f"no telemetry for {key!r} between {t0} and {t1}")
    model = int(np.asarray(columns["model_id"]).astype(str)[-1])
    baseline = BaselineStore(settings.baselines_dir).latest(model)
    if baseline is None:
        raise click.ClickException(f"no baseline for model {model}: fleetwatch baseline fit first")
    bad = findings.get("severity", np.array([])) != "ok"
    alerts: dict[str, list[int]] = {}
    for t, signal in zip(
        findings["time"][bad].tolist(), findings.get("signal", np.array([]))[bad].tolist(), strict=True
    ):
        alerts.setdefault(signal, []).append(t)
    notes = [
        f"{'device' if device else 'cohort'} {key}, {len(columns['time'])} windows, model {model}",
        f"baseline {baseline.version} ({baseline.source})",
        f"{int(bad.sum())} findings marked in red",
    ]
    page = render(
        f"fleetwatch report: {key}",
        columns["time"],
        signal_series(columns, baseline),
        {k: np.array(v) for k, v in alerts.items()},
        notes,
    )
    output.write_text(page, encoding="utf-8")
    click.echo(f"wrote {output}")


def _mean_per_window(columns: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The cohort as one series: per window, the sum of counts and the mean of levels."""
    times, index = np.unique(np.asarray(columns["time"])[mask], return_inverse=True)
    out: dict[str, np.ndarray] = {"time": times}
    for name, values in columns.items():
        values = np.asarray(values)[mask]
        if name == "time" or values.dtype.kind not in "iuf":
            out.setdefault(
                name, values[np.searchsorted(np.asarray(columns["time"])[mask], times)] if len(times) else values
            )
            continue
        sums = np.bincount(index, weights=values.astype(float), minlength=len(times))
        counts = np.bincount(index, minlength=len(times))
        additive = name.startswith(("conf_hist_", "class_counts_")) or name in ("inference_count", "anomaly_count")
        out[name] = sums if additive else sums / np.maximum(counts, 1)
    return out
