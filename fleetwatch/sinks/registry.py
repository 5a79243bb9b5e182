"""`store.url` -> the store that serves it.

- `embedded:///path/to/dir` -> `EmbeddedStore` (a DuckDB file in the directory; the default, no server)
- `influxdb://[user:password@]host:port/database[?rp=&token=&tls=1&timeout=&chunk=]` -> `InfluxStore`
  (the v1-compatible HTTP API: influxd 1.x, or 2.x/3.x through a DBRP mapping and a token)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fleetwatch.sinks.base import Store

EMBEDDED = "embedded://"


def open_store(url: str, *, read_only: bool = False) -> Store:
    """The store `url` names, opened and ready.

    `read_only` matters to the embedded store (see `EmbeddedStore`: DuckDB lets one process open the file
    for writing); InfluxDB serves any number of processes and decides access itself, so it ignores it.
    """
    scheme = urlsplit(url).scheme
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise ValueError(f"store url {url!r}: expected embedded:///path/to/dir or influxdb://host:port/database")
    return opener(url, read_only)


def _embedded(url: str, read_only: bool) -> Store:
    from fleetwatch.sinks.embedded import EmbeddedStore

    path = unquote(url[len(EMBEDDED) :].split("?", 1)[0])
    if not path:
        raise ValueError(f"store url {url!r}: expected embedded:///path/to/dir")
    return EmbeddedStore(Path(path), read_only=read_only)


def _influx(url: str, read_only: bool) -> Store:
    from fleetwatch.sinks.influx import InfluxStore

    return InfluxStore(url)


_OPENERS: dict[str, Callable[[str, bool], Store]] = {"embedded": _embedded, "influxdb": _influx}
