"""Baselines: a model's healthy telemetry, fitted from training data or a reference period. Pure."""

from fleetwatch.baselines.fit import aggregate_windows, fit_reference, fit_training
from fleetwatch.baselines.model import Baseline, BaselineStore, ChannelBaseline, Gaussian

__all__ = [
    "Baseline",
    "BaselineStore",
    "ChannelBaseline",
    "Gaussian",
    "aggregate_windows",
    "fit_reference",
    "fit_training",
]
