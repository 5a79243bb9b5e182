"""Fixtures that start real servers (mosquitto, influxd) on loopback ports in throw-away directories.

When a server cannot be started the test fails with the reason (what to install, or the server's log);
it is never skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetwatch.localservers import Influxd, Mosquitto, ServerError

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
_databases = itertools.count(1)


def _started(server_type: type, **kwargs: object) -> Iterator:
    try:
        server = server_type(**kwargs)
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh broker for one test (`.port`, `.url`, `.stop()`, `.start()`)."""
    yield from _started(Mosquitto)


@pytest.fixture(scope="session")
def influxd() -> Iterator[Influxd]:
    """One influxd for the session; each test takes its own database through `influx_db`."""
    yield from _started(Influxd)


@pytest.fixture
def influx_db(influxd: Influxd) -> str:
    """A store URL for a new, empty database on the session's influxd."""
    if influxd.process is None:
        influxd.start()
    name = f"test{next(_databases)}"
    influxd.query(f'CREATE DATABASE "{name}"')
    return influxd.url(name)


@pytest.fixture
def golden_path() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden vectors not found at {GOLDEN}: the repo must sit beside shared/", pytrace=False)
    return GOLDEN
