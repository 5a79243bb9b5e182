"""A baseline: what a model's telemetry looks like when nothing is wrong, with where that came from.

The drift engine compares every window with a baseline. A baseline is per model_id and versioned; it is a
human-readable JSON file with its provenance (source, time range, model_id, when it was fitted).

Input statistics are window-level: the distribution of the window means (and of the log window
variances) per channel, i.e. of exactly what devices send. `sigma_within` is the standard deviation of one
device's window means around its own level; `device_levels` (reference fits only) lets a device that is
mounted differently be compared with itself, not with the fleet: each device's daily profile (level plus
the first harmonic of a day) is fitted on the reference period, so a daily cycle is not taken for drift.
`level_variance` and `cycle_variance` are that fit's own error (mean over the devices, in units of
sigma_within^2), which the engine's scores and CUSUM thresholds account for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleetwatch.keyindex import KeyIndex, as_rows

#: The period of the daily profile fitted per device.
DAY_S = 86_400


@dataclass(frozen=True)
class Gaussian:
    """A level and a spread: mean and standard deviation of a window-level statistic."""

    mean: float
    sd: float


@dataclass(frozen=True)
class ChannelBaseline:
    """One input channel.

    - `window_mean`: the window means around the fleet level; sd = sigma_between_and_within (for a device
      with no level of its own).
    - `sigma_within`: sd of one device's window means around its own level (the unit of "a 1-sigma shift").
    - `log_var`: the natural log of the window variances.
    """

    window_mean: Gaussian
    sigma_within: float
    log_var: Gaussian


@dataclass(frozen=True)
class Baseline:
    """Everything the drift engine and the rollout judge compare telemetry with, for one model."""

    model_id: int
    version: str
    source: Literal["training", "reference"]
    fitted_at: int
    time_range: tuple[int, int] | None
    window_s: int
    channels: tuple[ChannelBaseline, ...]
    confidence: tuple[float, ...]
    confidence_edges: tuple[float, ...]
    class_priors: tuple[float, ...]
    calibration: tuple[float, ...] | None
    anomaly_rate: float
    anomaly_dispersion: float
    anomaly_concentration: float
    latency_p95_ms: Gaussian | None
    mem_peak_pct: Gaussian | None
    reboot_rate: float | None
    windows: int
    devices: int
    confidence_dispersion: float = 1.0
    class_dispersion: float = 1.0
    device_levels: dict[str, tuple[float, ...]] = field(default_factory=dict)
    cohort: str = ""
    level_variance: float = 0.0
    cycle_variance: float = 0.0

    @property
    def score_scale(self) -> float:
        """sd of a known device's window mean around its fitted profile, in units of sigma_within: the
        harmonic's estimation error counts as window-to-window noise (it averages out over a day)."""
        return float(np.sqrt(1.0 + self.cycle_variance))

    @property
    def score_bias_var(self) -> float:
        """Variance, across devices, of the persistent bias the fitted level leaves in a known device's
        standardised input-mean score (0 for a training baseline, which has no device levels)."""
        return self.level_variance / (1.0 + self.cycle_variance)

    @property
    def score_error_var(self) -> float:
        """Variance of the whole error the fitted profile leaves in a known device's standardised score at a
        random time of day (level and harmonic): the bias seen by a detector whose runs are much shorter
        than a day."""
        return (self.level_variance + self.cycle_variance) / (1.0 + self.cycle_variance)

    def levels_for(self, devices: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(expected window means (n, channels), known (n,)) at time t (Unix s, window middle).

        A known device's expectation is its own daily profile: level + a sin(w t) + b cos(w t), w = 2 pi /
        1 day (the first harmonic of its reference period); an unknown device gets the fleet level."""
        keys, profiles = self._profiles
        index, known = keys.positions(devices)
        fleet = np.array([c.window_mean.mean for c in self.channels])
        if not len(keys):
            return np.tile(fleet, (len(known), 1)), known
        phase = 2 * np.pi * (t % DAY_S) / DAY_S
        # one matrix-vector product over (devices x channels, 3), cheaper than the stacked (3, 3) products
        own = (profiles[as_rows(index)].reshape(-1, 3) @ np.array([1.0, np.sin(phase), np.cos(phase)])).reshape(
            len(index), len(self.channels)
        )
        return (own if known.all() else np.where(known[:, None], own, fleet)), known

    @cached_property
    def _profiles(self) -> tuple[KeyIndex, np.ndarray]:
        """(the device ids, their profiles shaped (devices, channels, 3) in that order), for `levels_for`."""
        keys = KeyIndex(self.device_levels)
        profiles = np.array(list(self.device_levels.values()), dtype=float)  # in the keys' order: a dict's
        return keys, profiles.reshape(len(keys), len(self.channels), 3)

    def accuracy_map(self) -> np.ndarray:
        """Accuracy per confidence bin: the fitted calibration, or the bin midpoints (perfect calibration)."""
        if self.calibration is not None:
            return np.array(self.calibration)
        edges = np.array(self.confidence_edges)
        return (edges[:-1] + edges[1:]) / 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        def gaussian(value: dict[str, float] | None) -> Gaussian | None:
            return Gaussian(**value) if value is not None else None

        data = dict(data)
        data["channels"] = tuple(
            ChannelBaseline(Gaussian(**c["window_mean"]), c["sigma_within"], Gaussian(**c["log_var"]))
            for c in data["channels"]
        )
        for key in ("confidence", "confidence_edges", "class_priors"):
            data[key] = tuple(data[key])
        data["calibration"] = tuple(data["calibration"]) if data.get("calibration") is not None else None
        data["time_range"] = tuple(data["time_range"]) if data.get("time_range") is not None else None
        data["latency_p95_ms"] = gaussian(data.get("latency_p95_ms"))
        data["mem_peak_pct"] = gaussian(data.get("mem_peak_pct"))
        data["device_levels"] = {k: tuple(v) for k, v in data.get("device_levels", {}).items()}
        return cls(**data)


class BaselineStore:
    """Versioned baseline files in one directory: `model-<model_id>[-<cohort>]-v<n>.json`.

    A file is parsed once while it stays the same (path, modification time and size): a drift check
    asks for the baselines of every window, and a fleet's baseline holds every device's profile."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._parsed: dict[Path, tuple[tuple[int, int], Baseline]] = {}

    def save(self, baseline: Baseline) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{baseline.version}.json"
        path.write_text(json.dumps(baseline.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    def next_version(self, model_id: int, cohort: str = "") -> str:
        stem = _stem(model_id, cohort)
        numbers = [int(p.stem.rsplit("-v", 1)[1]) for p in self.directory.glob(f"{stem}-v*.json")]
        return f"{stem}-v{max(numbers, default=0) + 1}"

    def list(self) -> list[Baseline]:
        if not self.directory.is_dir():
            return []
        return [self._read(p) for p in sorted(self.directory.glob("model-*.json"))]

    def get(self, version: str) -> Baseline:
        path = self.directory / f"{version}.json"
        if not path.is_file():
            raise KeyError(f"no baseline {version!r} in {self.directory}")
        return self._read(path)

    def latest(self, model_id: int, cohort: str = "") -> Baseline | None:
        """The newest version for a model (and cohort), or None."""
        stem = _stem(model_id, cohort)
        candidates = (
            sorted(self.directory.glob(f"{stem}-v*.json"), key=lambda p: int(p.stem.rsplit("-v", 1)[1]))
            if self.directory.is_dir()
            else []
        )
        return self._read(candidates[-1]) if candidates else None

    def latest_for(self, model_ids: Iterable[int | str]) -> dict[int, Baseline]:
        """The newest version of each model that has one (model_ids as ints or decimal strings)."""
        found = {model: self.latest(model) for model in {int(m) for m in model_ids}}
        return {model: baseline for model, baseline in found.items() if baseline is not None}

    def _read(self, path: Path) -> Baseline:
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        known = self._parsed.get(path)
        if known is None or known[0] != signature:
            known = signature, Baseline.from_json(json.loads(path.read_text(encoding="utf-8")))
            self._parsed[path] = known
        return known[1]


def _stem(model_id: int, cohort: str) -> str:
    safe = "".join(ch if ch.isalnum() else "_" for ch in cohort)
    return f"model-{model_id}" + (f"-{safe}" if cohort else "")
