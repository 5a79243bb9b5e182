"""Stores: where telemetry and the daemon's own measurements live.

`open_store(url)` picks the store a `store.url` names (`sinks.registry`); `Store` and the failure classes
are in `sinks.base`; what a point is, in `sinks.model` (documented in docs/data-model.md).
"""

from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, Store, StoreLocked
from fleetwatch.sinks.registry import open_store

__all__ = ["SinkRejected", "SinkUnavailable", "Store", "StoreLocked", "open_store"]
