"""The Grafana dashboards as code: every panel query runs, as Grafana would send it, against a real influxd
seeded by the fleet simulator through the real sink; the JSON validates against the Grafana 10/11 JSON
model; the committed files are what `fleetwatch grafana build` makes; Grafana's macro and variable
substitution (fleetwatch.grafana.macros) is checked rule by rule.

The other measurements come from the daemon's own writers, fed with the simulated fleet: `baseline_band`
from the drift runner's `band_columns` against a baseline fitted on the stored reference windows, `rollout`
from the rollout controller's `write_judgement` of real judge looks on the stored telemetry, `ingest` from
the daemon's `IngestCounters` over simulated counts. `findings` alone is a stand-in (with the schema the
drift runner writes, docs/data-model.md): the drift panels' tests need known severities on known devices
and windows, which a real engine run on a small simulated fleet does not give.
"""

from __future__ import annotations

import doctest
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from fleetwatch.actions.judge import METRICS, Look, judge_frames
from fleetwatch.actions.rollout import stage_label, write_judgement
from fleetwatch.actions.rollout_config import JudgeConfig
from fleetwatch.baselines.fit import fit_reference
from fleetwatch.drift.bands import MEASUREMENT as BANDS
from fleetwatch.drift.bands import band_columns
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.grafana import builder, macros
from fleetwatch.grafana.builder import DATASOURCE_UID, SCHEMA_VERSION, Dashboard, Panel, Query
from fleetwatch.grafana.dashboards import DASHBOARDS, SIGNALS, WINDOW
from fleetwatch.grafana.macros import Selection, TimeRange, interpolate
from fleetwatch.grafana.provisioning import alerting_files, build, to_yaml
from fleetwatch.ingestcounters import IngestCounters
from fleetwatch.localservers import Influxd
from fleetwatch.metrics import Metrics
from fleetwatch.simulate import FleetSimulator, FleetSpec, Telemetry
from fleetwatch.sinks import open_store
from fleetwatch.sinks.influx_setup import setup_v1

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "dashboards"
W = 3600
N_DEVICES = 12
N_WINDOWS = 30
STALE_DEVICE = "dev-00011"
DRIFTING_DEVICE = "dev-00001"
ROLLOUT_ID = "r-2026-kws-b"
#: The devices `_fleet` moves to the new model: the rollout's canary.
CANARY = ["dev-00000", "dev-00001", "dev-00002"]
STAGES = (5.0, 25.0)
NEW_MODEL, NEW_FW = 0xB0B, "1.1.0"
#: Panel width in pixels (Grafana's max data points) used for $__interval.
MAX_DATA_POINTS = 800


# ------------------------------------------------------------------------------------------- seeded store


@dataclass(frozen=True)
class Seeded:
    url: str
    http: str
    database: str
    end_ms: int
    telemetry: Telemetry
    stored_rows: np.ndarray

    def query(self, statement: str) -> dict[str, Any]:
        """Run InfluxQL as Grafana's data source does (POST /query, epoch=ms); the first statement's result."""
        data = urllib.parse.urlencode({"db": self.database, "q": statement, "epoch": "ms"}).encode()
        with urllib.request.urlopen(f"{self.http}/query", data=data, timeout=10) as response:
            body = json.loads(response.read())
        (result,) = body["results"]
        assert "error" not in result, f"{result['error']}\n{statement}"
        return result


def _fleet(start: int) -> tuple[Telemetry, np.ndarray]:
    """30 hourly windows of 12 devices; 3 devices move to a new model and firmware at window 20; one device
    falls silent for the last 4 windows. Returns the telemetry and which of its rows were sent."""
    sim = FleetSimulator(FleetSpec(n_devices=N_DEVICES, seed=3, start=start))
    first = sim.run(20)
    sim.deploy([0, 1, 2], NEW_MODEL, NEW_FW)
    telemetry = Telemetry.concat([first, sim.run(N_WINDOWS - 20)])
    sent = ~((telemetry.device == STALE_DEVICE) & (telemetry.window >= N_WINDOWS - 4))
    return telemetry, sent


