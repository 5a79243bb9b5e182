"""The drift runner on a real embedded store: a check reads only the columns the engine and the bands use,
and finds, keeps and writes what an evaluation of the whole window does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fleetwatch.baselines import BaselineStore, fit_reference
from fleetwatch.drift.bands import MEASUREMENT as BANDS
from fleetwatch.drift.bands import band_columns
from fleetwatch.drift.engine import DriftSettings, EngineState, evaluate
from fleetwatch.drift.runner import DriftRunner, drift_columns
from fleetwatch.drift.scopes import cohort_masks
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.simulate import Change, FleetSpec, Target, simulate
from fleetwatch.sinks import open_store

SCHEMA = Registry.builtin().get(1)
REF, EVAL, HOUR = 48, 4, 3600


def test_a_check_reads_the_drift_columns_and_finds_what_the_whole_window_finds(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=40, seed=11)
    change = Change("anomaly_rate", 0.10, Target(devices=(3, 4, 5)), onset=REF + 1)
    telemetry = simulate(spec, [change], n_windows=REF + EVAL)
    store = open_store(f"embedded://{tmp_path / 'store'}")
    decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin())
    store.write_frames(decoded.batches[1])
    start = int(spec.start)
    split = start + REF * HOUR
    reference = store.read_frames(start, split, schema=SCHEMA)
    baselines = BaselineStore(tmp_path / "baselines")
    version = baselines.next_version(spec.model_id)
    baseline = fit_reference(
        reference, model_id=spec.model_id, version=version, fitted_at=split, time_range=(start, split)
    )
    baselines.save(baseline)
    columns = drift_columns(SCHEMA)
    assert {"inference_count", "latency_p95_ms", "conf_hist_9", "class_counts_3"} <= set(columns)
    assert not {"seq", "received", "latency_p50_ms", "battery_mv"} & set(columns)

    runner = DriftRunner(store, SCHEMA, baselines, DriftSettings(), HOUR)
    state = EngineState()
    found = 0
    for at in range(split + HOUR, split + (EVAL + 1) * HOUR, HOUR):
        window = store.read_frames(at - HOUR, at, schema=SCHEMA)
        expected, state = evaluate(
            window, {spec.model_id: baseline}, cohort_masks(window, None), state, DriftSettings(), at, HOUR
        )
        findings = runner.check(at)
        assert json.dumps([f.to_json() for f in findings]) == json.dumps([f.to_json() for f in expected])
        assert json.dumps(runner.state.to_json()) == json.dumps(state.to_json())
        time, tags, fields = band_columns(window, {spec.model_id: baseline}, at, HOUR)
        written = store.read_table(BANDS, at - HOUR, at - HOUR + 1)
        names = ("device", "signal", "mean", "lower", "upper")
        computed = {**tags, **fields}
        assert sorted(zip(*(written[n].tolist() for n in names), strict=True)) == sorted(
            zip(*(np.asarray(computed[n]).tolist() for n in names), strict=True)
        )
        assert written["time"].tolist() == time.tolist()
        found += sum(f.severity != "ok" for f in findings)
    assert found
    store.close()
