"""Stores: where telemetry and the daemon's own measurements live. `open_store(url)` picks one.

- `embedded:///path/to/dir` -> `EmbeddedStore` (DuckDB file; the default, no server)
- `influxdb://[user:password@]host:port/database[?rp=&token=&tls=1]` -> `InfluxStore` (v1-compatible API)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, Store, StoreLocked


def open_store(url: str) -> Store:
    """The store a `store.url` names."""
    scheme = urlsplit(url).scheme
    if scheme == "embedded":
        from fleetwatch.sinks.embedded import EmbeddedStore

        return EmbeddedStore(Path(unquote(url[len("embedded://") :])))
    if scheme == "influxdb":
        from fleetwatch.sinks.influx import InfluxStore

        return InfluxStore(url)
    raise ValueError(f"store url {url!r}: expected embedded:///path/to/dir or influxdb://host:port/database")


__all__ = ["SinkRejected", "SinkUnavailable", "Store", "StoreLocked", "open_store"]
