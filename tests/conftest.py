"""Fixtures that start real servers (mosquitto, influxd) on loopback ports in throw-away directories, and
ones that run a test on each implementation of the frame decoder and of the drift statistics (C routines,
numpy fallback).

When a server cannot be started the test fails with the reason (what to install, or the server's log);
it is never skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fleetwatch.drift import native as drift_native
from fleetwatch.frames import native
from fleetwatch.localservers import Influxd, LocalServer, Mosquitto, ServerError
from fleetwatch.sinks.influx_setup import setup_v1

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
_databases = itertools.count(1)


def _started(server_type: type[LocalServer]) -> Iterator[LocalServer]:
    try:
        server = server_type()
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()


def _implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> str:
    """The implementation `request.param` names: "c" asserts that `module.routines` is built, "numpy" switches
    it off (the fallback a build without a C compiler uses)."""
    if request.param == "c":
        assert module.routines is not None, (
            f"the C routines of {module.__name__} are not built: python3 setup.py build_ext -i"
        )
    else:
        monkeypatch.setattr(module, "routines", None)
    return request.param


@pytest.fixture(params=["c", "numpy"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: with the decoder's C routines, then with them switched off (the numpy and
    binascii fallback a build without a C compiler uses). Returns "c" or "numpy"."""
    return _implementation(request, monkeypatch, native)


@pytest.fixture(params=["c", "numpy"])
def drift_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: with the drift statistics' C routines (`fleetwatch.drift._kernels`), then with
    them switched off (the numpy code). Returns "c" or "numpy"."""
    return _implementation(request, monkeypatch, drift_native)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh broker for one test (`.port`, `.url`, `.stop()`, `.start()`, `.restart()`)."""
    yield from _started(Mosquitto)


@pytest.fixture(scope="session")
def influxd() -> Iterator[Influxd]:
    """One influxd for the session; each test takes its own database through `influx_db`."""
    yield from _started(Influxd)


@pytest.fixture
def influx_db(influxd: Influxd) -> Iterator[str]:
    """The store URL (influxdb://127.0.0.1:PORT/NAME) of a new, empty database, made by `influx setup`."""
    try:
        influxd.start()  # a no-op unless an earlier test left it stopped
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    url = influxd.url(f"test_{os.getpid()}_{next(_databases)}")
    setup_v1(url)
    yield url
    if influxd.running:
        influxd.query(f'DROP DATABASE "{url.rsplit("/", 1)[1]}"')


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The shared golden directory (frames-v1.jsonl), beside the repo."""
    if not (GOLDEN / "frames-v1.jsonl").is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN}: the repo must sit beside shared/", pytrace=False)
    return GOLDEN
