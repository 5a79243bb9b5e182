"""Notehub routes and health endpoints of a running daemon, called by a real HTTP client.

The HTTP client stands for Notehub's route delivery (general HTTP route and web.post binary proxy).
Frames land in the real embedded store; rejects land in the quarantine.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from fleetwatch.config import Settings
from fleetwatch.daemon import Daemon
from fleetwatch.frames import Registry, encode_frames

SECRET = "route-secret-123"
SCHEMA = Registry.builtin().get(1)


def frames(n: int, start: int = 1_795_000_000, device_seq: int = 0) -> list[bytes]:
    count = np.arange(n) % 50
    hist = np.zeros((n, 10), dtype=int)
    hist[:, 9] = count
    classes = np.zeros((n, 4), dtype=int)
    classes[:, 1] = count
    rows = encode_frames(
        SCHEMA,
        {
            "seq": (np.arange(n) + device_seq) % 65536,
            "window_start": start + 3600 * np.arange(n),
            "window_s": np.full(n, 3600),
            "inference_count": count,
            "conf_hist": hist,
            "class_counts": classes,
            "latency_p50_ms": np.full(n, 1.5),
            "latency_p95_ms": np.full(n, 2.5),
        },
    )
    return [r.tobytes() for r in rows]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    settings = Settings(
        data_dir=tmp_path,
        http={"listen": "127.0.0.1:0", "max_body_bytes": 4096},
        notehub={"secret": SECRET},
        pipeline={"batch_wait_s": 0.05},
    )
    d = Daemon(settings)
    d.start()
    yield d
    d.stop()


def url(d: Daemon, path: str) -> str:
    return f"http://127.0.0.1:{d.http_port}{path}"


def event(frame: bytes, device: str, received: float = 1_795_010_000.5) -> dict:
    return {
        "event": "e1",
        "device": device,
        "sn": f"sn-{device}",
        "best_id": device,
        "received": received,
        "file": "telemetry.qo",
        "payload": base64.b64encode(frame).decode(),
    }


def stored(d: Daemon) -> dict[str, np.ndarray]:
    return d.store.read_frames(0, 2**31, schema=SCHEMA)


def test_general_route_array_is_stored_after_200(daemon: Daemon) -> None:
    batch = frames(3)
    body = [event(batch[0], "dev:1"), event(batch[1] + batch[2], "dev:2")]
    response = requests.post(url(daemon, "/notehub"), json=body, headers={"X-Fleetwatch-Secret": SECRET}, timeout=10)
    assert response.status_code == 200 and response.json() == {"accepted": 2}
    columns = stored(daemon)
    assert sorted(zip(columns["device"].tolist(), columns["time"].tolist(), strict=True)) == [
        ("dev:1", 1_795_000_000),
        ("dev:2", 1_795_003_600),
        ("dev:2", 1_795_007_200),
    ]


def test_binary_route_takes_device_from_header_or_query(daemon: Daemon) -> None:
    a, b = frames(2)
    headers = {"X-Fleetwatch-Secret": SECRET, "Content-Type": "application/octet-stream"}
    r1 = requests.post(
        url(daemon, "/notehub/binary"), data=a, headers={**headers, "X-Fleetwatch-Device": "dev:h"}, timeout=10
    )
    r2 = requests.post(url(daemon, "/notehub/binary?device=dev:q"), data=b, headers=headers, timeout=10)
    r3 = requests.post(url(daemon, "/notehub/binary"), data=b, headers=headers, timeout=10)
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 400)
    assert r3.json()["error"] == "no_device"
    assert sorted(stored(daemon)["device"].tolist()) == ["dev:h", "dev:q"]


@pytest.mark.parametrize("headers", [{}, {"X-Fleetwatch-Secret": "wrong"}, {"X-Fleetwatch-Secret": SECRET + "x"}])
def test_missing_or_wrong_secret_is_401_and_nothing_is_stored(daemon: Daemon, headers: dict) -> None:
    response = requests.post(url(daemon, "/notehub"), json=[event(frames(1)[0], "dev:1")], headers=headers, timeout=10)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert len(stored(daemon)["device"]) == 0


def test_bad_json_and_bad_base64_are_400_with_the_reason(daemon: Daemon) -> None:
    headers = {"X-Fleetwatch-Secret": SECRET}
    bad_json = requests.post(url(daemon, "/notehub"), data=b"{not json", headers=headers, timeout=10)
    broken = event(frames(1)[0], "dev:1")
    broken["payload"] = "!!!not-base64!!!"
    bad_b64 = requests.post(
        url(daemon, "/notehub"), json=[event(frames(1)[0], "dev:0"), broken], headers=headers, timeout=10
    )
    no_device = requests.post(
        url(daemon, "/notehub"), json={"payload": "AA==", "received": 1}, headers=headers, timeout=10
    )
    assert (bad_json.status_code, bad_json.json()["error"]) == (400, "bad_json")
    assert (bad_b64.status_code, bad_b64.json()["error"]) == (400, "bad_base64")
    assert "event 1" in bad_b64.json()["detail"]
    assert (no_device.status_code, no_device.json()["error"]) == (400, "no_device")
    assert len(stored(daemon)["device"]) == 0, "a 400 request ingests nothing (all or nothing)"


def test_oversized_body_is_413(daemon: Daemon) -> None:
    body = json.dumps([event(f, "dev:1") for f in frames(60)])
    assert len(body) > 4096
    response = requests.post(url(daemon, "/notehub"), data=body, headers={"X-Fleetwatch-Secret": SECRET}, timeout=10)
    assert response.status_code == 413


def test_rejected_frames_are_quarantined_and_counted(daemon: Daemon) -> None:
    good = frames(1)[0]
    bad = bytearray(good)
    bad[30] ^= 0xFF
    response = requests.post(
        url(daemon, "/notehub"),
        json=[event(good + bytes(bad), "dev:9")],
        headers={"X-Fleetwatch-Secret": SECRET},
        timeout=10,
    )
    assert response.status_code == 200
    entries = daemon.quarantine.list()
    assert [(e.device, e.reason, e.transport, e.raw) for e in entries] == [("dev:9", "bad_crc", "notehub", bytes(bad))]
    metrics = requests.get(url(daemon, "/metrics"), timeout=10).text
    assert 'fleetwatch_frames_rejected_total{reason="bad_crc"} 1.0' in metrics
    assert "fleetwatch_frames_stored_total 1.0" in metrics
    assert 'fleetwatch_http_requests_total{route="/notehub",status="200"} 1.0' in metrics


def test_healthz(daemon: Daemon) -> None:
    response = requests.get(url(daemon, "/healthz"), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"live": True, "ready": True, "checks": {"pipeline": True}}
    assert requests.get(url(daemon, "/nope"), timeout=10).status_code == 404
    assert requests.get(url(daemon, "/notehub"), timeout=10).status_code == 405
