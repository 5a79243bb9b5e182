"""The drift engine on simulated fleets: it finds injected changes, stays quiet on a healthy fleet, and the
CLI backtest prints alert events from the embedded store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.baselines import Baseline, BaselineStore, fit_reference, fit_training
from fleetwatch.drift.engine import DriftSettings, EngineState, SumTable, evaluate
from fleetwatch.drift.scopes import cohort_masks, read_inventory
from fleetwatch.drift.sequential import CusumState
from fleetwatch.frames import Registry, decode_messages, format_fw_version
from fleetwatch.simulate import Change, FleetSpec, Target, inventory_csv, simulate, training_windows
from fleetwatch.sinks import open_store

REF, EVAL = 168, 48


def flat(telemetry, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Simulator columns as Store.read_frames returns them."""
    out = {"device": np.asarray(telemetry.device)[rows]}
    for name, values in telemetry.columns.items():
        values = np.asarray(values)[rows]
        if values.ndim == 2:
            out.update({f"{name}_{i}": values[:, i] for i in range(values.shape[1])})
        else:
            out[name] = values
    out["time"] = out["window_start"]
    out["fw_version"] = format_fw_version(out["fw_version"])
    out["model_id"] = out["model_id"].astype(str)
    return out


def inventory_of(spec: FleetSpec) -> dict[str, dict[str, str]]:
    return {
        r["device"]: {k: v for k, v in r.items() if k != "device"}
        for r in csv.DictReader(io.StringIO(inventory_csv(spec)))
    }


def run(spec: FleetSpec, changes: list[Change], windows: int = EVAL) -> tuple[list, Baseline]:
    """The non-ok findings of `windows` windows after REF reference windows, as (window, finding)."""
    telemetry = simulate(spec, changes, n_windows=REF + windows)
    window = np.asarray(telemetry.window)
    ref = flat(telemetry, window < REF)
    baseline = fit_reference(
        ref, model_id=int(ref["model_id"][0]), version="model-1-v1", fitted_at=0, time_range=(0, 1)
    )
    inventory = inventory_of(spec)
    state, found = EngineState(), []
    for w in range(REF, REF + windows):
        columns = flat(telemetry, window == w)
        findings, state = evaluate(
            columns,
            {baseline.model_id: baseline},
            cohort_masks(columns, inventory),
            state,
            DriftSettings(),
            at=spec.start + (w + 1) * 3600,
            window_s=3600,
        )
        found += [(w, f) for f in findings if f.severity != "ok"]
    return found, baseline


def test_a_healthy_fleet_stays_within_the_false_alarm_budget() -> None:
    found, baseline = run(FleetSpec(n_devices=200, seed=21), [])
    device_days = 200 * EVAL / 24
    device_alarms = [f for _, f in found if f.scope == "device"]
    assert len(device_alarms) <= 2, f"{len(device_alarms)} false device alarms in {device_days:.0f} device-days"
    assert [f for _, f in found if f.scope != "device"] == []
    assert baseline.devices == 200 and len(baseline.device_levels) == 200


def test_device_shift_and_anomaly_rise_are_found_on_their_devices_only() -> None:
    spec = FleetSpec(n_devices=200, seed=22)
    shifted = Target(count=20, seed=1)
    anomalous = Target(devices=tuple(range(150, 160)))
    changes = [
        Change("input_mean_shift", 2.0, shifted, onset=REF + 4, channels=(0,)),
        Change("anomaly_rate", 0.08, anomalous, onset=REF + 4),
    ]
    found, _ = run(spec, changes)
    ids = [f"dev-{i:05d}" for i in range(200)]
    from fleetwatch.simulate import Fleet

    shifted_ids = {ids[i] for i in np.flatnonzero(shifted.mask(Fleet.of(spec)))}
    device = [(w, f) for w, f in found if f.scope == "device"]
    mean_hits = {f.key for _, f in device if f.signal == "input_mean_0"}
    anomaly_hits = {f.key for _, f in device if f.signal == "anomaly_rate"}
    assert mean_hits == shifted_ids
    assert anomaly_hits == {ids[i] for i in range(150, 160)}
    assert all(w >= REF + 4 for w, _ in found)
    first = min(w for w, f in device if f.signal == "input_mean_0")
    assert first - (REF + 4) < 10


