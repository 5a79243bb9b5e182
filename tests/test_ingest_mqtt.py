"""The daemon end to end with a real mosquitto and a real influxd: exact values, faults, no loss.

Publishers are real paho-mqtt clients standing for devices; the daemon runs in-process or, for the
crash tests, as a separate `fleetwatch run` process that is killed with SIGKILL or stopped with SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.config import MqttConfig, Settings
from fleetwatch.daemon import Daemon
from fleetwatch.frames import Registry, decode_messages, encode_frames
from fleetwatch.grafana.builder import DATASOURCE_UID
from fleetwatch.grafana.macros import TimeRange, interpolate
from fleetwatch.grafana.provisioning import alerting_files
from fleetwatch.localservers import HOST, Mosquitto, ServerError
from fleetwatch.pipeline import Message, acknowledge
from fleetwatch.sinks import open_store
from fleetwatch.sources.mqtt import MqttSource

SCHEMA = Registry.builtin().get(1)
START = 1_795_000_000


def fleet_frames(devices: int, windows: int, variant: int = 0) -> list[tuple[str, bytes]]:
    """(device, frame) in publishing order: window by window across the fleet; values encode identity."""
    n = devices * windows
    dev = np.tile(np.arange(devices), windows)
    win = np.repeat(np.arange(windows), devices)
    count = (dev * 7 + win * 3 + variant) % 400
    hist = np.zeros((n, 10), dtype=int)
    hist[:, 9] = count
    classes = np.zeros((n, 4), dtype=int)
    classes[:, 2] = count
    rows = encode_frames(
        SCHEMA,
        {
            "seq": win,
            "window_start": START + 3600 * win,
            "window_s": np.full(n, 3600),
            "fw_version": ["1.2.3"] * n,
            "model_id": np.full(n, 42),
            "inference_count": count,
            "anomaly_count": count // 4,
            "latency_p50_ms": (dev % 50) / 10 + 1,
            "latency_p95_ms": (dev % 50) / 10 + 2 + variant / 10,
            "mem_peak_pct": dev % 101,
            "battery_mv": 3000 + win,
            "input_mean": np.stack([dev / 1000, -win / 1000, np.full(n, 0.5)], axis=1),
            "input_var": np.stack([win / 10000, dev / 10000, np.full(n, 1.25)], axis=1),
            "conf_hist": hist,
            "class_counts": classes,
        },
    )
    return [(f"dev-{d:04d}", r.tobytes()) for d, r in zip(dev.tolist(), rows, strict=True)]


class Publisher:
    """A device-side MQTT client publishing QoS 1 and waiting for the broker's PUBACKs."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"devices-{os.getpid()}-{time.time_ns()}")
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, items: list[tuple[str, bytes]], pace: Callable[[int], None] | None = None) -> None:
        infos = []
        for i, (device, frame) in enumerate(items):
            infos.append(self.client.publish(f"fleet/{device}/telemetry", frame, qos=1))
            if pace is not None:
                pace(i)
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stored_points(store_url: str) -> dict[str, np.ndarray]:
    store = open_store(store_url)
    try:
        return store.read_frames(0, 2**31, schema=SCHEMA)
    finally:
        store.close()


