"""What a baseline fit from training data sees, drawn from the same model as the fleet.

Raw input windows are the samples a device at the fleet's average level would aggregate: per window a
time in the daily cycle drawn uniformly, a window jitter, then `samples_per_window` samples with spread
`input_spread`. Aggregated the firmware's way (`aggregate_inputs`) they have the distribution of the fleet
generator's window means and variances. The validation set's top-1 confidences follow `confidence_probs`
(uniform within a bin), predicted classes `class_priors`, and a label is correct with probability
`calibration(spec, confidence)`.

>>> data = training_windows(FleetSpec(), n_windows=4, n_validation=5)
>>> data.samples.shape, aggregate_inputs(data.samples)[0].shape, data.labels.shape
((4, 100, 3), (4, 3), (5,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwatch.simulate import _streams
from fleetwatch.simulate.spec import CHANNELS, CLASSES, CONFIDENCE_BINS, FleetSpec
from fleetwatch.simulate.window import to_wire


@dataclass(frozen=True)
class TrainingData:
    """samples: (windows, samples_per_window, 3) raw inputs; confidence, predicted, labels: the validation set."""

    samples: np.ndarray
    confidence: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray


def calibration(spec: FleetSpec, confidence: np.ndarray) -> np.ndarray:
    """P(correct | top-1 confidence c) = c ** spec.calibration_exponent (exponent 1: perfectly calibrated)."""
    return np.asarray(confidence) ** spec.calibration_exponent


def aggregate_inputs(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the firmware reports for raw windows (..., samples, channels): mean and population variance
    per channel, at the wire resolution (0.001 and 0.0001)."""
    mean, _ = to_wire(samples.mean(axis=-2), 1000, -32768, 32767)
    var, _ = to_wire(samples.var(axis=-2), 10000, 0, 65535)
    return mean, var


def training_windows(spec: FleetSpec, n_windows: int, n_validation: int = 10_000, seed: int = 0) -> TrainingData:
    """Raw input windows and a labelled validation set, reproducible from (spec.seed, seed)."""
    rng = _streams.generator(spec.seed, _streams.TRAINING, seed)
    m = spec.samples_per_window
    phase = rng.uniform(0.0, 2 * np.pi, n_windows)
    offset = np.asarray(spec.cycle_amplitude) * np.sin(phase)[:, None]
    offset = offset + np.asarray(spec.window_jitter_sd) * rng.standard_normal((n_windows, CHANNELS))
    noise = np.asarray(spec.input_spread) * rng.standard_normal((n_windows, m, CHANNELS))
    samples = np.asarray(spec.input_level) + offset[:, None, :] + noise

    bins = rng.choice(CONFIDENCE_BINS, size=n_validation, p=spec.confidence_probs)
    confidence = (bins + rng.random(n_validation)) / CONFIDENCE_BINS
    predicted = rng.choice(CLASSES, size=n_validation, p=spec.class_priors)
    correct = rng.random(n_validation) < calibration(spec, confidence)
    wrong = (predicted + rng.integers(1, CLASSES, n_validation)) % CLASSES
    return TrainingData(samples, confidence, predicted, np.where(correct, predicted, wrong))