def test_a_cohort_shift_too_small_for_devices_alerts_at_cohort_level() -> None:
    spec = FleetSpec(n_devices=300, seed=23)
    inventory = inventory_csv(spec)
    site = next(csv.DictReader(io.StringIO(inventory)))["site"]
    found, _ = run(spec, [Change("input_mean_shift", 0.5, Target(where=f"site={site}"), onset=REF + 2, channels=(1,))])
    cohort = [w for w, f in found if f.scope == "cohort" and f.key == f"site={site}" and f.signal == "input_mean_1"]
    assert cohort and min(cohort) - (REF + 2) <= 6
    assert not [f for _, f in found if f.scope == "cohort" and f.key.startswith("site=") and f.key != f"site={site}"]


def test_baseline_roundtrip_and_training_fit(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=10, seed=2)
    data = training_windows(spec, 300)
    baseline = fit_training(
        {"windows": data.samples, "confidence": data.confidence, "predicted": data.predicted, "labels": data.labels},
        model_id=7,
        version="model-7-v1",
        fitted_at=1,
    )
    assert baseline.channels[0].window_mean.sd == pytest.approx(spec.sigma(0), rel=0.15)
    assert np.allclose(baseline.calibration, np.linspace(0.05, 0.95, 10), atol=0.08)
    store = BaselineStore(tmp_path)
    store.save(baseline)
    assert store.next_version(7) == "model-7-v2"
    assert store.latest(7) == baseline and store.get("model-7-v1") == baseline


def test_the_baseline_store_parses_a_file_once_and_again_when_it_changes(tmp_path: Path) -> None:
    telemetry = simulate(FleetSpec(n_devices=8, seed=3), [], n_windows=30)
    ref = flat(telemetry, np.ones(len(telemetry.device), dtype=bool))
    baseline = fit_reference(ref, model_id=1, version="model-1-v1", fitted_at=0, time_range=(0, 1))
    store = BaselineStore(tmp_path)
    path = store.save(baseline)
    first = store.latest(1)
    assert first == baseline and store.latest_for(["1"])[1] is first  # parsed once, handed out again
    data = json.loads(path.read_text(encoding="utf-8"))
    data["anomaly_rate"] = 0.5
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")  # another size: re-read
    assert store.latest(1).anomaly_rate == 0.5
    assert BaselineStore(tmp_path).get("model-1-v1").anomaly_rate == 0.5


def test_a_window_of_models_without_a_baseline_gets_only_the_device_alarm_count() -> None:
    telemetry = simulate(FleetSpec(n_devices=10, seed=2), [], n_windows=1)
    window = flat(telemetry, np.ones(10, dtype=bool))
    findings, state = evaluate(
        window, {}, cohort_masks(window, None), EngineState(), DriftSettings(), int(window["time"][0]) + 3600, 3600
    )
    assert findings == [] and state.cusum.rows == {}


def test_reference_fit_reports_the_error_of_the_device_profiles(tmp_path: Path) -> None:
    """level_variance and cycle_variance are the means over the devices of their fit's (X'X)^-1 entries,
    checked against a per-device reference built with numpy's least squares (the covariance of the
    coefficients of unit-variance noise); both survive a save and load, and old files read as 0."""
    telemetry = simulate(FleetSpec(n_devices=12, seed=4, idle_probability=0.2), [], n_windows=60)
    ref = flat(telemetry, np.ones(len(telemetry.device), dtype=bool))
    baseline = fit_reference(ref, model_id=1, version="model-1-v1", fitted_at=0, time_range=(0, 1))
    level, cycle = [], []
    for device in np.unique(ref["device"]):
        rows = (ref["device"] == device) & (ref["inference_count"] > 0)
        phase = 2 * np.pi * ((ref["time"][rows] + 1800) % 86_400) / 86_400
        x = np.stack([np.ones(rows.sum()), np.sin(phase), np.cos(phase)], axis=1)
        cov = np.linalg.pinv(x.T @ x)
        level.append(cov[0, 0])
        cycle.append((cov[1, 1] + cov[2, 2]) / 2)
    assert baseline.level_variance == pytest.approx(np.mean(level), rel=1e-9)
    assert baseline.cycle_variance == pytest.approx(np.mean(cycle), rel=1e-9)
    assert baseline.score_bias_var == pytest.approx(np.mean(level) / (1 + np.mean(cycle)), rel=1e-9)
    store = BaselineStore(tmp_path)
    store.save(baseline)
    assert store.get("model-1-v1") == baseline
    old = {k: v for k, v in baseline.to_json().items() if k not in ("level_variance", "cycle_variance")}
    assert Baseline.from_json(old).score_bias_var == 0.0 and Baseline.from_json(old).score_scale == 1.0


