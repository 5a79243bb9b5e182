"""The devices of a fleet: their fixed per-device parameters, cohort tags, how to pick some of them
(`Target`), which model each one runs (`Deployment`), and the inventory CSV.

>>> spec = FleetSpec(n_devices=3, tags={"site": ("north",)})
>>> print(inventory_csv(spec), end="")
device,site
dev-00000,north
dev-00001,north
dev-00002,north
>>> Target(where="site=north").mask(Fleet.of(spec)).tolist()
[True, True, True]
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleetwatch.frames import parse_fw_version
from fleetwatch.simulate import _streams
from fleetwatch.simulate.spec import CHANNELS, FleetSpec


@dataclass(frozen=True)
class Fleet:
    """Per-device parameters drawn once from (seed, devices): arrays of length n_devices (level: (n, 3))."""

    spec: FleetSpec
    ids: np.ndarray
    tags: dict[str, np.ndarray]
    level: np.ndarray
    phase: np.ndarray
    rate: np.ndarray
    latency_p50_ms: np.ndarray
    memory_pct: np.ndarray
    battery_drain_mv: np.ndarray
    battery_phase: np.ndarray
    seq_offset: np.ndarray
    has_clock: np.ndarray

    @classmethod
    def of(cls, spec: FleetSpec) -> Fleet:
        n = spec.n_devices
        rng = _streams.generator(spec.seed, _streams.DEVICES)
        level = np.asarray(spec.input_level) + np.asarray(spec.device_offset_sd) * rng.standard_normal((n, CHANNELS))
        has_clock = np.ones(n, dtype=bool)
        has_clock[rng.permutation(n)[: round(spec.no_clock_fraction * n)]] = False
        width = max(5, len(str(n - 1)))
        return cls(
            spec=spec,
            ids=np.array([f"{spec.id_prefix}{i:0{width}d}" for i in range(n)], dtype=object),
            level=level,
            phase=rng.uniform(0.0, 2 * np.pi, n),
            rate=spec.inferences_per_window * np.exp(spec.rate_spread * rng.standard_normal(n)),
            latency_p50_ms=spec.latency_p50_ms * np.exp(spec.latency_device_sd * rng.standard_normal(n)),
            memory_pct=spec.memory_pct + spec.memory_device_sd * rng.standard_normal(n),
            battery_drain_mv=spec.battery_drain_mv * np.exp(spec.battery_drain_spread * rng.standard_normal(n)),
            battery_phase=rng.random(n),
            seq_offset=rng.integers(0, 65536, n),
            has_clock=has_clock,
            tags={name: _tag_values(values, n, rng) for name, values in spec.tags.items()},
        )

    def __len__(self) -> int:
        return len(self.ids)


def _tag_values(values: Sequence[str] | Mapping[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """One value per device: drawn uniformly from a sequence, or in exact shares ({value: share}; largest
    remainder) placed at random."""
    if not isinstance(values, Mapping):
        return np.array(values, dtype=object)[rng.integers(len(values), size=n)]
    quota = np.array(list(values.values()), dtype=float) * n
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(counts - quota, kind="stable")[: n - counts.sum()]] += 1
    return np.repeat(np.array(list(values), dtype=object), counts)[rng.permutation(n)]


@dataclass(frozen=True)
class Target:
    """Which devices something applies to: the intersection of every criterion given.

    devices: explicit device indices. where: tag selectors, e.g. "site=north" or "site=north|east,hw=b"
    (comma = and, bar = or). Then, of the devices left, `count` of them or `fraction` (rounded) of them,
    drawn reproducibly from (spec seed, `seed`); with the same seed a smaller draw is a subset of a larger.
    No criterion: every device.
    """

    devices: tuple[int, ...] | None = None
    where: str = ""
    fraction: float | None = None
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must lie in [0, 1]")
        if self.fraction is not None and self.count is not None:
            raise ValueError("give a fraction or a count, not both")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")

    def mask(self, fleet: Fleet) -> np.ndarray:
        """Boolean array over the fleet's devices."""
        n = len(fleet)
        chosen = np.ones(n, dtype=bool)
        if self.devices is not None:
            index = np.asarray(self.devices, dtype=np.int64)
            if index.size and (index.min() < 0 or index.max() >= n):
                raise ValueError(f"device indices must lie in 0..{n - 1}")
            chosen = np.zeros(n, dtype=bool)
            chosen[index] = True
        for clause in filter(None, self.where.split(",")):
            name, _, values = clause.partition("=")
            if name.strip() not in fleet.tags or not values:
                raise ValueError(
                    f"selector {clause!r}: want <tag>=<value>[|<value>...] with a tag of {list(fleet.tags)}"
                )
            chosen &= np.isin(fleet.tags[name.strip()], [v.strip() for v in values.split("|")])
        if self.fraction is None and self.count is None:
            return chosen
        candidates = np.flatnonzero(chosen)
        keys = _streams.generator(fleet.spec.seed, _streams.TARGETS, self.seed).random(n)[candidates]
        k = self.count if self.count is not None else round(self.fraction * len(candidates))
        sample = np.zeros(n, dtype=bool)
        sample[candidates[np.argsort(keys, kind="stable")[:k]]] = True
        return sample


Devices = Target | Sequence[int] | np.ndarray


def device_mask(fleet: Fleet, devices: Devices) -> np.ndarray:
    """A `Target`, a boolean mask or device indices -> a boolean mask over the fleet."""
    if isinstance(devices, Target):
        return devices.mask(fleet)
    array = np.asarray(devices)
    if array.dtype == bool:
        if array.shape != (len(fleet),):
            raise ValueError(f"a device mask needs {len(fleet)} entries")
        return array
    return Target(devices=tuple(array.astype(np.int64).tolist())).mask(fleet)


@dataclass(frozen=True)
class Deployment:
    """What each device runs: model_id and fw_version (the envelope's u32), arrays over the fleet."""

    model_id: np.ndarray
    fw_version: np.ndarray

    @classmethod
    def initial(cls, spec: FleetSpec) -> Deployment:
        n = spec.n_devices
        return cls(
            model_id=np.full(n, spec.model_id, dtype=np.uint32),
            fw_version=np.full(n, parse_fw_version(spec.fw_version), dtype=np.uint32),
        )

    def with_model(self, mask: np.ndarray, model_id: int, fw_version: str | int) -> Deployment:
        """A new deployment where the devices in `mask` run (model_id, fw_version)."""
        fw = parse_fw_version(fw_version) if isinstance(fw_version, str) else fw_version
        return Deployment(
            model_id=np.where(mask, np.uint32(model_id), self.model_id),
            fw_version=np.where(mask, np.uint32(fw), self.fw_version),
        )


def inventory_csv(spec: FleetSpec) -> str:
    """The fleet inventory: a `device` column, then one column per tag."""
    fleet = Fleet.of(spec)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["device", *fleet.tags])
    writer.writerows(zip(fleet.ids, *fleet.tags.values(), strict=True))
    return out.getvalue()
