"""Snippets into the dataset through every transport of a running daemon, and the dataset's limits.

The HTTP client stands for Notehub's route delivery (general HTTP route with events of the `snippets.qo`
notefile, and the `web.post` binary proxy route `/notehub/snippet`); a real mosquitto and a paho client
stand for devices publishing on `fleet/<device>/snippet`. Snippets land in the dataset directory and its
index; malformed ones in the quarantine with their reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.publish as mqtt_publish
import pytest
import requests
from click.testing import CliRunner
from test_ingest_http import SECRET, event, frames, stored, url
from test_ingest_mqtt import wait_for

from fleetwatch.cli import main
from fleetwatch.config import Settings
from fleetwatch.daemon import Daemon
from fleetwatch.frames.snippet import encode_snippet
from fleetwatch.localservers import Mosquitto
from fleetwatch.quarantine import Quarantine
from fleetwatch.snippets.store import Query, SnippetStore
from fleetwatch.state import StateDB

START = 1_795_000_000
HEADERS = {"X-Fleetwatch-Secret": SECRET, "Content-Type": "application/octet-stream"}


def snippet(seed: int = 0, rows: int = 50, start: int = START, reason: str = "anomaly") -> bytes:
    samples = np.random.default_rng(seed).normal([0.0, 0.0, 9.81], 0.3, size=(rows, 3)).astype(np.float32)
    return encode_snippet(samples, interval_ms=10.0, start_time=start, reason=reason, model_id=42)


def corrupted(data: bytes) -> bytes:
    out = bytearray(data)
    out[30] ^= 0xFF
    return bytes(out)


def settings_for(tmp_path: Path, **sections: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        http={"listen": "127.0.0.1:0", "max_body_bytes": 4096},
        notehub={"secret": SECRET},
        pipeline={"batch_wait_s": 0.05},
        **sections,
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(settings_for(tmp_path))
    d.start()
    yield d
    d.stop()


def records(d: Daemon) -> list:
    assert d.snippets is not None
    return d.snippets.store.query()


def metric(d: Daemon, line: str) -> bool:
    return line in requests.get(url(d, "/metrics"), timeout=10).text


def test_binary_route_stores_the_snippet_file_and_index_row(daemon: Daemon, tmp_path: Path) -> None:
    raw = snippet()
    response = requests.post(
        url(daemon, "/notehub/snippet"),
        data=raw,
        headers={**HEADERS, "X-Fleetwatch-Device": "dev:1", "X-Notecard-Label": "wobble"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "stored" and body["checksum"] == hashlib.sha256(raw).hexdigest()
    [record] = records(daemon)
    assert (record.device, record.time, record.model_id, record.reason, record.label) == (
        "dev:1",
        START,
        42,
        "anomaly",
        "wobble",
    )
    assert (record.transport, record.channels, record.samples, record.interval_ms) == ("notehub:snippet", 3, 50, 10.0)
    assert record.path == f"dev:1/20261118T110640Z-{record.checksum[:16]}.snip"
    assert (tmp_path / "snippets" / record.path).read_bytes() == raw
    assert record.bytes == len(raw) == 622

    again = requests.post(
        url(daemon, "/notehub/snippet?device=dev:1&label=other"), data=raw, headers=HEADERS, timeout=10
    )
    assert again.json() == {"status": "duplicate", "id": record.id, "checksum": record.checksum}
    assert len(records(daemon)) == 1
    query_label = requests.post(
        url(daemon, "/notehub/snippet?device=dev:1&label=tap"), data=snippet(seed=5), headers=HEADERS, timeout=10
    )
    assert query_label.json()["status"] == "stored"
    assert [r.label for r in records(daemon)] == ["wobble", "tap"]
    assert metric(daemon, "fleetwatch_snippets_stored_total 2.0")
    assert metric(daemon, "fleetwatch_snippets_duplicate_total 1.0")
    assert metric(daemon, 'fleetwatch_snippets_received_total{transport="notehub:snippet"} 3.0')


@pytest.mark.parametrize("headers", [{}, {"X-Fleetwatch-Secret": "wrong"}])
def test_binary_route_without_the_secret_is_401(daemon: Daemon, headers: dict) -> None:
    response = requests.post(url(daemon, "/notehub/snippet?device=dev:1"), data=snippet(), headers=headers, timeout=10)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert records(daemon) == []


def test_binary_route_oversized_is_413_and_no_device_is_400(daemon: Daemon) -> None:
    big = snippet(rows=400)
    assert len(big) > 4096
    too_large = requests.post(url(daemon, "/notehub/snippet?device=dev:1"), data=big, headers=HEADERS, timeout=10)
    no_device = requests.post(url(daemon, "/notehub/snippet"), data=snippet(), headers=HEADERS, timeout=10)
    assert (too_large.status_code, too_large.json()["error"]) == (413, "too_large")
    assert (no_device.status_code, no_device.json()["error"]) == (400, "no_device")
    assert records(daemon) == []


def test_malformed_snippets_are_quarantined_with_their_reason_and_counted(daemon: Daemon) -> None:
    bad_crc = corrupted(snippet())
    for body in (bad_crc, b"\xfc\x01"):
        response = requests.post(url(daemon, "/notehub/snippet?device=dev:2"), data=body, headers=HEADERS, timeout=10)
        assert response.status_code == 200
    assert response.json() == {"status": "quarantined", "reason": "snippet:truncated"}
    entries = daemon.quarantine.list()
    assert [(e.device, e.transport, e.reason, e.raw) for e in entries] == [
        ("dev:2", "notehub:snippet", "snippet:bad_crc", bad_crc),
        ("dev:2", "notehub:snippet", "snippet:truncated", b"\xfc\x01"),
    ]
    assert records(daemon) == []
    assert metric(daemon, 'fleetwatch_snippets_quarantined_total{reason="bad_crc"} 1.0')
    assert metric(daemon, 'fleetwatch_snippets_quarantined_total{reason="truncated"} 1.0')


def test_general_route_takes_snippet_notes_beside_telemetry_frames(daemon: Daemon) -> None:
    raw = snippet(seed=3)
    note = event(raw, "dev:3", received=START + 60.5) | {"file": "snippets.qo", "body": {"label": "idle"}}
    bad = event(corrupted(raw), "dev:4") | {"file": "snippets.qo"}
    frame = event(frames(1)[0], "dev:3")
    response = requests.post(
        url(daemon, "/notehub"), json=[frame, note, bad], headers={"X-Fleetwatch-Secret": SECRET}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 3
    assert [s["status"] for s in body["snippets"]] == ["stored", "quarantined"]
    assert body["snippets"][1]["reason"] == "snippet:bad_crc"
    [record] = records(daemon)
    assert (record.device, record.received, record.label, record.transport) == ("dev:3", START + 60, "idle", "notehub")
    assert stored(daemon)["device"].tolist() == ["dev:3"], "the telemetry frame went to the store"
    assert [(e.device, e.reason) for e in daemon.quarantine.list()] == [("dev:4", "snippet:bad_crc")]


def test_general_route_with_a_bad_snippet_event_is_400_and_stores_nothing(daemon: Daemon) -> None:
    good = event(snippet(), "dev:5") | {"file": "snippets.qo"}
    broken = event(snippet(seed=1), "dev:5") | {"file": "snippets.qo", "payload": "!!not base64!!"}
    response = requests.post(
        url(daemon, "/notehub"), json=[good, broken], headers={"X-Fleetwatch-Secret": SECRET}, timeout=10
    )
    assert (response.status_code, response.json()["error"]) == (400, "bad_base64")
    assert "event 1" in response.json()["detail"]
    assert records(daemon) == [] and daemon.quarantine.list() == []


def test_snippets_disabled_is_404_and_the_notefile_is_telemetry_again(tmp_path: Path) -> None:
    d = Daemon(settings_for(tmp_path, snippets={"enabled": False}))
    d.start()
    try:
        off = requests.post(url(d, "/notehub/snippet?device=dev:1"), data=snippet(), headers=HEADERS, timeout=10)
        assert (off.status_code, off.json()["error"]) == (404, "not_found")
        note = event(snippet(), "dev:1") | {"file": "snippets.qo"}
        response = requests.post(url(d, "/notehub"), json=note, headers={"X-Fleetwatch-Secret": SECRET}, timeout=10)
        assert response.json() == {"accepted": 1}
        assert [e.reason for e in d.quarantine.list()] == ["bad_magic"]
        assert d.snippets is None
    finally:
        d.stop()


def test_mqtt_snippets_are_stored_and_malformed_ones_quarantined(mosquitto: Mosquitto, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mqtt={"url": mosquitto.url, "client_id": f"fw-{tmp_path.name}"})
    d = Daemon(settings)
    d.start()
    try:
        assert d.mqtt_snippets is not None and d.mqtt_snippets.wait_connected(10)
        assert d.mqtt is not None and d.mqtt.wait_connected(10)
        assert d.mqtt_snippets.config.subscription == "fleet/+/snippet"
        good, bad = snippet(seed=7, reason="requested"), corrupted(snippet(seed=8))
        for device, payload in (("dev-7", good), ("dev-8", bad), ("dev-7", good)):
            mqtt_publish.single(f"fleet/{device}/snippet", payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
        wait_for(lambda: len(d.quarantine.list()) == 1 and len(records(d)) == 1, 20, "snippets handled")
        wait_for(lambda: d.metrics.snippets_duplicate._value.get() == 1, 20, "the duplicate counted")
        [record] = records(d)
        assert (record.device, record.reason, record.transport, record.checksum) == (
            "dev-7",
            "requested",
            "mqtt",
            hashlib.sha256(good).hexdigest(),
        )
        assert [(e.device, e.reason, e.transport, e.raw) for e in d.quarantine.list()] == [
            ("dev-8", "snippet:bad_crc", "mqtt", bad)
        ]
        assert metric(d, 'fleetwatch_snippets_received_total{transport="mqtt"} 3.0')
        assert requests.get(url(d, "/healthz"), timeout=10).json()["checks"] == {"pipeline": True, "mqtt": True}
    finally:
        d.stop()


def test_store_prunes_by_age_then_by_size_oldest_first(tmp_path: Path) -> None:
    now = [float(START + 1000 * 86400)]
    store = SnippetStore(StateDB(":memory:"), tmp_path / "ds", max_bytes=3 * 622, max_age_days=10, clock=lambda: now[0])
    day = 86400
    received = [int(now[0]) - 20 * day, int(now[0]) - 3 * day, int(now[0]) - 2 * day, int(now[0]) - day, int(now[0])]
    added = [store.add(snippet(seed=i), f"dev-{i}", r, "mqtt")[0] for i, r in enumerate(received)]
    assert store.total_bytes() == 5 * 622
    assert store.prune() == 2, "the 20-day-old one by age, then the oldest of the rest by size"
    assert [r.id for r in store.query()] == [a.id for a in added[2:]]
    assert not (tmp_path / "ds" / added[0].path).exists() and not (tmp_path / "ds" / added[1].path).exists()
    assert (tmp_path / "ds" / added[2].path).read_bytes() == snippet(seed=2)
    assert store.prune() == 0


def test_store_query_filters_and_device_names_are_safe_paths(tmp_path: Path) -> None:
    store = SnippetStore(StateDB(":memory:"), tmp_path)
    a, _ = store.add(snippet(seed=1, start=START), "dev/../a", START, "mqtt")
    b, _ = store.add(snippet(seed=2, start=0, reason="periodic"), "..", START + 7200, "notehub")
    assert a.path.startswith("dev_.._a/") and b.path.startswith("_../")
    assert (tmp_path / a.path).is_file() and (tmp_path / b.path).is_file()
    assert b.time == START + 7200, "no device clock: the receive time"
    assert [r.id for r in store.query(Query(since=START + 1))] == [b.id]
    assert [r.id for r in store.query(Query(until=START + 1))] == [a.id]
    assert [r.id for r in store.query(Query(devices=[".."]))] == [b.id]
    assert [r.id for r in store.query(Query(reason="periodic", model_id=42))] == [b.id]
    assert store.query(Query(model_id=7)) == []
    store.mark_forwarded(a.id, "training", START)
    assert [r.id for r in store.query(Query(forwarded=False))] == [b.id]
    assert store.get(a.id).forward_category == "training"
    with pytest.raises(ValueError, match="bad_crc"):
        store.add(corrupted(snippet()), "dev", START, "mqtt")
    assert base64.b64encode(store.read(a)) == base64.b64encode(snippet(seed=1, start=START))


def test_quarantine_replay_sends_snippet_entries_to_the_dataset(tmp_path: Path) -> None:
    """`fleetwatch quarantine replay` decodes snippet entries as snippets, not as frames."""
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n')
    quarantine = Quarantine(StateDB(tmp_path / "state.db"))
    good, bad = snippet(seed=11), corrupted(snippet(seed=12))
    quarantine.add_raw(
        [
            (START, "dev-1", "mqtt", "snippet:internal_error", 0, good),
            (START, "dev-2", "mqtt", "snippet:truncated", 0, bad),
        ]
    )
    shown = CliRunner().invoke(main, ["quarantine", "show", "2", "-c", str(path)])
    [now] = json.loads(shown.output)["decoded_now"]
    assert (now["ok"], now["reason"]) == (False, "snippet:bad_crc") and now["detail"].startswith("CRC 0x")
    result = CliRunner().invoke(main, ["quarantine", "replay", "--all", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"replayed": 1, "still_rejected": 1, "reasons": ["snippet:bad_crc"]}
    assert [(e.device, e.reason) for e in quarantine.list()] == [("dev-2", "snippet:bad_crc")]
    [record] = SnippetStore(StateDB(tmp_path / "state.db"), tmp_path / "snippets").query()
    assert (record.device, record.checksum) == ("dev-1", hashlib.sha256(good).hexdigest())


def test_the_same_bytes_from_another_device_are_a_duplicate_and_leave_no_file(tmp_path: Path) -> None:
    store = SnippetStore(StateDB(":memory:"), tmp_path)
    first, created = store.add(snippet(), "dev-a", START, "mqtt")
    again, created_again = store.add(snippet(), "dev-b", START + 1, "notehub")
    assert (created, created_again, again.id, again.device) == (True, False, first.id, "dev-a")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.snip")) == [first.path]


def test_daemon_prunes_to_the_size_limit_and_schedules_hourly_pruning(tmp_path: Path) -> None:
    d = Daemon(settings_for(tmp_path, snippets={"max_bytes": 2 * 622}))
    d.start()
    try:
        for seed in range(3):
            response = requests.post(
                url(d, f"/notehub/snippet?device=dev-{seed}"), data=snippet(seed=seed), headers=HEADERS, timeout=10
            )
            assert response.json()["status"] == "stored"
        assert [r.device for r in records(d)] == ["dev-1", "dev-2"], "the oldest went"
        assert metric(d, "fleetwatch_snippets_pruned_total 1.0")
        assert d.jobs.scheduler.get_job("snippets-prune") is not None
    finally:
        d.stop()