def assert_exact(columns: dict[str, np.ndarray], expected: list[tuple[str, bytes]]) -> None:
    """The store holds exactly the expected frames' decoded values (one point per device and window)."""
    decoded = decode_messages(
        [f for _, f in expected], [d for d, _ in expected], [START] * len(expected), Registry.builtin()
    )
    want = decoded.batches[1].columns()
    order_want = np.lexsort((want["window_start"], want["device"].astype(str)))
    order_got = np.lexsort((columns["time"], columns["device"].astype(str)))
    assert len(columns["time"]) == len(expected)
    assert columns["device"][order_got].tolist() == want["device"][order_want].tolist()
    assert columns["time"][order_got].tolist() == want["window_start"][order_want].tolist()
    for name in ("inference_count", "anomaly_count", "latency_p50_ms", "latency_p95_ms", "battery_mv"):
        assert columns[name][order_got].tolist() == want[name][order_want].tolist(), name
    for i in range(3):
        assert columns[f"input_mean_{i}"][order_got].tolist() == want["input_mean"][order_want, i].tolist()
        assert columns[f"input_var_{i}"][order_got].tolist() == want["input_var"][order_want, i].tolist()
    assert set(columns["fw_version"].tolist()) == {"1.2.3"}


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(mqtt_port: int, store_url: str, **pipeline: object) -> Daemon:
        settings = Settings(
            data_dir=tmp_path / "data",
            mqtt={"url": f"mqtt://127.0.0.1:{mqtt_port}", "client_id": f"fw-{tmp_path.name}"},
            store={"url": store_url},
            http={"listen": "127.0.0.1:0"},
            pipeline={"batch_wait_s": 0.05, "replay_interval_s": 0.3, **pipeline},
        )
        daemon = Daemon(settings)
        daemon.start()
        assert daemon.mqtt is not None and daemon.mqtt.wait_connected(10)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def test_published_frames_come_back_exactly(mosquitto, influx_db: str, daemon_factory) -> None:
    daemon = daemon_factory(mosquitto.port, influx_db)
    items = fleet_frames(devices=40, windows=5)
    publisher = Publisher(mosquitto.port)
    publisher.publish(items)
    publisher.close()
    wait_for(lambda: len(stored_points(influx_db)["time"]) == len(items), 30, "all frames in influxd")
    assert_exact(stored_points(influx_db), items)
    assert daemon.quarantine.counts() == {}


def test_influxd_down_under_load_spools_and_replays_in_order(
    mosquitto, influxd, influx_db: str, daemon_factory
) -> None:
    daemon = daemon_factory(mosquitto.port, influx_db)
    first = fleet_frames(devices=50, windows=4)
    publisher = Publisher(mosquitto.port)
    publisher.publish(first[:100])
    wait_for(lambda: len(stored_points(influx_db)["time"]) == 100, 30, "the first frames stored")
    influxd.stop()
    publisher.publish(first[100:])
    revised = fleet_frames(devices=50, windows=4, variant=1)
    publisher.publish(revised[:50])  # re-sent windows with new values while the store is down: they must win
    wait_for(lambda: daemon.metrics.frames_spooled._value.get() >= 150, 30, "frames spooled")
    influxd.start()
    wait_for(lambda: daemon.pipeline.spool.is_empty(), 60, "the spool to drain")
    publisher.close()
    expected = revised[:50] + first[50:]
    wait_for(lambda: len(stored_points(influx_db)["time"]) == len(expected), 30, "every frame stored")
    assert_exact(stored_points(influx_db), expected)
    assert daemon.metrics.frames_replayed._value.get() == daemon.metrics.frames_spooled._value.get()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(tmp_path: Path, mqtt_port: int, store_url: str, http_port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "FLEETWATCH_DATA_DIR": str(tmp_path / "data"),
        "FLEETWATCH_MQTT__URL": f"mqtt://127.0.0.1:{mqtt_port}",
        "FLEETWATCH_MQTT__CLIENT_ID": f"fw-proc-{tmp_path.name}",
        "FLEETWATCH_STORE__URL": store_url,
        "FLEETWATCH_HTTP__LISTEN": f"127.0.0.1:{http_port}",
        "FLEETWATCH_PIPELINE__BATCH_WAIT_S": "0.05",
    }
    with (tmp_path / "daemon.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fleetwatch", "run"], env=env, stderr=log)

    def ready() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{http_port}/healthz/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(ready, 30, "the daemon to be ready")
    return proc


def test_kill_9_mid_stream_then_restart_loses_nothing(mosquitto, influx_db: str, tmp_path: Path) -> None:
    http_port = free_port()
    proc = start_process(tmp_path, mosquitto.port, influx_db, http_port)
    items = fleet_frames(devices=100, windows=20)
    publisher = Publisher(mosquitto.port)
    killed = {}

    def pace(i: int) -> None:
        if i == 700:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed["at"] = i
        if i % 100 == 0:
            time.sleep(0.05)

    publisher.publish(items, pace)
    assert killed, "the daemon was killed mid-stream"
    restarted = start_process(tmp_path, mosquitto.port, influx_db, http_port)
    try:
        wait_for(lambda: len(stored_points(influx_db)["time"]) == len(items), 60, "every frame after the restart")
        assert_exact(stored_points(influx_db), items)
    finally:
        publisher.close()
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(15)


