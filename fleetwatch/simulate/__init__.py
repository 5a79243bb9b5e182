"""Fleet scenario generator: schema-1 telemetry of a simulated TinyML fleet, pure, vectorised and seeded.

Feeds the tests, the benchmarks, the demo and the drift-quality benchmark. Nothing here does I/O or reads
the clock: time is `FleetSpec.start` plus window index times `window_s`. The one exception is
`fleetwatch.simulate.devices` (not imported here): simulated devices as MQTT clients on a real broker.

The model (parameters are `FleetSpec` fields; d = device, k = window, c = input channel)
-------------------------------------------------------------------------------------------
- Device d has a fixed level per channel, level[d, c] = input_level[c] + N(0, device_offset_sd[c]^2)
  (each device mounted a little differently), a daily-cycle phase phi[d] ~ U(0, 2 pi), a Poisson rate, a
  latency and a memory level, a battery drain rate, cohort tags, and has a clock or not.
- Window mean of channel c:
      mean[d, k, c] = level[d, c] + A[c] sin(2 pi t_k / P + phi[d]) + J[c] z1 + S[c] / sqrt(m) z2
  with t_k the middle of window k (Unix s), P = cycle_period_s, A = cycle_amplitude, J = window_jitter_sd
  (a window-level disturbance shared by all samples of the window), S = input_spread (the spread of the m
  = samples_per_window samples inside a window), z1, z2 ~ N(0, 1).
- Window variance (population variance of the m samples): var[d, k, c] = S[c]^2 chi2(m - 1) / m.
  These are exactly the mean and variance of m normal samples around level + cycle + jitter, which is
  what `training_windows` draws raw and `aggregate_inputs` reduces.
- **sigma** (`FleetSpec.sigma(c)`) is the standard deviation of one device's window means around its own
  level in the reference period:  sigma[c] = sqrt(A[c]^2 / 2 + J[c]^2 + S[c]^2 / m).
  The daily cycle IS part of the window means; A^2 / 2 is its mean square over whole cycles (exact when
  the windows tile the cycle, e.g. hourly windows and a 24 h cycle). Device offsets are not in sigma (they
  are the device's level). Wire rounding to 0.001 adds ~0.01% at the defaults (sigma = 0.0194 g).
  Shifts in `Change("input_mean_shift", k)` are k * sigma[c].
- Inferences: Poisson(rate[d]), rate[d] = inferences_per_window * lognormal(0, rate_spread); with
  probability idle_probability the window is idle (0 inferences). An idle window reports zero input
  statistics, latencies, histograms and anomalies (the firmware saw no input), so consumers of input
  statistics should skip windows with inference_count == 0.
- Top-1 confidence histogram and class counts: Dirichlet-multinomial (per-window probabilities ~
  Dirichlet(concentration * probs), then multinomial over the window's inferences).
- Anomalies: beta-binomial, per-window rate ~ Beta with mean anomaly_rate, concentration
  anomaly_concentration.
- Latency: lognormal p50 (device level times a window factor), p95 = p50 * latency_p95_factor.
- Memory, battery (sawtooth discharge, low_battery flag), reboots (Bernoulli per window; seq restarts at 0).
- Values are rounded and clipped to the wire types as the firmware does, with the saturated flag set
  where clipping bit; every frame keeps the schema's invariants.

Changes, models and truth
-------------------------
`Change` describes what happens to which devices (a `Target`) from which window; `truth` resolves it to
devices. Changes are applied on top of the baseline draws from streams of their own, so devices and
windows a change does not touch are bit-for-bit identical to a run without it. A `ModelProfile` in
`FleetSpec.models` gives a model's behaviour; `FleetSimulator.deploy` changes which model devices run
between windows (an over-the-air update, which reboots the device).

Reproducibility: every window's draws depend on (seed, window index) only, so one window at a time and a
batch give identical frames.

>>> spec = FleetSpec(n_devices=20, seed=7)
>>> shift = Change("input_mean_shift", 2.0, Target(where="site=north"), onset=12)
>>> telemetry = simulate(spec, [shift], n_windows=24)
>>> telemetry.frames().shape
(480, 74)
"""

from fleetwatch.simulate.changes import KINDS, Change, Truth, truth
from fleetwatch.simulate.fleet import Deployment, Fleet, Target, inventory_csv
from fleetwatch.simulate.simulator import FleetSimulator, simulate
from fleetwatch.simulate.spec import FleetSpec, ModelProfile, model_crc
from fleetwatch.simulate.telemetry import Messages, Telemetry
from fleetwatch.simulate.training import TrainingData, aggregate_inputs, calibration, training_windows

__all__ = [
    "KINDS",
    "Change",
    "Deployment",
    "Fleet",
    "FleetSimulator",
    "FleetSpec",
    "Messages",
    "ModelProfile",
    "Target",
    "Telemetry",
    "TrainingData",
    "Truth",
    "aggregate_inputs",
    "calibration",
    "inventory_csv",
    "model_crc",
    "simulate",
    "training_windows",
    "truth",
]
