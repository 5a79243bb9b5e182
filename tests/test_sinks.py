"""Both stores on the same data model: exact round trips, idempotent writes, errors classified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.frames import Registry, decode_messages, encode_frames
from fleetwatch.sinks import SinkRejected, SinkUnavailable, StoreLocked, open_store
from fleetwatch.sinks.influx import InfluxStore, line_protocol
from fleetwatch.sinks.model import table_points

SCHEMA = Registry.builtin().get(1)


def batch(n: int = 5, start: int = 1_795_000_000, p50: float = 1.5):
    rows = encode_frames(
        SCHEMA,
        {
            "window_start": [0] + [start + 3600 * i for i in range(1, n)],
            "window_s": [3600] * n,
            "latency_p50_ms": [p50] * n,
            "latency_p95_ms": [6553.5] * n,
            "input_mean": [[0.001, -32.768, 1.234]] * n,
            "input_var": [[6.5535, 0.0001, 0.3333]] * n,
            "fw_version": ["1.2.3"] * n,
            "model_id": [4294967295] * n,
        },
    )
    return decode_messages(
        [r.tobytes() for r in rows], [f"dev {i},x=y" for i in range(n)], [start + 99_999] * n, Registry.builtin()
    ).batches[1]


@pytest.fixture(params=["embedded", "influx"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"embedded://{tmp_path / 'store'}"
    return request.getfixturevalue("influx_db")


def test_frames_round_trip_exactly_and_rewrites_are_idempotent(store_url: str) -> None:
    store = open_store(store_url)
    b = batch()
    assert store.write_frames(b) == 5
    assert store.write_frames(batch(p50=2.5)) == 5
    got = store.read_frames(0, 2**31, schema=SCHEMA)
    assert len(got["time"]) == 5
    assert sorted(got["time"].tolist()) == sorted(
        [1_795_099_999 - 3600] + [1_795_000_000 + 3600 * i for i in range(1, 5)]
    )
    by_device = dict(zip(got["device"].tolist(), range(5), strict=True))
    first = by_device["dev 0,x=y"]
    assert got["clock_estimated"][first] and got["time"][first] == 1_795_099_999 - 3600
    assert got["latency_p50_ms"].tolist() == [2.5] * 5
    assert got["latency_p95_ms"].tolist() == [6553.5] * 5
    assert got["input_mean_1"].tolist() == [-32.768] * 5 and got["input_var_2"].tolist() == [0.3333] * 5
    assert got["fw_version"].tolist() == ["1.2.3"] * 5 and got["model_id"].tolist() == ["4294967295"] * 5
    assert got["inference_count"].dtype == np.int64
    only = store.read_frames(0, 2**31, schema=SCHEMA, devices=["dev 3,x=y"])
    assert only["device"].tolist() == ["dev 3,x=y"]
    store.close()


def test_tables_round_trip_with_quotes_and_missing_values(store_url: str) -> None:
    store = open_store(store_url)
    store.write_table(
        "findings",
        np.array([10, 20, 30]),
        {"key": np.array(["site='n'", 'a"b', "c d"], dtype=object), "scope": np.array(["cohort"] * 3)},
        {"q": np.array([0.5, np.nan, 1e-300]), "note": np.array(['x "y"', None, "z"], dtype=object)},
    )
    got = store.read_table("findings", 0, 100, where={"key": ["site='n'", "c d"]})
    assert got["time"].tolist() == [10, 30]
    assert got["q"].tolist() == [0.5, 1e-300] and got["note"].tolist() == ['x "y"', "z"]
    store.close()


def test_field_type_conflict_is_rejected_with_the_reason(store_url: str) -> None:
    store = open_store(store_url)
    store.write_table("m", np.array([1]), {"k": np.array(["a"])}, {"v": np.array([1.5])})
    with pytest.raises(SinkRejected) as info:
        store.write_table("m", np.array([2]), {"k": np.array(["a"])}, {"v": np.array(["text"], dtype=object)})
    assert "conflict" in info.value.reason
    store.close()


def test_stopped_influxd_is_unavailable(influxd, influx_db: str) -> None:
    store = open_store(influx_db)
    influxd.stop()
    try:
        with pytest.raises(SinkUnavailable):
            store.write_frames(batch())
        with pytest.raises(SinkUnavailable):
            store.ping()
    finally:
        influxd.start()
    store.ping()


def test_embedded_store_is_locked_for_a_second_process(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'store'}"
    store = open_store(url)
    code = f"from fleetwatch.sinks import open_store\nopen_store({url!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    store.close()
    assert result.returncode != 0 and StoreLocked.__name__ in result.stderr


def test_line_protocol_escapes() -> None:
    points = table_points(
        "m",
        np.array([5]),
        {"t": np.array(["a b,c=d"])},
        {"s": np.array(['q"\\'], dtype=object), "i": np.array([3]), "b": np.array([True])},
    )
    assert line_protocol(points).tolist() == ['m,t=a\\ b\\,c\\=d s="q\\"\\\\",i=3i,b=true 5']


def test_influx_setup_cli_creates_the_database(influxd) -> None:
    url = influxd.url("made_by_setup")
    out = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "influx", "setup", "--url", url, "--retention", "30d"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ready" in out
    assert b"made_by_setup" in influxd.query("SHOW DATABASES")
    assert b"30d" in influxd.query('SHOW RETENTION POLICIES ON "made_by_setup"') or b"720h" in influxd.query(
        'SHOW RETENTION POLICIES ON "made_by_setup"'
    )
    InfluxStore(url).ping()
