"""`fleetwatch baseline fit | list | show`: versioned baselines per model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.backfill import parse_time


@click.group("baseline")
def command() -> None:
    """Baselines: what healthy telemetry of a model looks like."""


@command.command("fit")
@click.option(
    "--training",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Training data .npz: windows (W, samples, channels), confidence, predicted[, labels].",
)
@click.option("--model-id", type=int, help="The model the baseline is for (required with --training).")
@click.option("--reference-from", "ref_from", help="Start of a healthy reference period (Unix s or ISO).")
@click.option("--reference-to", "ref_to", help="End of the reference period.")
@click.option("--calibration-from", type=str, help="Take the calibration map from this baseline version.")
@config_option
def fit(
    training: Path | None,
    model_id: int | None,
    ref_from: str | None,
    ref_to: str | None,
    calibration_from: str | None,
    config_path: Path | None,
) -> None:
    """Fit a baseline from training data or from a reference period of stored telemetry (one per model)."""
    from fleetwatch.baselines import BaselineStore, fit_reference, fit_training

    settings = settings_from(config_path)
    baselines = BaselineStore(settings.baselines_dir)
    now = int(time.time())
    if training is not None:
        if model_id is None:
            raise click.UsageError("--training needs --model-id (the CRC-32 of the model blob)")
        with np.load(training) as arrays:
            data = {k: arrays[k] for k in arrays.files}
        baseline = fit_training(
            data,
            model_id=model_id,
            version=baselines.next_version(model_id),
            fitted_at=now,
            window_s=settings.drift.window_s,
        )
        click.echo(f"wrote {baselines.save(baseline)}")
        return
    if not (ref_from and ref_to):
        raise click.UsageError("say what to fit from: --training FILE, or --reference-from T0 --reference-to T1")
    from fleetwatch.frames import Registry
    from fleetwatch.sinks import open_store

    start, end = parse_time(ref_from), parse_time(ref_to)
    store = open_store(settings.store_url)
    try:
        columns = store.read_frames(start, end, schema=Registry.with_dirs(settings.frames.schema_dirs).get(1))
    finally:
        store.close()
    calibration = baselines.get(calibration_from).calibration if calibration_from else None
    models = np.asarray(columns["model_id"]).astype(str)
    if not len(models):
        raise click.ClickException("no telemetry in the reference period")
    for model in sorted(set(models.tolist())):
        rows = models == model
        baseline = fit_reference(
            {k: np.asarray(v)[rows] for k, v in columns.items()},
            model_id=int(model),
            version=baselines.next_version(int(model)),
            fitted_at=now,
            time_range=(start, end),
            calibration=calibration,
        )
        click.echo(f"wrote {baselines.save(baseline)} ({baseline.devices} devices, {baseline.windows} windows)")


@command.command("list")
@config_option
def list_baselines(config_path: Path | None) -> None:
    """Every baseline: version, source, model, time range, size."""
    from fleetwatch.baselines import BaselineStore

    for b in BaselineStore(settings_from(config_path).baselines_dir).list():
        span = f"{b.time_range[0]}..{b.time_range[1]}" if b.time_range else "-"
        click.echo(
            f"{b.version:<32} {b.source:<9} model {b.model_id:<12} {span:<23} {b.devices} devices {b.windows} windows"
        )


@command.command("show")
@click.argument("version")
@config_option
def show(version: str, config_path: Path | None) -> None:
    """One baseline as JSON (with its provenance)."""
    from fleetwatch.baselines import BaselineStore

    try:
        baseline = BaselineStore(settings_from(config_path).baselines_dir).get(version)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(json.dumps(baseline.to_json(), indent=2))