def _findings(store: Any, ends: np.ndarray, devices: list[str], model_id: str) -> None:
    """What the drift engine writes: mostly ok, a drifting device (input_mean_0 warning, then critical), a
    cohort and the fleet with warnings."""
    rng = np.random.default_rng(7)
    rows: list[tuple[int, str, str, str, str, str]] = []
    for k, end in enumerate(ends.tolist()):
        late = k >= len(ends) - 6
        for device in devices:
            for signal in ("input_mean_0", "confidence", "anomaly_rate", "latency_p95"):
                severity = "ok"
                if device == DRIFTING_DEVICE and signal == "input_mean_0" and k >= len(ends) - 9:
                    severity = "critical" if late else "warning"
                if device == "dev-00002" and signal == "confidence" and k >= len(ends) - 4:
                    severity = "warning"
                rows.append((end, "device", device, signal, severity, model_id))
        for cohort in ("site=north", "site=south", f"fw_version={NEW_FW}", f"model_id={NEW_MODEL}"):
            drifting = cohort == f"model_id={NEW_MODEL}" and k >= len(ends) - 8
            rows.append((end, "cohort", cohort, "confidence", "warning" if drifting else "ok", model_id))
        for signal in ("anomaly_rate", "confidence"):
            rows.append((end, "fleet", "fleet", signal, "warning" if late else "ok", ""))
    t, scope, key, signal, severity, model = (np.array(c) for c in zip(*rows, strict=True))
    n = len(t)
    bad = severity != "ok"
    effect = np.where(bad, rng.uniform(0.8, 3.0, n), rng.uniform(0.0, 0.3, n))
    p = np.where(bad, 10 ** rng.uniform(-9, -4, n), rng.uniform(0.05, 1.0, n))
    written = store.write_table(
        "findings",
        t.astype(np.int64),
        {"scope": scope, "key": key, "signal": signal, "severity": severity, "model_id": model},
        {
            "statistic": np.where(bad, rng.uniform(4, 9, n), rng.normal(0, 1, n)),
            "p": p,
            "q": np.minimum(p * 20, 1.0),
            "effect": effect,
            "effect_name": np.where(np.isin(signal, ["input_mean_0", "latency_p95"]), "z", "psi").astype(object),
            "baseline_version": np.full(n, f"m{model_id}-v1", dtype=object),
            "window_start": (t - W).astype(np.int64),
            "window_end": t.astype(np.int64),
        },
    )
    assert written == n


def _baseline_bands(store: Any, start: int, ends: np.ndarray) -> None:
    """The drift runner's bands (`band_columns`, what `DriftRunner.check` writes) for each window ending at
    `ends`, against a baseline of the old model fitted on the first 12 windows (its devices only: the three
    devices on the new model have no baseline after the deploy)."""
    schema = Registry.builtin().get(1)
    reference = store.read_frames(start, start + 12 * W, schema=schema)
    model_id = int(reference["model_id"][0])
    baseline = fit_reference(
        reference, model_id=model_id, version="m-v1", fitted_at=start + 12 * W, time_range=(start, start + 12 * W)
    )
    signals = set()
    for end in ends.tolist():
        window = store.read_frames(end - W, end, schema=schema)
        time_, tags, fields = band_columns(window, {model_id: baseline}, end, W)
        assert store.write_table(BANDS, time_, tags, fields) == len(time_) > 0
        signals |= set(tags["signal"].tolist())
    assert signals == {s.name for s in SIGNALS}