def test_levels_are_each_devices_own_profile_in_any_order_and_the_fleet_level_for_others() -> None:
    telemetry = simulate(FleetSpec(n_devices=30, seed=6), [], n_windows=48)
    ref = flat(telemetry, np.ones(len(telemetry.device), dtype=bool))
    baseline = fit_reference(ref, model_id=1, version="model-1-v1", fitted_at=0, time_range=(0, 1))
    known, t = list(baseline.device_levels), 5 * 3600 + 1800.0
    basis = np.array([1.0, np.sin(2 * np.pi * t / 86_400), np.cos(2 * np.pi * t / 86_400)])
    fleet = [c.window_mean.mean for c in baseline.channels]
    for devices in (known, known[:10], [*known[::-2], "dev-new"]):  # the first rows in order (a slice), or not
        levels, found = baseline.levels_for(np.array(devices, dtype=object), t)
        assert found.tolist() == [d in baseline.device_levels for d in devices]
        for level, device in zip(levels, devices, strict=True):
            profile = baseline.device_levels.get(device)
            expected = np.reshape(profile, (len(fleet), 3)) @ basis if profile else fleet
            assert level == pytest.approx(expected, rel=1e-12)


def test_inventory_needs_a_device_column(tmp_path: Path) -> None:
    path = tmp_path / "inv.csv"
    path.write_text("id,site\na,north\n")
    with pytest.raises(ValueError, match="needs a `device` column"):
        read_inventory(path)


