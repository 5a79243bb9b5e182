"""Scenario changes (what happens to which devices from which window), the ground truth they imply, and
their combined effect, together with each device's deployed model, on one window.

>>> spec = FleetSpec(n_devices=4)
>>> shift = Change("input_mean_shift", 1.0, Target(devices=(1, 2)), onset=24, channels=(0,))
>>> truth(spec, [shift]).records()[0]
{'change': 0, 'kind': 'input_mean_shift', 'device': 'dev-00001', 'onset': 24, 'end': None}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from fleetwatch.simulate.fleet import Deployment, Fleet, Target
from fleetwatch.simulate.spec import CHANNELS, CLASSES, FleetSpec

Kind = Literal[
    "input_mean_shift",
    "input_var_change",
    "confidence_degradation",
    "class_prior_shift",
    "anomaly_rate",
    "latency_increase",
    "memory_increase",
    "reboots",
]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class Change:
    """Something that happens to the `target` devices in windows onset <= k < end (end None: for good).

    `value` by kind:
      input_mean_shift        window means move by value * spec.sigma(channel) (`channels`, default all)
      input_var_change        within-window variance times value (2.0 = doubling) (`channels`)
      confidence_degradation  fraction in [0, 1] of top-1 confidence mass moved from bins >= 0.5 to [0.2, 0.5)
      class_prior_shift       fraction in [0, 1] of inferences whose class is redrawn from `priors`
                              (value 1.0: the new priors replace the old)
      anomaly_rate            the new mean anomaly rate in [0, 1] (before any model's anomaly factor)
      latency_increase        p50 and p95 latency times value
      memory_increase         peak memory plus value percentage points
      reboots                 the new per-window reboot probability in [0, 1]
    Where changes overlap, factors multiply, shifts and memory add, class shifts apply in order, and for
    anomaly_rate and reboots the later change wins.
    """

    kind: Kind
    value: float
    target: Target = field(default_factory=Target)
    onset: int = 0
    end: int | None = None
    channels: tuple[int, ...] | None = None
    priors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown change kind {self.kind!r}; one of {KINDS}")
        if self.onset < 0 or (self.end is not None and self.end <= self.onset):
            raise ValueError("want 0 <= onset < end")
        if self.channels is not None and not set(self.channels) <= set(range(CHANNELS)):
            raise ValueError(f"channels must lie in 0..{CHANNELS - 1}")
        bounded = {"confidence_degradation", "class_prior_shift", "anomaly_rate", "reboots"}
        if self.kind in bounded and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"{self.kind}: value must lie in [0, 1]")
        if self.kind in {"input_var_change", "latency_increase"} and self.value <= 0:
            raise ValueError(f"{self.kind}: value is a factor, must be > 0")
        if (self.kind == "class_prior_shift") != (self.priors is not None):
            raise ValueError("priors go with class_prior_shift, and only with it")
        if self.priors is not None and not (
            len(self.priors) == CLASSES and min(self.priors) >= 0 and math.isclose(sum(self.priors), 1.0, abs_tol=1e-9)
        ):
            raise ValueError(f"priors: {CLASSES} probabilities summing to 1")

    def active(self, window: int) -> bool:
        return self.onset <= window and (self.end is None or window < self.end)

    @property
    def channel_mask(self) -> np.ndarray:
        mask = np.zeros(CHANNELS, dtype=bool)
        mask[list(range(CHANNELS) if self.channels is None else self.channels)] = True
        return mask


@dataclass(frozen=True)
class Truth:
    """Ground truth of a scenario: `targets[i, d]` says change i applies to device d from its onset."""

    changes: tuple[Change, ...]
    devices: np.ndarray
    targets: np.ndarray

    def active(self, window: int) -> np.ndarray:
        """(changes, devices) boolean: which change applies to which device in `window`."""
        on = np.array([c.active(window) for c in self.changes], dtype=bool)
        return self.targets & on[:, None]

    def records(self) -> list[dict[str, Any]]:
        """One row per (change, target device): change index, kind, device id, onset, end (None: open)."""
        return [
            {"change": i, "kind": c.kind, "device": str(self.devices[d]), "onset": c.onset, "end": c.end}
            for i, c in enumerate(self.changes)
            for d in np.flatnonzero(self.targets[i]).tolist()
        ]


def truth(spec: FleetSpec, changes: Sequence[Change], fleet: Fleet | None = None) -> Truth:
    """Resolve every change's target to devices."""
    fleet = fleet or Fleet.of(spec)
    targets = np.array([c.target.mask(fleet) for c in changes], dtype=bool).reshape(len(changes), len(fleet))
    return Truth(changes=tuple(changes), devices=fleet.ids, targets=targets)


@dataclass(frozen=True)
class Effects:
    """What the active changes and the deployed models do to one window, per device (arrays over devices).

    shift: (n, 3) in sigma units; var_factor: (n, 3); keep_high: share of high-confidence mass kept;
    anomaly_rate: target mean anomaly rate; class_shifts: (mask, fraction, priors) applied in order.
    """

    shift: np.ndarray
    var_factor: np.ndarray
    keep_high: np.ndarray
    anomaly_rate: np.ndarray
    latency_factor: np.ndarray
    memory_delta: np.ndarray
    reboot_rate: np.ndarray
    class_shifts: tuple[tuple[np.ndarray, float, np.ndarray], ...]


@dataclass(frozen=True)
class ModelEffects:
    """Each device's model profile as arrays over the fleet (from a `Deployment`)."""

    keep_high: np.ndarray
    anomaly_factor: np.ndarray
    latency_factor: np.ndarray
    memory_delta: np.ndarray

    @classmethod
    def of(cls, spec: FleetSpec, deployment: Deployment) -> ModelEffects:
        models, which = np.unique(deployment.model_id, return_inverse=True)
        profiles = [spec.profile(int(m)) for m in models]

        def column(attribute: str) -> np.ndarray:
            return np.array([getattr(p, attribute) for p in profiles], dtype=np.float64)[which]

        return cls(
            keep_high=1.0 - column("confidence_degradation"),
            anomaly_factor=column("anomaly_factor"),
            latency_factor=column("latency_factor"),
            memory_delta=column("memory_delta"),
        )


def reboot_rate(spec: FleetSpec, truth: Truth, window: int) -> np.ndarray:
    """Per-device reboot probability in `window`: the spec's, unless a `reboots` change says otherwise."""
    rate = np.full(truth.targets.shape[1], spec.reboot_rate)
    for change, mask in zip(truth.changes, truth.active(window), strict=True):
        if change.kind == "reboots":
            rate[mask] = change.value
    return rate


def window_effects(spec: FleetSpec, truth: Truth, models: ModelEffects, window: int) -> Effects:
    """Combine the changes active in `window` with each device's model profile (`reboots`: see reboot_rate)."""
    n = truth.targets.shape[1]
    shift = np.zeros((n, CHANNELS))
    var_factor = np.ones((n, CHANNELS))
    keep_high = models.keep_high.copy()
    anomaly = np.full(n, spec.anomaly_rate)
    latency = models.latency_factor.copy()
    memory = models.memory_delta.copy()
    class_shifts = []
    for change, mask in zip(truth.changes, truth.active(window), strict=True):
        if not mask.any():
            continue
        cells = np.outer(mask, change.channel_mask)
        match change.kind:
            case "input_mean_shift":
                shift[cells] += change.value
            case "input_var_change":
                var_factor[cells] *= change.value
            case "confidence_degradation":
                keep_high[mask] *= 1.0 - change.value
            case "class_prior_shift":
                class_shifts.append((mask, change.value, np.asarray(change.priors)))
            case "anomaly_rate":
                anomaly[mask] = change.value
            case "latency_increase":
                latency[mask] *= change.value
            case "memory_increase":
                memory[mask] += change.value
    return Effects(
        shift=shift,
        var_factor=var_factor,
        keep_high=keep_high,
        anomaly_rate=np.minimum(anomaly * models.anomaly_factor, 1.0),
        latency_factor=latency,
        memory_delta=memory,
        reboot_rate=reboot_rate(spec, truth, window),
        class_shifts=tuple(class_shifts),
    )
