"""Random streams of the simulator, each keyed by (seed, purpose, ...) so that results never depend on the
order in which things are generated: a window's draws depend on (seed, window index) only, which is what
makes one-window-at-a-time generation identical to a batch, and a change's effect is drawn from its own
streams so that devices it does not target are bit-for-bit unchanged."""

from __future__ import annotations

import numpy as np

DEVICES = 0
WINDOWS = 1
TARGETS = 2
TRAINING = 3

#: One independent stream per quantity drawn for a window; adding a name at the end keeps the others.
WINDOW_STREAMS = (
    "counts",
    "inputs",
    "confidence",
    "classes",
    "anomaly",
    "latency",
    "memory",
    "battery",
    "reboot",
    "delay",
    "confidence_change",
    "class_change",
    "anomaly_change",
)


def generator(seed: int, *key: int) -> np.random.Generator:
    """The stream for `key` under `seed` (a fresh generator; same arguments, same numbers)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def window_generator(seed: int, window: int, name: str) -> np.random.Generator:
    """The stream of one quantity (a name in WINDOW_STREAMS) for window `window`."""
    return generator(seed, WINDOWS, window, WINDOW_STREAMS.index(name))