def test_cli_fit_and_backtest_print_alert_events(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=60, seed=24)
    change = Change("anomaly_rate", 0.10, Target(devices=(3, 4, 5)), onset=REF + 5)
    telemetry = simulate(spec, [change], n_windows=REF + 24)
    store_url = f"embedded://{tmp_path / 'store'}"
    store = open_store(store_url)
    decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin())
    store.write_frames(decoded.batches[1])
    store.close()
    (tmp_path / "inventory.csv").write_text(inventory_csv(spec))
    env = {
        "FLEETWATCH_DATA_DIR": str(tmp_path / "data"),
        "FLEETWATCH_STORE__URL": store_url,
        "FLEETWATCH_FLEET__INVENTORY": str(tmp_path / "inventory.csv"),
    }
    start = int(spec.start)
    split = start + REF * 3600

    def cli(*args: str) -> str:
        import os

        return subprocess.run(
            [sys.executable, "-m", "fleetwatch", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "wrote" in cli("baseline", "fit", "--reference-from", str(start), "--reference-to", str(split))
    events = [
        json.loads(line)
        for line in cli(
            "drift", "backtest", "--from", str(split), "--to", str(split + 24 * 3600), "--json"
        ).splitlines()
    ]
    assert events and {"at", "scope", "key", "signal", "severity", "statistic", "p", "q", "effect"} <= set(events[0])
    hits = {e["key"] for e in events if e["scope"] == "device" and e["signal"] == "anomaly_rate"}
    assert hits == {"dev-00003", "dev-00004", "dev-00005"}
    assert all(e["at"] > split + 5 * 3600 for e in events)


def test_state_keeps_sums_open_findings_and_hot_devices_across_a_restart() -> None:
    keys = np.array(["dev-b", "dev-a", "dev-c"])
    sums = CusumState(np.array([1.5, 0.0, 0.25]), np.array([0.0, 0.0, 2.0]), np.array([3, 0, 1]))
    state = EngineState(open=frozenset({("device", "dev-b", "input_mean_0")}), hot=frozenset({("memory", "dev-c")}))
    state = state.with_sums("input_mean_0", keys, sums)
    state = state.with_sums("input_mean_0", np.array(["dev-c"]), CusumState(np.zeros(1), np.zeros(1), np.zeros(1, int)))
    assert state.to_json()["cusum"]["input_mean_0"]["keys"] == ["dev-b"]  # at rest (0, 0) is left out
    back = EngineState.from_json(json.loads(json.dumps(state.to_json())))
    got = back.sums("input_mean_0", np.array(["dev-a", "dev-b", "dev-x"]))
    assert got.upper.tolist() == [0.0, 1.5, 0.0] and got.run.tolist() == [0, 3, 0]
    assert back.open == state.open and back.hot == state.hot
    assert back.open_keys("device", "input_mean_0").tolist() == ["dev-b"]
    assert back.hot_devices("memory").tolist() == ["dev-c"]
    legacy = EngineState.from_json({"cusum": {"input_var_1": {"dev-q": [0.5, 0.0, 2]}}, "open": []})
    assert legacy.sums("input_var_1", np.array(["dev-q"])).upper.tolist() == [0.5]
    # written when the cohorts' sums were among the devices': theirs move to the cohort table
    mixed = {"input_mean_0": {"keys": ["dev-q", "fleet", "site=north"], "rows": [[1, 0, 1], [2, 0, 3], [0, 4, 2]]}}
    moved = EngineState.from_json({"cusum": mixed, "open": []})
    assert moved.cohort_cusum.to_json() == {
        "input_mean_0": {"keys": ["fleet", "site=north"], "rows": [[2.0, 0.0, 3.0], [0.0, 4.0, 2.0]]}
    }
    assert moved.sums("input_mean_0", np.array(["dev-q"])).upper.tolist() == [1.0]
    assert EngineState.from_json(json.loads(json.dumps(moved.to_json()))).cohort_cusum.to_json() == (
        moved.cohort_cusum.to_json()
    )


def test_a_device_named_like_a_cohort_keeps_its_own_cusum() -> None:
    """Devices and cohorts have separate CUSUM tables: a device called `fleet` or `site=north` must not step
    the cohort's sums, nor they its. The same windows with two devices renamed give the same findings."""
    spec = FleetSpec(n_devices=40, seed=5, tags={"site": ("north", "south")})
    telemetry = simulate(
        spec, [Change("input_mean_shift", 6.0, Target(devices=tuple(range(8))), onset=REF)], n_windows=REF + 3
    )
    window = np.asarray(telemetry.window)
    inventory = inventory_of(spec)
    renamed = {"dev-00000": "fleet", "dev-00001": "site=north"}
    results = []
    for names in ({}, renamed):

        def columns(rows: np.ndarray, names: dict[str, str] = names) -> dict[str, np.ndarray]:
            out = flat(telemetry, rows)
            out["device"] = np.array([names.get(d, d) for d in out["device"].tolist()], dtype=object)
            return out

        ref = columns(window < REF)
        baseline = fit_reference(ref, model_id=int(ref["model_id"][0]), version="v1", fitted_at=0, time_range=(0, 1))
        state, found = EngineState(), []
        for w in range(REF, REF + 3):
            now = columns(window == w)
            masks = cohort_masks(now, {names.get(d, d): tags for d, tags in inventory.items()})
            findings, state = evaluate(
                now, {baseline.model_id: baseline}, masks, state, DriftSettings(), spec.start + (w + 1) * 3600, 3600
            )
            back = {v: k for k, v in names.items()}
            found += [
                (f.scope, back.get(f.key, f.key) if f.scope == "device" else f.key, f.signal, f.severity, f.statistic)
                for f in findings
            ]
        results.append(sorted(found, key=repr))
    assert results[0] == results[1]
    alarmed = {(scope, key) for scope, key, _, severity, _ in results[1] if severity != "ok"}
    assert {("fleet", "fleet"), ("device", "dev-00000"), ("device", "dev-00001")} <= alarmed


def test_cusum_sums_of_many_streams_share_one_key_index() -> None:
    devices = np.array(["d0", "d1", "d2"], dtype=object)
    table = SumTable().with_keys(devices)
    index, _ = table.keys.positions(devices)
    sums = CusumState(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 0.5]), np.array([2, 7, 1]))
    table = table.put_at("input_mean_0", index, sums)  # the window's devices are the table's first rows
    table = table.put("input_mean_0", np.array(["d9"]), CusumState(np.ones(1), np.zeros(1), np.ones(1, int)))
    got = table.at("input_mean_0", index)
    assert got.upper.tolist() == [1.0, 0.0, 2.0] and got.run.tolist() == [2, 0, 1]  # at rest: run 0
    assert table.get("input_mean_0", np.array(["d2", "d9", "dx"])).upper.tolist() == [2.0, 1.0, 0.0]
    table = table.put_at(
        "input_mean_0", np.array([2, 0]), CusumState(np.array([5.0, 6.0]), np.zeros(2), np.ones(2, int))
    )
    assert table.get("input_mean_0", devices).upper.tolist() == [6.0, 0.0, 5.0]
    assert table.get("input_var_0", devices).upper.tolist() == [0.0] * 3  # a signal never set is at rest
    back = SumTable.from_json(json.loads(json.dumps(table.to_json())))
    assert (
        back.to_json()
        == table.to_json()
        == {"input_mean_0": {"keys": ["d0", "d2", "d9"], "rows": [[6.0, 0.0, 1.0], [5.0, 0.0, 1.0], [1.0, 0.0, 1.0]]}}
    )


