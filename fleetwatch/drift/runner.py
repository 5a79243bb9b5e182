"""Running the drift engine against a store: read a window, evaluate, write findings, keep the state.

The imperative shell around `engine.evaluate`: it reads telemetry through the store's read interface,
loads baselines and the inventory, writes findings back to the store (measurement `findings`, for
Grafana) with each checked device's baseline band (`baseline_band`, fleetwatch.drift.bands), persists the
engine state (CUSUM sums, open findings) in a JSON file so a restart continues where it stopped, and
hands findings to whoever acts on them (the alert manager in the daemon).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetwatch.baselines.model import Baseline, BaselineStore
from fleetwatch.config import Settings
from fleetwatch.drift.bands import MEASUREMENT as BANDS
from fleetwatch.drift.bands import band_columns
from fleetwatch.drift.engine import DriftSettings, EngineState, evaluate
from fleetwatch.drift.scopes import Inventory, InventoryIndex, cohort_masks
from fleetwatch.findings import Finding
from fleetwatch.frames import Schema
from fleetwatch.sinks.base import Store

log = logging.getLogger(__name__)
FINDINGS = "findings"
#: The schema fields a drift check reads (`engine.evaluate` and `bands.band_columns`), by field name; the
#: tags come with every read. The embedded store reads, converts and sorts every column it is asked for.
DRIFT_FIELDS = (
    "inference_count",
    "anomaly_count",
    "latency_p95",
    "mem_peak_pct",
    "input_mean",
    "input_var",
    "conf_hist",
    "class_counts",
)


def drift_columns(schema: Schema) -> list[str]:
    """The `Store.read_frames` columns of `schema` that a drift check reads (`DRIFT_FIELDS`)."""
    return [name for field in schema.fields if field.name in DRIFT_FIELDS for name in field.column_names]


@dataclass
class DriftRunner:
    """Evaluates windows of one schema for the whole fleet."""

    store: Store
    schema: Schema
    baselines: BaselineStore
    settings: DriftSettings
    window_s: int
    inventory: Inventory | None = None
    state_path: Path | None = None
    on_findings: Callable[[list[Finding]], object] | None = None

    def __post_init__(self) -> None:
        self._inventory = InventoryIndex(self.inventory) if self.inventory else None
        self.state = EngineState()
        if self.state_path is not None and self.state_path.is_file():
            self.state = EngineState.from_json(json.loads(self.state_path.read_text(encoding="utf-8")))

    def window_end(self, now: int) -> int:
        """End of the last complete window at `now` (windows align to multiples of window_s)."""
        return (int(now) // self.window_s) * self.window_s

    def check(self, at: int, write: bool = True) -> list[Finding]:
        """Evaluate the window [at - window_s, at)."""
        columns = drift_columns(self.schema)
        window = self._latest_per_device(
            self.store.read_frames(at - self.window_s, at, schema=self.schema, columns=columns)
        )
        if not len(window["device"]):
            return []
        baselines = self._baselines(np.unique(window["model_id"]).tolist())
        findings, self.state = evaluate(
            window, baselines, cohort_masks(window, self._inventory), self.state, self.settings, at, self.window_s
        )
        if write:
            self.write(findings)
            self.store.write_table(BANDS, *band_columns(window, baselines, at, self.window_s))
            self._save_state()
            if self.on_findings is not None:
                self.on_findings(findings)
        return findings

    def backtest(self, start: int, end: int) -> Iterator[Finding]:
        """Replay the schedule over [start, end) window by window from a fresh state; nothing is written."""
        self.state = EngineState()
        first = self.window_end(start) + (self.window_s if start % self.window_s else 0)
        for at in range(max(first, start + self.window_s), end + 1, self.window_s):
            yield from (f for f in self.check(at, write=False) if f.severity != "ok")

    def write(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        self.store.write_table(
            FINDINGS,
            np.array([f.window_end for f in findings], dtype=np.int64),
            {
                "scope": np.array([f.scope for f in findings], dtype=object),
                "key": np.array([f.key for f in findings], dtype=object),
                "signal": np.array([f.signal for f in findings], dtype=object),
                "severity": np.array([f.severity for f in findings], dtype=object),
                "model_id": np.array([str(f.model_id or "") for f in findings], dtype=object),
            },
            {
                "statistic": np.array([f.statistic for f in findings]),
                "p": np.array([f.p for f in findings]),
                "q": np.array([f.q for f in findings]),
                "effect": np.array([f.effect for f in findings]),
                "effect_name": np.array([f.effect_name for f in findings], dtype=object),
                "baseline_version": np.array([f.baseline_version for f in findings], dtype=object),
                "window_start": np.array([f.window_start for f in findings], dtype=np.int64),
                "window_end": np.array([f.window_end for f in findings], dtype=np.int64),
            },
        )

    def _baselines(self, model_ids: list[str]) -> dict[int, Baseline]:
        found = self.baselines.latest_for(model_ids)
        for model in sorted({int(m) for m in model_ids} - found.keys()):
            log.warning("no baseline for model_id %s: its devices are not checked (fleetwatch baseline fit)", model)
        return found

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.to_json()), encoding="utf-8")
        tmp.replace(self.state_path)

    @staticmethod
    def _latest_per_device(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One row per device: its last frame in the window (rows come sorted by device, then time)."""
        device = np.asarray(columns["device"], dtype=object)
        if len(device) < 2:
            return columns
        last = np.append(device[1:] != device[:-1], True)
        return {k: np.asarray(v)[last] for k, v in columns.items()}


def runner_from_settings(settings: Settings, store: Store, inventory: Inventory | None = None) -> DriftRunner:
    """The runner the config describes (schema 1, the configured baselines, inventory and thresholds);
    `inventory` when the caller has read `fleet.inventory` already."""
    from fleetwatch.drift.scopes import read_inventory
    from fleetwatch.frames import Registry

    if inventory is None and settings.fleet.inventory:
        inventory = read_inventory(settings.fleet.inventory)
    drift = settings.drift
    return DriftRunner(
        store=store,
        schema=Registry.with_dirs(settings.frames.schema_dirs).get(1),
        baselines=BaselineStore(settings.baselines_dir),
        settings=DriftSettings(
            q_max=drift.q_max,
            arl0_windows=drift.arl0_windows,
            cusum_delta=drift.cusum_delta,
            cohort_arl0_windows=drift.cohort_arl0_windows,
            min_inferences=drift.min_inferences,
        ),
        window_s=drift.window_s,
        inventory=inventory,
        state_path=settings.data_dir / "drift-state.json",
    )
