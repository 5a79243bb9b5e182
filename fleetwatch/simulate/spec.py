"""The parameters of a simulated fleet (`FleetSpec`) and of the models it may run (`ModelProfile`).

Every default below is a plausible accelerometer keyword-spotting-like device reporting hourly; the
package docstring (`fleetwatch.simulate`) states the statistical model these parameters feed.

>>> spec = FleetSpec(n_devices=10)
>>> round(float(spec.sigma(0)), 5)
0.01936
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

CHANNELS = 3
CONFIDENCE_BINS = 10
CLASSES = 4
#: Confidence bins a `confidence_degradation` moves mass into: [0.2, 0.5). The top-1 confidence of a
#: 4-class softmax is never below 0.25, so the two lowest bins stay empty.
LOW_CONFIDENCE_BINS = (2, 3, 4)
#: Bins a degradation takes mass from: [0.5, 1.0].
HIGH_CONFIDENCE_BINS = (5, 6, 7, 8, 9)


def model_crc(name: str) -> int:
    """A model_id as devices report it: CRC-32 of the model blob (here, of its name)."""
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class ModelProfile:
    """How a model behaves relative to the fleet's baseline model; the neutral profile changes nothing.

    confidence_degradation: fraction of top-1 confidence mass moved from bins >= 0.5 to [0.2, 0.5).
    anomaly_factor: multiplies the anomaly rate. latency_factor: multiplies p50 and p95 latency.
    memory_delta: percentage points added to peak memory.
    """

    confidence_degradation: float = 0.0
    anomaly_factor: float = 1.0
    latency_factor: float = 1.0
    memory_delta: float = 0.0

    def __post_init__(self) -> None:
        _check(0.0 <= self.confidence_degradation <= 1.0, "confidence_degradation must lie in [0, 1]")
        _check(self.anomaly_factor >= 0.0, "anomaly_factor must be >= 0")
        _check(self.latency_factor > 0.0, "latency_factor must be > 0")


def _three(value: float) -> tuple[float, float, float]:
    return (value, value, value)


@dataclass(frozen=True)
class FleetSpec:
    """A fleet: its devices, their cohorts, the model they start on, and every distribution they report.

    Identity and time: `n_devices` devices named `{id_prefix}{index:05d}`, `seed` for every random draw,
    windows of `window_s` seconds, window 0 opening at Unix `start`; `no_clock_fraction` of the devices
    (chosen at random) have no clock and report window_start = 0. `tags` maps a tag name to its values;
    each device draws one value per tag, uniformly. Given as {value: share} instead, the shares (summing to
    1) are exact: round(share * n_devices) devices get each value (largest remainder), placed at random.

    Models: every device starts on (`model_id`, `fw_version`); `models` maps a model_id to its
    `ModelProfile` (unlisted models, including the initial one, behave as the baseline).

    Inputs (per channel, in engineering units, e.g. g): device level = `input_level` + N(0,
    `device_offset_sd`^2); daily cycle `cycle_amplitude` * sin(2 pi t / `cycle_period_s` + device phase);
    window-to-window jitter N(0, `window_jitter_sd`^2); `samples_per_window` samples per window with
    within-window standard deviation `input_spread`.

    Inferences: Poisson with a per-device mean of `inferences_per_window` * lognormal(0, `rate_spread`);
    a window is idle (0 inferences) with probability `idle_probability`. Top-1 confidence bins and
    predicted classes are Dirichlet-multinomial around `confidence_probs` and `class_priors` with
    concentrations `confidence_concentration` and `class_concentration` (larger = closer to multinomial).
    Anomalies are beta-binomial with mean `anomaly_rate` and concentration `anomaly_concentration`.
    On the validation set, P(correct | confidence c) = c ** `calibration_exponent` (1 = calibrated).

    Resources: p50 latency = `latency_p50_ms` * lognormal(0, `latency_device_sd`) per device *
    lognormal(0, `latency_window_sd`) per window; p95 = p50 * `latency_p95_factor`. Peak memory % =
    `memory_pct` + N(0, `memory_device_sd`^2) per device + N(0, `memory_window_sd`^2) per window. The
    battery runs down `battery_drain_mv` * lognormal(0, `battery_drain_spread`) per window from
    `battery_full_mv` to `battery_empty_mv`, then is recharged (a sawtooth with a random phase per device),
    plus N(0, `battery_noise_mv`^2); below `low_battery_mv` the low_battery flag is set. A device reboots
    in a window with probability `reboot_rate`. A frame arrives `received_delay_s` (mean, exponential)
    seconds after its window closes.
    """

    n_devices: int = 100
    seed: int = 0
    window_s: int = 3600
    start: int = 1_767_225_600
    id_prefix: str = "dev-"
    tags: Mapping[str, tuple[str, ...] | Mapping[str, float]] = field(
        default_factory=lambda: {"site": ("north", "south", "east", "west")}
    )
    no_clock_fraction: float = 0.0
    model_id: int = model_crc("kws-a")
    fw_version: str = "1.0.0"
    models: Mapping[int, ModelProfile] = field(default_factory=dict)
    input_level: tuple[float, float, float] = (0.0, 0.0, 1.0)
    device_offset_sd: tuple[float, float, float] = _three(0.05)
    input_spread: tuple[float, float, float] = _three(0.1)
    samples_per_window: int = 100
    window_jitter_sd: tuple[float, float, float] = _three(0.015)
    cycle_amplitude: tuple[float, float, float] = _three(0.01)
    cycle_period_s: int = 86_400
    inferences_per_window: float = 600.0
    rate_spread: float = 0.3
    idle_probability: float = 0.01
    confidence_probs: tuple[float, ...] = (0.0, 0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.21, 0.48)
    confidence_concentration: float = 500.0
    class_priors: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    class_concentration: float = 500.0
    calibration_exponent: float = 1.0
    anomaly_rate: float = 0.02
    anomaly_concentration: float = 200.0
    latency_p50_ms: float = 12.0
    latency_device_sd: float = 0.1
    latency_window_sd: float = 0.05
    latency_p95_factor: float = 1.8
    memory_pct: float = 55.0
    memory_device_sd: float = 5.0
    memory_window_sd: float = 1.0
    battery_full_mv: float = 4200.0
    battery_empty_mv: float = 3300.0
    low_battery_mv: float = 3400.0
    battery_drain_mv: float = 1.0
    battery_drain_spread: float = 0.3
    battery_noise_mv: float = 3.0
    reboot_rate: float = 0.001
    received_delay_s: float = 5.0

    def __post_init__(self) -> None:
        _check(self.n_devices >= 1, "n_devices must be >= 1")
        _check(self.seed >= 0, "seed must be >= 0")
        _check(0 < self.window_s <= 65535, "window_s must lie in 1..65535 (u16 on the wire)")
        _check(0 <= self.start <= 2**32 - 1, "start must fit a u32")
        _check(0.0 <= self.no_clock_fraction <= 1.0, "no_clock_fraction must lie in [0, 1]")
        _check(0 <= self.model_id < 2**32, "model_id must fit a u32")
        for name in ("input_level", "device_offset_sd", "input_spread", "window_jitter_sd", "cycle_amplitude"):
            _check(len(getattr(self, name)) == CHANNELS, f"{name} needs {CHANNELS} values, one per channel")
        _check(min(self.input_spread) >= 0 and min(self.window_jitter_sd) >= 0, "spreads must be >= 0")
        _check(self.samples_per_window >= 2, "samples_per_window must be >= 2")
        _check(self.cycle_period_s > 0, "cycle_period_s must be > 0")
        _check(self.inferences_per_window >= 0, "inferences_per_window must be >= 0")
        _check(_is_distribution(self.confidence_probs, CONFIDENCE_BINS), "confidence_probs: 10 probabilities")
        _check(_is_distribution(self.class_priors, CLASSES), "class_priors: 4 probabilities summing to 1")
        for name in ("confidence_concentration", "class_concentration", "anomaly_concentration"):
            _check(getattr(self, name) > 0, f"{name} must be > 0")
        for name in ("idle_probability", "anomaly_rate", "reboot_rate"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{name} must lie in [0, 1]")
        _check(self.latency_p50_ms > 0 and self.latency_p95_factor >= 1.0, "latency: p50 > 0, p95 factor >= 1")
        _check(self.battery_full_mv > self.battery_empty_mv, "battery_full_mv must exceed battery_empty_mv")
        _check(self.received_delay_s >= 0, "received_delay_s must be >= 0")
        for name, values in self.tags.items():
            _check(len(values) > 0, f"tag {name!r} needs at least one value")
            if isinstance(values, Mapping):
                shares = list(values.values())
                _check(
                    min(shares) >= 0 and math.isclose(sum(shares), 1.0, abs_tol=1e-9),
                    f"tag {name!r}: shares must be >= 0 and sum to 1",
                )

    def sigma(self, channel: int | None = None) -> float | np.ndarray:
        """Standard deviation of one device's window means around its own level (all channels if None).

        sqrt(cycle_amplitude^2 / 2 + window_jitter_sd^2 + input_spread^2 / samples_per_window): the daily
        cycle averaged over whole periods, the window jitter and the sampling noise of the window mean.
        """
        amplitude, jitter, spread = (
            np.asarray(v) for v in (self.cycle_amplitude, self.window_jitter_sd, self.input_spread)
        )
        value = np.sqrt(amplitude**2 / 2 + jitter**2 + spread**2 / self.samples_per_window)
        return value if channel is None else float(value[channel])

    def profile(self, model_id: int) -> ModelProfile:
        """The behaviour of `model_id` (neutral when the spec does not list it)."""
        return self.models.get(model_id, ModelProfile())


def _is_distribution(values: tuple[float, ...], n: int) -> bool:
    return len(values) == n and min(values) >= 0 and math.isclose(sum(values), 1.0, abs_tol=1e-9)


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)