def test_sigterm_drains_and_exits_0_within_10_s(mosquitto, influx_db: str, tmp_path: Path) -> None:
    http_port = free_port()
    proc = start_process(tmp_path, mosquitto.port, influx_db, http_port)
    publisher = Publisher(mosquitto.port)
    items = fleet_frames(devices=20, windows=10)
    publisher.publish(items)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 10
    publisher.close()
    restarted = start_process(tmp_path, mosquitto.port, influx_db, http_port)
    try:
        wait_for(lambda: len(stored_points(influx_db)["time"]) == len(items), 30, "every frame")
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(10) == 0


def test_fuzzed_payloads_never_crash_the_daemon(mosquitto, influx_db: str, daemon_factory) -> None:
    daemon = daemon_factory(mosquitto.port, influx_db)
    rng = np.random.default_rng(11)
    good = [f for _, f in fleet_frames(devices=10, windows=3)]
    payloads = []
    for i in range(300):
        kind = i % 4
        if kind == 0:
            payloads.append(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        elif kind == 1:
            frame = bytearray(good[i % len(good)])
            frame[int(rng.integers(0, len(frame)))] ^= 1 << int(rng.integers(0, 8))
            payloads.append(bytes(frame))
        elif kind == 2:
            payloads.append(good[i % len(good)][: int(rng.integers(0, 74))])
        else:
            payloads.append(
                good[i % len(good)] + rng.integers(0, 256, int(rng.integers(1, 30)), dtype=np.uint8).tobytes()
            )
    expected = decode_messages(payloads, ["fuzz"] * len(payloads), [START] * len(payloads), Registry.builtin())
    publisher = Publisher(mosquitto.port)
    publisher.publish([("fuzz", p) for p in payloads])
    publisher.close()
    wait_for(lambda: sum(daemon.quarantine.counts().values()) == len(expected.rejects), 30, "every reject quarantined")
    assert daemon.quarantine.counts() == expected.reject_counts()
    assert requests.get(f"http://127.0.0.1:{daemon.http_port}/healthz", timeout=5).json()["ready"] is True


def test_a_full_spool_holds_ingest_unacknowledged_until_the_store_is_back(
    mosquitto, influxd, influx_db: str, daemon_factory
) -> None:
    cap = 40 * SCHEMA.frame_len  # pipeline.spool_max_bytes: fewer than 40 spooled records (frame + header)
    daemon = daemon_factory(mosquitto.port, influx_db, spool_max_bytes=cap, batch_max_messages=20)
    items = fleet_frames(devices=30, windows=4)
    influxd.stop()
    publisher = Publisher(mosquitto.port)
    publisher.publish(items)
    wait_for(lambda: daemon.metrics.spool_full._value.get() == 1, 30, "ingest held by the full spool")
    held = daemon.metrics.frames_spooled._value.get()
    assert 0 < held < 40 and daemon.pipeline.spool.pending_bytes() <= cap
    time.sleep(1.0)  # held, not dropped: nothing more is spooled or quarantined while the store is down
    assert daemon.metrics.frames_spooled._value.get() == held
    assert sum(c._value.get() for c in daemon.metrics.frames_quarantined._metrics.values()) == 0
    influxd.start()
    wait_for(lambda: len(stored_points(influx_db)["time"]) == len(items), 60, "every frame stored")
    publisher.close()
    assert_exact(stored_points(influx_db), items)
    assert daemon.metrics.spool_full._value.get() == 0


def test_the_daemon_writes_its_ingest_counters_for_the_grafana_rules(
    mosquitto, influxd, influx_db: str, daemon_factory
) -> None:
    """Every `pipeline.counters_interval_s` the daemon writes `ingest`: per outcome (quarantined per reason)
    the frames since its last point, tagged with its instance; the rules' queries over it return data."""
    daemon = daemon_factory(mosquitto.port, influx_db, counters_interval_s=1)
    items = fleet_frames(devices=20, windows=3)
    publisher = Publisher(mosquitto.port)
    publisher.publish(items + [("dev-bad", b"\x00" * 7)] * 4)
    publisher.close()

    def rows() -> dict[str, np.ndarray]:
        store = open_store(influx_db)
        try:
            return store.read_table("ingest", 0, 2**31)
        finally:
            store.close()

    def totals() -> dict[tuple[str, str], int]:
        points = rows()
        out: dict[tuple[str, str], int] = {}
        if not len(points["time"]):
            return out
        for outcome, reason, count in zip(points["outcome"], points["reason"], points["count"], strict=True):
            out[outcome, reason] = out.get((outcome, reason), 0) + int(count)
        return out

    wait_for(lambda: totals().get(("stored", ""), 0) == len(items), 30, "the stored frames counted in `ingest`")
    rejects = decode_messages([b"\x00" * 7] * 4, ["dev-bad"] * 4, [START] * 4, Registry.builtin()).reject_counts()
    wait_for(lambda: all(totals().get(("quarantined", r)) == n for r, n in rejects.items()), 30, "the rejects")
    got = totals()
    assert got["received", ""] == len(items) + 4 and got["decoded", ""] == len(items)
    assert got["spooled", ""] == got["replayed", ""] == 0
    assert set(rows()["instance"].tolist()) == {daemon.settings.mqtt.client_id}

    (group,) = alerting_files("http://hook")["rules.yaml"]["groups"]
    now_ms = int(time.time() * 1000)
    for rule in group["rules"]:
        for q in rule["data"]:
            if q["datasourceUid"] == DATASOURCE_UID and '"ingest"' in q["model"]["query"]:
                span = q["relativeTimeRange"]["from"] * 1000
                text = interpolate(q["model"]["query"], TimeRange(now_ms - span, now_ms), {})
                body = urllib.parse.urlencode({"db": influx_db.rsplit("/", 1)[1], "q": text, "epoch": "ms"})
                with urllib.request.urlopen(f"{influxd.http_url}/query", data=body.encode(), timeout=10) as response:
                    (result,) = json.loads(response.read())["results"]
                assert result.get("series"), (rule["title"], text)


def test_an_unreachable_broker_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    source = MqttSource(MqttConfig(url=f"mqtt://127.0.0.1:{port}", reconnect_min_s=1, reconnect_max_s=2), print)
    with caplog.at_level(logging.WARNING, logger="fleetwatch.sources.mqtt"):
        source.start()
        try:
            wait_for(lambda: len(caplog.records) >= 2, 15, "two failed connection attempts logged")
        finally:
            source.close()
    assert f"MQTT broker 127.0.0.1:{port} unreachable; retrying with backoff (up to 2 s)" in caplog.text
    assert not source.wait_connected(0)


def test_an_acknowledgement_from_before_a_reconnect_is_dropped(tmp_path: Path) -> None:
    """A real mosquitto keeps the session over its restart (persistence on) and resends the unacknowledged
    message on the new connection; the old connection's late PUBACK must not acknowledge that new copy."""
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    try:
        broker.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    got: list[Message] = []
    source = MqttSource(MqttConfig(url=broker.url, client_id="fw-stale-acks", reconnect_max_s=1.0), got.append)
    try:
        source.start()
        assert source.wait_connected(10)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-1")
        publisher.connect(HOST, broker.port)
        publisher.loop_start()
        publisher.publish("fleet/dev-1/telemetry", b"frame", qos=1).wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()
        for resent in (1, 2):
            wait_for(lambda n=resent: len(got) == n, 10, "the message did not come")
            if resent == 2:
                acknowledge([got[0]])  # durable only now, after the reconnect: its PUBACK must be dropped
                time.sleep(0.5)
            source.connected.clear()
            broker.restart()
            assert source.wait_connected(15), "no reconnect after the broker restarted"
        wait_for(lambda: len(got) == 3, 10, "the message again: the stale PUBACK acknowledged its resent copy")
        assert [m.payload for m in got] == [b"frame"] * 3
    finally:
        source.close()
        broker.close()