def test_evaluate_leaves_the_callers_state_alone_and_rows_in_any_order_give_the_same_results() -> None:
    """`evaluate` updates its own copy of the CUSUM sums in place: the state passed in does not change (the
    same window from it gives the same findings again). Rows in another order than the sums' streams (read
    and written by gather and scatter, not as one block) give the same device findings and sums; cohort
    sums, added in another order, agree to rounding."""
    spec = FleetSpec(n_devices=150, seed=31)
    changes = [
        Change("input_mean_shift", 3.0, Target(count=12, seed=2), onset=REF + 1, channels=(0,)),
        Change("memory_increase", 25.0, Target(devices=tuple(range(20, 30))), onset=REF + 1),
        Change("input_mean_shift", 0.6, Target(where=f"site={inventory_site(spec)}"), onset=REF, channels=(1,)),
    ]
    telemetry = simulate(spec, changes, n_windows=REF + 10)
    window = np.asarray(telemetry.window)
    ref = flat(telemetry, window < REF)
    baseline = fit_reference(ref, model_id=int(ref["model_id"][0]), version="v1", fitted_at=0, time_range=(0, 1))
    inventory = inventory_of(spec)
    order = np.random.default_rng(3).permutation(spec.n_devices)

    def step(state: EngineState, w: int, shuffled: bool) -> tuple[list, EngineState]:
        columns = flat(telemetry, window == w)
        if shuffled:
            columns = {k: np.asarray(v)[order] for k, v in columns.items()}
        at = spec.start + (w + 1) * 3600
        masks = cohort_masks(columns, inventory)
        return evaluate(columns, {baseline.model_id: baseline}, masks, state, DriftSettings(), at, 3600)

    def split(findings: list) -> tuple[list, list]:
        """(the device findings in a fixed order, the cohort and fleet ones)."""
        return sorted((f for f in findings if f.scope == "device"), key=repr), [
            f for f in findings if f.scope != "device"
        ]

    straight, shuffled = EngineState(), EngineState()
    found: list = []
    for w in range(REF, REF + 10):
        before = json.dumps(straight.to_json())
        findings, after = step(straight, w, False)
        assert step(straight, w, False)[0] == findings and json.dumps(straight.to_json()) == before
        other, shuffled = step(shuffled, w, w > REF + 2)
        (devices, groups), (other_devices, other_groups) = split(findings), split(other)
        assert devices == other_devices and len(groups) == len(other_groups)
        for a, b in zip(groups, other_groups, strict=True):
            assert (a.identity, a.severity) == (b.identity, b.severity)
            assert (a.statistic, a.p, a.effect) == pytest.approx((b.statistic, b.p, b.effect), rel=1e-9)
        straight, found = after, found + findings
    assert {f.signal for f in found if f.scope == "device" and f.severity != "ok"} >= {"input_mean_0", "memory"}
    assert any(f.scope == "cohort" and f.signal == "input_mean_1" and f.severity != "ok" for f in found)
    for signal, part in straight.to_json()["cusum"].items():
        got = dict(zip(*shuffled.to_json()["cusum"][signal].values(), strict=True))
        want = dict(zip(*part.values(), strict=True))
        assert got.keys() == want.keys()
        for key, row in want.items():
            assert got[key] == (row if key.startswith("dev-") else pytest.approx(row, rel=1e-9))


def inventory_site(spec: FleetSpec) -> str:
    return next(csv.DictReader(io.StringIO(inventory_csv(spec))))["site"]


def test_small_cohorts_keep_their_budget_on_the_snapshot_signals() -> None:
    """Sites of 25 devices with nothing changed: a cohort's snapshot signals (confidence, classes, anomalies,
    ...) need p <= cohort_alpha, their share of the cohort budget, not a per-window BH q across cohorts,
    which a small cohort's mean z passes by chance every few hundred windows (the minimum effect of 0.25
    is only 1.25 sd of its Stouffer Z)."""
    assert DriftSettings().cohort_alpha == pytest.approx(1 / 12 / 8760)
    sites = tuple(f"s{i}" for i in range(8))
    found, _ = run(FleetSpec(n_devices=200, seed=4, tags={"site": {s: 1 / 8 for s in sites}}), [], windows=200)
    snapshot = [f for _, f in found if f.scope != "device" and f.signal in SNAPSHOT]
    assert snapshot == []


SNAPSHOT = ("confidence", "class_prior", "anomaly_rate", "accuracy", "latency_p95", "memory")