def _rollout(store: Any, start: int, ends: np.ndarray) -> None:
    """What the rollout controller writes (`write_judgement`): the judge's looks at the last 10 window ends,
    the three devices on the new model as canary against the others as control, in two stages."""
    schema = Registry.builtin().get(1)
    deployed = start + 20 * W
    for k, end in enumerate(ends[-10:].tolist()):
        frames = store.read_frames(deployed, end, schema=schema)
        canary = np.isin(frames["device"], CANARY) & (frames["model_id"] == str(NEW_MODEL))
        control = ~np.isin(frames["device"], CANARY)
        verdict = judge_frames(
            {name: values[canary] for name, values in frames.items()},
            {name: values[control] for name, values in frames.items()},
            JudgeConfig(),
            Look(min(1.0, (k % 5 + 1) / 5), (k % 5) / 5),
        )
        assert write_judgement(store, ROLLOUT_ID, stage_label(STAGES, k // 5), verdict, end) == 2 * len(METRICS)


def _ingest(store: Any, end: int) -> None:
    """The daemon's counters (`IngestCounters`, written every 60 s) over 3 hours of simulated ingest."""
    rng = np.random.default_rng(11)
    metrics = Metrics()
    clock = [0]
    counters = IngestCounters(metrics, store, "fleetwatch-1", 60, clock=lambda: clock[0])
    for t in range(end - 3 * 3600, end, 60):
        received, quarantined = int(rng.poisson(12)), int(rng.poisson(0.5))
        metrics.messages_received.labels("mqtt").inc(received)
        metrics.frames_decoded.labels("1").inc(received - quarantined)
        metrics.frames_stored.inc(received - quarantined)
        metrics.frames_quarantined.labels("bad_crc").inc(quarantined)
        metrics.queue_depth.set(int(rng.integers(0, 40)))
        metrics.spool_bytes.set(int(rng.integers(0, 4096)))
        clock[0] = t
        assert counters.write() == 6  # received, decoded, stored, spooled, replayed, quarantined (bad_crc)


@pytest.fixture(scope="module")
def seeded(influxd: Influxd) -> Iterator[Seeded]:
    """One database for the module, seeded like a day of a small fleet ending in the current hour."""
    now = int(time.time())
    start = (now // W - N_WINDOWS + 1) * W
    database = f"grafana_{start}"
    url = influxd.url(database)
    setup_v1(url, retention="30d")
    telemetry, sent = _fleet(start)
    store = open_store(url)
    try:
        frames = telemetry.frames()[sent]
        messages = frames.view(f"V{frames.shape[1]}").ravel().tolist()
        decoded = decode_messages(messages, telemetry.device[sent], telemetry.received[sent], Registry.builtin())
        assert not decoded.rejects
        assert sum(store.write_frames(batch) for batch in decoded.batches.values()) == int(sent.sum())
        ends = np.arange(start + W, start + (N_WINDOWS + 1) * W, W, dtype=np.int64)[-24:]
        devices = sorted(set(telemetry.device.tolist()))
        _findings(store, ends[ends <= now], devices, str(telemetry.columns["model_id"][0]))
        _baseline_bands(store, start, ends[ends <= now])
        _rollout(store, start, ends[ends <= now])
        _ingest(store, now)
    finally:
        store.close()
    yield Seeded(url, influxd.http_url, database, now * 1000, telemetry, sent)
    if influxd.running:
        influxd.query(f'DROP DATABASE "{database}"')


# ------------------------------------------------------------------------------- running panels as Grafana


def _columns(query: str) -> list[str]:
    """Names of the columns the outermost SELECT returns (after `time`)."""
    depth, start = 0, len("SELECT ")
    items, item_start, end = [], start, None
    for i, ch in enumerate(query):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and i >= start and ch == "," and end is None:
            items.append(query[item_start:i])
            item_start = i + 1
        elif depth == 0 and query.startswith(" FROM ", i) and end is None:
            items.append(query[item_start:i])
            end = i
    names = []
    for item in items:
        alias = re.search(r' AS "([^"]+)"\s*$', item)
        function = re.match(r"\s*(\w+)\(", item)
        names.append(alias.group(1) if alias else function.group(1) if function else item.strip().strip('"'))
    return names


def _display_names(target: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Field names as Grafana shows them: the alias pattern per series and column (time series), or the
    columns and group-by tags (tables)."""
    names = []
    for series in result["series"]:
        tags = series.get("tags", {})
        if target["resultFormat"] == "table":
            names += [*tags, *series["columns"][1:]]
            continue
        for column in series["columns"][1:]:
            alias = target.get("alias") or f"{series['name']}.{column}"
            alias = re.sub(r"\$tag_(\w+)", lambda m, tags=tags: tags.get(m.group(1), ""), alias)
            names.append(alias.replace("$col", column).replace("$m", series["name"]))
    return names


#: Values picked first (when a variable offers them): where the seeded store has findings that are not ok.
PREFERRED = (DRIFTING_DEVICE, f"model_id={NEW_MODEL}", "input_mean_0", "confidence")
_selected: dict[tuple[str, str, str], dict[str, Selection]] = {}


def _selections(seeded: Seeded, board: Dashboard, mode: str) -> dict[str, Selection]:
    """Each variable's values from its own query (in order, so later ones see earlier ones); "all" selects
    All where the variable has it, "picked" selects explicit values (two where it is multi-value)."""
    key = (seeded.database, board.uid, mode)
    if key in _selected:
        return dict(_selected[key])
    window = TimeRange(seeded.end_ms - 86_400_000, seeded.end_ms, relative="24h")
    chosen: dict[str, Selection] = {}
    for variable in board.variables:
        result = seeded.query(interpolate(variable.query, window, chosen))
        values = sorted(row[1] for series in result.get("series", []) for row in series["values"])
        assert values, f"{board.uid}: variable {variable.name} has no values"
        ordered = list(dict.fromkeys([*(v for v in PREFERRED if v in values), *values]))
        if variable.include_all and mode == "all":
            chosen[variable.name] = Selection(tuple(values), variable.multi, True, True, ".*")
        elif variable.multi:
            chosen[variable.name] = Selection(tuple(ordered[:2]), True, variable.include_all)
        else:
            chosen[variable.name] = Selection((ordered[0],))
    _selected[key] = chosen
    return dict(chosen)


def _cases() -> list[Any]:
    cases = []
    for name, make in DASHBOARDS.items():
        board = make()
        for panel in board.panels():
            for i in range(len(panel.queries)):
                cases.append(pytest.param(name, panel.title, i, id=f"{board.uid}:{panel.title}:{chr(65 + i)}"))
    return cases


def _panel(name: str, title: str) -> tuple[Dashboard, Panel]:
    board = DASHBOARDS[name]()
    (panel,) = [p for p in board.panels() if p.title == title]
    return board, panel


def run_panel_query(
    seeded: Seeded, board: Dashboard, panel: Panel, query: Query, mode: str, timefilter: str
) -> tuple[str, dict[str, Any]]:
    """Interpolate like Grafana (a repeated panel gets one value of its repeat variable) and run it."""
    variables = _selections(seeded, board, mode)
    if panel.repeat:
        variables[panel.repeat] = Selection((variables[panel.repeat].values[0],))
    window = TimeRange(seeded.end_ms - 86_400_000, seeded.end_ms, relative="24h")
    text = interpolate(
        query.text,
        window,
        variables,
        max_data_points=MAX_DATA_POINTS,
        min_interval=panel.interval,
        timefilter=timefilter,
    )
    assert "$" not in text.replace("$/", "").replace("$'", ""), f"unsubstituted macro or variable left in {text}"
    return text, seeded.query(text)


@pytest.mark.integration
@pytest.mark.parametrize("timefilter", ["absolute", "relative"])
@pytest.mark.parametrize("mode", ["all", "picked"])
@pytest.mark.parametrize(("name", "title", "index"), _cases())
def test_every_panel_query_returns_named_data(
    seeded: Seeded, name: str, title: str, index: int, mode: str, timefilter: str
) -> None:
    board, panel = _panel(name, title)
    query = panel.queries[index]
    text, result = run_panel_query(seeded, board, panel, query, mode, timefilter)
    series = result.get("series", [])
    assert series, f"no data for {board.uid} / {title}:\n{text}"
    values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
    assert values, f"only nulls for {board.uid} / {title}:\n{text}"
    expected = _columns(query.text)
    for s in series:
        assert s["columns"][0] == "time" and s["columns"][1:] == expected, (s["columns"], text)
    names = _display_names(panel.to_json(1, 0, 0)["targets"][index], result)
    assert all(names) and "$" not in "".join(names), names


@pytest.mark.integration
def test_every_override_names_a_field_of_its_panel(seeded: Seeded) -> None:
    """Overrides of panels with several queries match a field of one of them."""
    for make in DASHBOARDS.values():
        board = make()
        for panel in board.panels():
            names = []
            for i, query in enumerate(panel.queries):
                _, result = run_panel_query(seeded, board, panel, query, "all", "absolute")
                names += _display_names(panel.to_json(1, 0, 0)["targets"][i], result)
            for override in panel.overrides:
                ok = any(re.search(override.name, n) for n in names) if override.regex else override.name in names
                assert ok, (board.uid, panel.title, override.name, sorted(set(names)))


def _run(seeded: Seeded, name: str, title: str, index: int = 0, mode: str = "all") -> dict[str, Any]:
    board, panel = _panel(name, title)
    return run_panel_query(seeded, board, panel, panel.queries[index], mode, "absolute")[1]


def _scalar(result: dict[str, Any]) -> float:
    ((value,),) = [row[1:] for s in result["series"] for row in s["values"]]
    return value


@pytest.mark.integration
def test_fleet_status_counts_reporting_expected_and_stale_devices(seeded: Seeded) -> None:
    assert _scalar(_run(seeded, "fleet-overview.json", "Devices reporting / expected", 0)) == N_DEVICES - 1
    assert _scalar(_run(seeded, "fleet-overview.json", "Devices reporting / expected", 1)) == N_DEVICES
    assert _scalar(_run(seeded, "fleet-overview.json", "Stale")) == 1
    stale = _run(seeded, "fleet-overview.json", "Stale devices", mode="picked")
    rows = [dict(zip(s["columns"], row, strict=True)) | s["tags"] for s in stale["series"] for row in s["values"]]
    assert [r["device"] for r in rows] == [STALE_DEVICE]
    assert rows[0]["silent_for"] >= 3 * W


@pytest.mark.integration
def test_adoption_and_reporting_per_window_follow_the_rollout(seeded: Seeded) -> None:
    result = _run(seeded, "fleet-overview.json", "Firmware adoption")
    last = {s["tags"]["fw_version"]: s["values"][-1][1] for s in result["series"]}
    assert last == {"1.0.0": N_DEVICES - 4, NEW_FW: 3}
    per_window = [
        v for _, v in _run(seeded, "fleet-overview.json", "Devices reporting per window")["series"][0]["values"]
    ]
    assert max(per_window) == N_DEVICES and per_window[-1] == N_DEVICES - 1


@pytest.mark.integration
def test_device_panels_agree_with_the_simulated_frames(seeded: Seeded) -> None:
    telemetry, sent = seeded.telemetry, seeded.stored_rows
    rows = (telemetry.device == DRIFTING_DEVICE) & sent
    window_start = telemetry.columns["window_start"][rows].astype(np.int64) * 1000
    in_range = window_start >= seeded.end_ms - 86_400_000
    reboots = int(((telemetry.columns["flags"][rows] & 8) > 0)[in_range].sum())
    assert _scalar(_run(seeded, "device-detail.json", "Reboots")) == reboots
    flags = _run(seeded, "device-detail.json", "Flags")["series"][0]
    assert len(flags["values"]) == int(in_range.sum())
    expected = np.round(
        (telemetry.columns["conf_hist"][rows] @ np.linspace(0.05, 0.95, 10))
        / telemetry.columns["inference_count"][rows],
        9,
    )
    accuracy = _run(seeded, "device-detail.json", "accuracy", 0)["series"][0]["values"]
    got = {t: round(v, 9) for t, v in accuracy}
    assert got == {int(t): float(v) for t, v in zip(window_start[in_range], expected[in_range], strict=True)}


@pytest.mark.integration
def test_drift_panels_show_only_findings_that_are_not_ok(seeded: Seeded) -> None:
    table = _run(seeded, "drift.json", "Findings (not ok), newest first")["series"][0]
    severity = table["columns"].index("severity")
    assert {row[severity] for row in table["values"]} == {"warning", "critical"}
    grid = _run(seeded, "drift.json", "Findings per device and window")
    assert {s["tags"]["key"] for s in grid["series"]} == {DRIFTING_DEVICE, "dev-00002"}
    picked = _run(seeded, "drift.json", "Findings per device and window", mode="picked")
    assert {s["tags"]["key"] for s in picked["series"]} == {DRIFTING_DEVICE}


# ------------------------------------------------------------------------------------ Grafana's JSON model

_REF = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "uid": {"type": "string"}},
    "additionalProperties": False,
}
_GRID = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}
_TARGET = {
    "type": "object",
    "required": ["refId", "datasource", "rawQuery", "query", "resultFormat"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "datasource": _REF,
        "rawQuery": {"const": True},
        "query": {"type": "string", "pattern": "^(SELECT|SHOW) "},
        "resultFormat": {"enum": ["time_series", "table", "logs"]},
        "alias": {"type": "string"},
    },
    "additionalProperties": False,
}
_VALUE_MAPPING = {
    "type": "object",
    "required": ["type", "options"],
    "properties": {
        "type": {"enum": ["value", "range", "regex", "special"]},
        "options": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "color": {"type": "string"},
                    "icon": {"type": "string"},
                    "index": {"type": "integer"},
                },
                "additionalProperties": False,
            },
        },
    },
}
_FIELD_CONFIG = {
    "type": "object",
    "required": ["defaults", "overrides"],
    "properties": {
        "defaults": {
            "type": "object",
            "properties": {
                "displayName": {"type": "string"},
                "unit": {"type": "string"},
                "decimals": {"type": "number"},
                "min": {"type": "number"},
                "max": {"type": "number"},
                "noValue": {"type": "string"},
                "mappings": {"type": "array", "items": _VALUE_MAPPING},
                "thresholds": {
                    "type": "object",
                    "required": ["mode", "steps"],
                    "properties": {
                        "mode": {"enum": ["absolute", "percentage"]},
                        "steps": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["color", "value"],
                                "properties": {"color": {"type": "string"}, "value": {"type": ["number", "null"]}},
                                "additionalProperties": False,
                            },
                        },
                    },
                    "additionalProperties": False,
                },
                "color": {
                    "type": "object",
                    "required": ["mode"],
                    "properties": {
                        "mode": {
                            "enum": ["thresholds", "palette-classic", "palette-saturated", "continuous-GrYlRd", "fixed"]
                        },
                        "fixedColor": {"type": "string"},
                        "seriesBy": {"enum": ["min", "max", "last"]},
                    },
                    "additionalProperties": False,
                },
                "links": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["title", "url"],
                        "properties": {"title": {"type": "string"}, "url": {"type": "string"}},
                    },
                },
                "custom": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "overrides": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["matcher", "properties"],
                "properties": {
                    "matcher": {
                        "type": "object",
                        "required": ["id", "options"],
                        "properties": {"id": {"enum": ["byName", "byRegexp", "byType", "byFrameRefID"]}, "options": {}},
                        "additionalProperties": False,
                    },
                    "properties": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "value"],
                            "properties": {"id": {"type": "string", "minLength": 1}, "value": {}},
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_PANEL = {
    "type": "object",
    "required": [
        "id",
        "type",
        "title",
        "datasource",
        "gridPos",
        "targets",
        "fieldConfig",
        "options",
        "transformations",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["timeseries", "stat", "table", "heatmap", "state-timeline"]},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "datasource": _REF,
        "gridPos": _GRID,
        "targets": {"type": "array", "minItems": 1, "items": _TARGET},
        "fieldConfig": _FIELD_CONFIG,
        "options": {"type": "object"},
        "transformations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "options"],
                "properties": {"id": {"type": "string"}, "options": {}, "disabled": {"type": "boolean"}},
                "additionalProperties": False,
            },
        },
        "interval": {"type": "string", "pattern": r"^>?\d+(ms|s|m|h|d|w|y)$"},
        "repeat": {"type": "string"},
        "repeatDirection": {"enum": ["h", "v"]},
        "maxPerRow": {"type": "integer", "enum": [2, 3, 4, 6, 8, 12, 24]},
    },
    "additionalProperties": False,
}
_ROW = {
    "type": "object",
    "required": ["id", "type", "title", "collapsed", "gridPos", "panels"],
    "properties": {
        "id": {"type": "integer"},
        "type": {"const": "row"},
        "title": {"type": "string"},
        "collapsed": {"type": "boolean"},
        "gridPos": _GRID,
        "panels": {"type": "array", "maxItems": 0},
    },
    "additionalProperties": False,
}
_VARIABLE = {
    "type": "object",
    "required": ["type", "name", "query", "datasource", "refresh", "multi", "includeAll", "current", "hide"],
    "properties": {
        "type": {"enum": ["query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"]},
        "name": {"type": "string", "pattern": r"^\w+$"},
        "label": {"type": "string"},
        "description": {"type": "string"},
        "datasource": _REF,
        "query": {"type": "string", "pattern": "^SHOW TAG VALUES "},
        "definition": {"type": "string"},
        "refresh": {"enum": [0, 1, 2]},
        "regex": {"type": "string"},
        "sort": {"enum": [0, 1, 2, 3, 4, 5, 6, 7, 8]},
        "multi": {"type": "boolean"},
        "includeAll": {"type": "boolean"},
        "allValue": {"type": ["string", "null"]},
        "current": {"type": "object"},
        "options": {"type": "array"},
        "hide": {"enum": [0, 1, 2]},
        "skipUrlSync": {"type": "boolean"},
    },
    "additionalProperties": False,
}
_LINK = {
    "type": "object",
    "required": [
        "title",
        "type",
        "icon",
        "tooltip",
        "url",
        "tags",
        "asDropdown",
        "targetBlank",
        "includeVars",
        "keepTime",
    ],
    "properties": {
        "title": {"type": "string"},
        "type": {"enum": ["link", "dashboards"]},
        "icon": {"type": "string"},
        "tooltip": {"type": "string"},
        "url": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "asDropdown": {"type": "boolean"},
        "targetBlank": {"type": "boolean"},
        "includeVars": {"type": "boolean"},
        "keepTime": {"type": "boolean"},
    },
    "additionalProperties": False,
}
#: The parts of Grafana's classic dashboard model (kinds/dashboard/dashboard_kind.cue, Grafana 10/11) that
#: fleetwatch emits, closed: a misspelt key fails here instead of being dropped silently by Grafana.
DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "tags", "timezone", "editable", "graphTooltip", "schemaVersion", "time", "panels"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "timezone": {"type": "string"},
        "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "fiscalYearStartMonth": {"type": "integer", "minimum": 0, "maximum": 11},
        "liveNow": {"type": "boolean"},
        "refresh": {"type": "string", "pattern": r"^\d+(s|m|h|d)$"},
        "schemaVersion": {"const": SCHEMA_VERSION},
        "version": {"type": "integer", "minimum": 0},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "additionalProperties": False,
        },
        "timepicker": {"type": "object"},
        "templating": {
            "type": "object",
            "properties": {"list": {"type": "array", "items": _VARIABLE}},
            "additionalProperties": False,
        },
        "annotations": {"type": "object", "properties": {"list": {"type": "array"}}, "additionalProperties": False},
        "links": {"type": "array", "items": _LINK},
        "panels": {"type": "array", "items": {"oneOf": [_PANEL, _ROW]}},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_dashboards_validate_against_the_grafana_model(name: str) -> None:
    model = json.loads((COMMITTED / name).read_text())
    jsonschema.Draft202012Validator.check_schema(DASHBOARD_SCHEMA)
    jsonschema.validate(model, DASHBOARD_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert all(t["datasource"]["uid"] == DATASOURCE_UID for p in model["panels"] for t in p.get("targets", []))


def test_the_schema_rejects_what_grafana_would_drop() -> None:
    model = json.loads((COMMITTED / "drift.json").read_text())
    model["panels"][1]["targets"][0]["rawquery"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(model, DASHBOARD_SCHEMA)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout_panels_do_not_overlap_ids_and_titles_are_unique(name: str) -> None:
    model = DASHBOARDS[name]().to_json()
    ids = [p["id"] for p in model["panels"]]
    titles = [p["title"] for p in model["panels"]]
    assert len(ids) == len(set(ids)) and len(titles) == len(set(titles))
    cells: set[tuple[int, int]] = set()
    for p in model["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, p["title"]
        cells |= area


def test_telemetry_panels_have_the_window_as_min_interval() -> None:
    for make in DASHBOARDS.values():
        for panel in make().panels():
            if any("GROUP BY time(" in q.text and '"telemetry"' in q.text for q in panel.queries):
                assert panel.interval == WINDOW, panel.title


def test_dashboards_link_to_each_other() -> None:
    uids = {make().uid for make in DASHBOARDS.values()}
    for make in DASHBOARDS.values():
        model = make().to_json()
        assert model["links"][0]["type"] == "dashboards" and model["links"][0]["tags"] == model["tags"]
        urls = [
            link["url"] for p in model["panels"] if "fieldConfig" in p for link in p["fieldConfig"]["defaults"]["links"]
        ]
        urls += [
            link["url"]
            for p in model["panels"]
            if "fieldConfig" in p
            for o in p["fieldConfig"]["overrides"]
            for prop in o["properties"]
            if prop["id"] == "links"
            for link in prop["value"]
        ]
        for url in urls:
            assert url.split("/")[2] in uids, url


# ------------------------------------------------------------------------------------- committed and fresh


def test_committed_files_are_what_build_makes(tmp_path: Path) -> None:
    written = build(tmp_path)
    stale = [
        p.relative_to(tmp_path) for p in written if (COMMITTED / p.relative_to(tmp_path)).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"run `fleetwatch grafana build` and commit: {stale}"
    committed = {p.relative_to(COMMITTED) for p in COMMITTED.rglob("*") if p.is_file()}
    assert committed == {p.relative_to(tmp_path) for p in written}


def test_provisioning_yaml_parses_to_what_grafana_expects() -> None:
    datasource = yaml.safe_load((COMMITTED / "provisioning/datasources/fleetwatch.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "InfluxQL" and source["secureJsonData"]["password"].startswith("${")
    variant = yaml.safe_load((COMMITTED / "provisioning/variants/datasource-influxdb-v2.yaml").read_text())
    (v2,) = variant["datasources"]
    assert v2["jsonData"]["httpHeaderName1"] == "Authorization"
    assert v2["secureJsonData"]["httpHeaderValue1"] == "Token ${FLEETWATCH_INFLUX_TOKEN}"
    provider = yaml.safe_load((COMMITTED / "provisioning/dashboards/fleetwatch.yaml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["folder"]
    for name, content in alerting_files("${FLEETWATCH_ALERT_WEBHOOK_URL}").items():
        assert yaml.safe_load((COMMITTED / "provisioning/alerting" / name).read_text()) == content
    (group,) = yaml.safe_load((COMMITTED / "provisioning/alerting/rules.yaml").read_text())["groups"]
    titles = {r["title"] for r in group["rules"]}
    assert titles == {"fleetwatch: ingest stalled", "fleetwatch: quarantine spike", "fleetwatch: critical drift"}
    for rule in group["rules"]:
        refs = [q["refId"] for q in rule["data"]]
        assert rule["condition"] == refs[-1] and len(set(refs)) == len(refs)
        influx = [q for q in rule["data"] if q["datasourceUid"] == DATASOURCE_UID]
        assert influx and all("$timeFilter" in q["model"]["query"] for q in influx)


@pytest.mark.integration
def test_alert_rule_queries_run(seeded: Seeded) -> None:
    """The rules' InfluxQL, with $timeFilter as the alerting backend renders it, returns data here."""
    (group,) = alerting_files("http://hook")["rules.yaml"]["groups"]
    for rule in group["rules"]:
        for q in rule["data"]:
            if q["datasourceUid"] != DATASOURCE_UID:
                continue
            span = q["relativeTimeRange"]["from"] * 1000
            text = interpolate(q["model"]["query"], TimeRange(seeded.end_ms - span, seeded.end_ms), {})
            assert seeded.query(text).get("series"), (rule["title"], text)


@pytest.mark.parametrize(
    "value",
    [
        {"a": "x: y", "b": ['quote"s', "back\\slash"], "c": {}, "d": [], "e": None, "f": 1.5, "g": True},
        {"list": [{"k": [["a", "=", "b"]], "n": {"deep": ["1", 2]}}, {"k": []}], "$weird key": "${ENV}"},
        [{"x": 1}, "plain", ["a"]],
    ],
)
def test_yaml_emitter_round_trips(value: Any) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


# ---------------------------------------------------------------------------------- Grafana's substitution

RANGE = TimeRange(1_700_000_000_000 - 6 * 3_600_000, 1_700_000_000_000, relative="6h")


def test_time_filter_absolute_and_relative() -> None:
    assert interpolate("WHERE $timeFilter", RANGE, {}) == "WHERE time >= 1699978400000ms and time <= 1700000000000ms"
    assert interpolate("WHERE $timeFilter", RANGE, {}, timefilter="relative") == "WHERE time > now() - 6h"
    absolute = TimeRange(RANGE.start_ms, RANGE.end_ms)
    assert "now()" not in interpolate("$timeFilter", absolute, {}, timefilter="relative")


@pytest.mark.parametrize(
    ("max_points", "min_interval", "interval", "ms"),
    [
        (360, None, "1m", "60000"),
        (1000, None, "20s", "20000"),
        (1000, "1h", "1h", "3600000"),
        (2, ">1m", "3h", "10800000"),
    ],
)
def test_interval_is_rounded_then_raised_to_the_min_interval(
    max_points: int, min_interval: str | None, interval: str, ms: str
) -> None:
    text = interpolate(
        "$__interval $interval $__interval_ms ${__interval}",
        RANGE,
        {},
        max_data_points=max_points,
        min_interval=min_interval,
    )
    assert text == f"{interval} {interval} {ms} {interval}"


def test_round_interval_and_format_follow_grafana() -> None:
    assert [macros.round_interval(ms) for ms in (14, 40_000, 86_399_999, 10**12)] == [
        10,
        30_000,
        43_200_000,
        31_536_000_000,
    ]
    assert [macros.format_interval(ms) for ms in (500, 90_000, 7_200_000, 172_800_000)] == ["500ms", "1m", "2h", "2d"]
    assert macros.interval_ms(">30s") == 30_000
    with pytest.raises(ValueError):
        macros.interval_ms("soon")


def test_range_and_time_builtins() -> None:
    text = interpolate("${__from} $__to ${__to:date:seconds} $__range $__range_s ${__from:date}", RANGE, {})
    assert text == "1699978400000 1700000000000 1700000000 21600s 21600 2023-11-14T16:13:20.000Z"


def test_regex_format_escapes_and_joins() -> None:
    single = {"d": Selection(("dev/1.a",))}
    assert interpolate("/^${d:regex}$/", RANGE, single) == "/^dev\\/1\\.a$/"
    multi = {"d": Selection(("a+b", "c"), multi=True)}
    assert interpolate("/^${d:regex}$/ [[d:regex]]", RANGE, multi) == "/^(a\\+b|c)$/ (a\\+b|c)"
    one_of_multi = {"d": Selection(("x.y",), multi=True)}
    assert interpolate("${d:regex}", RANGE, one_of_multi) == "x\\.y"


def test_all_with_a_custom_value_is_inserted_unformatted() -> None:
    every = {"d": Selection(("a", "b"), multi=True, include_all=True, all_selected=True, all_value=".*")}
    assert interpolate('"d" =~ /^${d:regex}$/', RANGE, every) == '"d" =~ /^.*$/'
    without = {"d": Selection(("a.1", "b"), multi=True, include_all=True, all_selected=True)}
    assert interpolate("/^${d:regex}$/", RANGE, without) == "/^(a\\.1|b)$/"


def test_influx_default_formatting() -> None:
    plain = {"d": Selection(("dev.1",))}
    assert interpolate("\"device\" = '$d'", RANGE, plain) == "\"device\" = 'dev.1'"
    assert interpolate('"device" =~ /^$d$/', RANGE, plain) == '"device" =~ /^dev\\.1$/'
    assert interpolate("\"fw\" = '$d'", RANGE, {"d": Selection(("1.0.0",))}) == "\"fw\" = '1.0.0'"
    assert interpolate("$d", RANGE, {"d": Selection(("a.b", "c"), multi=True)}) == "(a\\.b|c)"
    every = {"d": Selection(("a", "b"), include_all=True, all_selected=True)}
    assert interpolate("x = $d", RANGE, every) == "x = a,b"
    assert interpolate("x =~ /$d/", RANGE, every) == "x =~ /(a|b)/"


def test_unknown_names_and_formats() -> None:
    assert interpolate("$unknown ${other}", RANGE, {}) == "$unknown ${other}"
    with pytest.raises(ValueError):
        interpolate("${d:csv}", RANGE, {"d": Selection(("a",))})
    with pytest.raises(ValueError):
        interpolate("${__to:date:YYYY}", RANGE, {})


def test_module_examples() -> None:
    assert doctest.testmod(macros).failed == 0
    assert doctest.testmod(builder).failed == 0
