"""The InfluxDB store against a real influxd 1.x (started by the `influxd` fixture), and `influx setup`.

The 2.x setup path is exercised against `FakeInflux2`, a local HTTP server that records requests and
answers as InfluxDB OSS 2.x's management API does (/api/v2/orgs, /api/v2/buckets, /api/v2/dbrps): no 2.x
server is available here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import store_contract as contract
from click.testing import CliRunner

from fleetwatch.cli import main
from fleetwatch.localservers import Influxd
from fleetwatch.sinks import SinkRejected, SinkUnavailable, open_store
from fleetwatch.sinks.influx import InfluxStore


@pytest.fixture
def store(influx_db: str) -> Iterator[InfluxStore]:
    s = open_store(influx_db)
    assert isinstance(s, InfluxStore)
    yield s
    s.close()


def test_golden_frames_round_trip_exactly(store: InfluxStore, golden_path: Path) -> None:
    contract.check_golden_round_trip(store, golden_path)


def test_clockless_frames_get_the_estimated_time(store: InfluxStore) -> None:
    contract.check_clock_estimated(store)


def test_a_rewritten_frame_overwrites_itself(store: InfluxStore) -> None:
    contract.check_rewrite_overwrites(store)


def test_read_frames_of_some_columns(store: InfluxStore) -> None:
    contract.check_read_frames_columns(store)


def test_where_on_tag_values_that_need_quoting(store: InfluxStore) -> None:
    contract.check_where_with_awkward_tags(store)


def test_field_type_conflict_is_rejected_with_the_servers_reason(store: InfluxStore) -> None:
    contract.check_field_type_conflict(store)


def test_new_fields_and_missing_values(store: InfluxStore) -> None:
    contract.check_new_field_and_missing_values(store)


def test_a_conflict_is_a_partial_write_that_keeps_the_good_points(store: InfluxStore) -> None:
    store.write_table("m", np.array([1_795_000_000]), {"k": np.array(["a"])}, {"v": np.array([1.5])})
    with pytest.raises(SinkRejected) as info:
        store.write_table(
            "m",
            np.array([1_795_000_001, 1_795_000_002]),
            {"k": np.array(["a", "a"])},
            {"v": np.array(["text", None], dtype=object), "w": np.array([True, False])},
        )
    assert info.value.partial and info.value.reason.startswith("partial write: field type conflict")
    got = store.read_table("m", 0, 2**32)
    assert got["time"].tolist() == [1_795_000_000, 1_795_000_002]
    assert got["w"].tolist() == [None, False]
    assert got["v"][0] == 1.5 and np.isnan(got["v"][1])


def test_chunked_writes_and_a_long_device_filter(influx_db: str) -> None:
    store = open_store(influx_db + "?chunk=7")
    batch = contract.fleet_batch(devices=150, windows=2)
    assert store.write_frames(batch) == 300
    wanted = [f"dev-{d}" for d in range(0, 150, 2)] + ["nobody"]
    got = store.read_frames(0, 2**32, schema=contract.SCHEMA, devices=wanted)
    assert len(got["time"]) == 150
    assert sorted(set(got["device"].tolist())) == sorted(wanted[:-1])
    assert got["input_mean_2"].tolist() == [-32.768] * 150
    store.close()


def test_stopped_influxd_is_unavailable_and_the_store_recovers(influxd: Influxd, store: InfluxStore) -> None:
    batch = contract.fleet_batch(devices=2, windows=1)
    store.write_frames(batch)
    influxd.stop()
    try:
        for call in (
            store.ping,
            lambda: store.write_frames(batch),
            lambda: store.read_frames(0, 1, schema=batch.schema),
        ):
            with pytest.raises(SinkUnavailable):
                call()
    finally:
        influxd.start()
    store.ping()
    assert store.write_frames(batch) == 2
    assert len(store.read_frames(0, 2**32, schema=batch.schema)["time"]) == 2


def test_a_missing_database_is_unavailable_and_says_to_run_setup(influxd: Influxd) -> None:
    store = open_store(influxd.url("never_created"))
    with pytest.raises(SinkUnavailable, match="influx setup"):
        store.write_frames(contract.fleet_batch(devices=1, windows=1))
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "influxdb://127.0.0.1:8086/bad;name",
        'influxdb://127.0.0.1:8086/x"y',
        "influxdb://127.0.0.1:8086/",
        "influxdb://127.0.0.1:8086/ok?rp=a%20b",
        "influxdb://127.0.0.1:8086/ok?retention=1",
    ],
)
def test_database_and_options_are_validated(url: str) -> None:
    with pytest.raises(ValueError):
        InfluxStore(url)


def test_setup_v1_creates_the_database_and_a_default_retention_policy(influxd: Influxd) -> None:
    url = influxd.url("made_by_setup_v1")
    runner = CliRunner()
    first = runner.invoke(main, ["influx", "setup", "--url", url, "--retention", "90d"])
    assert first.exit_code == 0, first.output
    assert "ready" in first.output
    again = runner.invoke(main, ["influx", "setup", "--url", url, "--retention", "4w"])
    assert again.exit_code == 0, again.output
    policies = json.loads(influxd.query('SHOW RETENTION POLICIES ON "made_by_setup_v1"'))
    rows = {row[0]: row for row in policies["results"][0]["series"][0]["values"]}
    assert rows["fleetwatch"][1] == "672h0m0s" and rows["fleetwatch"][4] is True
    bad = runner.invoke(main, ["influx", "setup", "--url", url, "--retention", "90 days"])
    assert bad.exit_code != 0 and "expected a number of h, d or w" in bad.output


class FakeInflux2(ThreadingHTTPServer):
    """Stands for InfluxDB OSS 2.x's HTTP API (orgs, buckets, DBRPs); records every request it gets."""

    ORG_ID = "0123456789abcdef"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Influx2Handler)
        self.requests: list[dict] = []
        self.buckets: list[dict] = []
        self.dbrps: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Influx2Handler(BaseHTTPRequestHandler):
    server: FakeInflux2

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append(
            {"method": method, "path": url.path, "query": query, "auth": self.headers["Authorization"], "body": body}
        )
        if self.headers["Authorization"] != "Token all-access":
            return self._answer(401, {"code": "unauthorized", "message": "unauthorized access"})
        state = self.server
        if (method, url.path) == ("GET", "/api/v2/orgs"):
            orgs = [{"id": state.ORG_ID, "name": "acme"}] if query.get("org") == "acme" else []
            return self._answer(200, {"orgs": orgs})
        if (method, url.path) == ("GET", "/api/v2/buckets"):
            return self._answer(200, {"buckets": [b for b in state.buckets if b["name"] == query.get("name")]})
        if (method, url.path) == ("POST", "/api/v2/buckets"):
            bucket = {**body, "id": f"b{len(state.buckets):015d}", "type": "user"}
            state.buckets.append(bucket)
            return self._answer(201, bucket)
        if method == "PATCH" and url.path.startswith("/api/v2/buckets/"):
            bucket = next(b for b in state.buckets if b["id"] == url.path.rsplit("/", 1)[1])
            bucket.update(body)
            return self._answer(200, bucket)
        if (method, url.path) == ("GET", "/api/v2/dbrps"):
            found = [d for d in state.dbrps if (d["database"], d["retention_policy"]) == (query["db"], query["rp"])]
            return self._answer(200, {"content": found})
        if (method, url.path) == ("POST", "/api/v2/dbrps"):
            dbrp = {**body, "id": f"d{len(state.dbrps):015d}", "virtual": False}
            state.dbrps.append(dbrp)
            return self._answer(201, dbrp)
        return self._answer(404, {"code": "not found", "message": "path not found"})

    def _answer(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def influx2() -> Iterator[FakeInflux2]:
    server = FakeInflux2()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_setup_v2_creates_the_bucket_and_the_dbrp_mapping(influx2: FakeInflux2) -> None:
    args = ["influx", "setup", "--url", "influxdb://db.example:8086/fleet?rp=week&token=t", "--retention", "7d"]
    args += ["--v2-url", influx2.url, "--org", "acme", "--token", "all-access"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    calls = [(r["method"], r["path"]) for r in influx2.requests]
    assert calls == [
        ("GET", "/api/v2/orgs"),
        ("GET", "/api/v2/buckets"),
        ("POST", "/api/v2/buckets"),
        ("GET", "/api/v2/dbrps"),
        ("POST", "/api/v2/dbrps"),
    ]
    assert {r["auth"] for r in influx2.requests} == {"Token all-access"}
    bucket = influx2.requests[2]["body"]
    assert bucket["name"] == "fleet" and bucket["orgID"] == FakeInflux2.ORG_ID
    assert bucket["retentionRules"] == [{"type": "expire", "everySeconds": 7 * 86400}]
    assert influx2.requests[3]["query"] == {"orgID": FakeInflux2.ORG_ID, "db": "fleet", "rp": "week"}
    dbrp = influx2.requests[4]["body"]
    assert dbrp == {
        "orgID": FakeInflux2.ORG_ID,
        "bucketID": influx2.buckets[0]["id"],
        "database": "fleet",
        "retention_policy": "week",
        "default": True,
    }

    influx2.requests.clear()
    again = CliRunner().invoke(main, [*args[:5], "30d", *args[6:]])
    assert again.exit_code == 0, again.output
    assert [(r["method"], r["path"]) for r in influx2.requests] == [
        ("GET", "/api/v2/orgs"),
        ("GET", "/api/v2/buckets"),
        ("PATCH", f"/api/v2/buckets/{influx2.buckets[0]['id']}"),
        ("GET", "/api/v2/dbrps"),
    ]
    assert influx2.buckets[0]["retentionRules"][0]["everySeconds"] == 30 * 86400 and len(influx2.dbrps) == 1


def test_setup_v2_reports_the_servers_refusal(influx2: FakeInflux2) -> None:
    args = ["influx", "setup", "--url", "influxdb://h:8086/fleet", "--v2-url", influx2.url, "--org", "acme"]
    result = CliRunner().invoke(main, [*args, "--token", "wrong"])
    assert result.exit_code != 0 and "unauthorized" in result.output
    partial = CliRunner().invoke(main, args)
    assert partial.exit_code != 0 and "needs all of --v2-url, --org and --token" in partial.output
