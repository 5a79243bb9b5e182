"""Asking devices for snippets: by hand (`fleetwatch snippets request`) and on drift alerts.

Devices are real paho-mqtt subscribers on a real mosquitto (`fleet/<device>/cmd/snippet`); the Notehub
path goes to the recording stand-in for the Notehub API from tests/test_devices.py. The retraining
payload's field data is checked against a real snippet index.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from test_devices import Notehub
from test_ingest_mqtt import wait_for

from fleetwatch.actions.alertdb import AlertManager
from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.webhooks import Outbox
from fleetwatch.cli import main
from fleetwatch.config import Settings
from fleetwatch.findings import Finding
from fleetwatch.frames.snippet import encode_snippet
from fleetwatch.localservers import Mosquitto
from fleetwatch.snippets.capture import (
    AlertHook,
    FieldData,
    SnippetRequester,
    alert_hook_from_settings,
    commander_for,
    request_command,
)
from fleetwatch.snippets.store import SnippetStore
from fleetwatch.state import StateDB

T0 = 1_795_000_000
PROJECT = "app:2606f411-dea6-44a0-9743-1130f57d77d8"
INVENTORY = {"dev-1": {"site": "north"}, "dev-2": {"site": "north"}, "dev-3": {"site": "south"}}


class Devices:
    """One MQTT client subscribed to every device's snippet command topic, recording what arrives."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[str, dict[str, Any], int, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"devices-{port}-{id(self)}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("fleet/+/cmd/snippet", qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append(
            (m.topic.split("/")[1], json.loads(m.payload), m.qos, bool(m.retain))
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, "the device subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def devices(mosquitto: Mosquitto) -> Iterator[Devices]:
    listening = Devices(mosquitto.port)
    yield listening
    listening.close()


def write_config(tmp_path: Path, mosquitto: Mosquitto, extra: str = "") -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\n[mqtt]\nurl = "{mosquitto.url}"\n[snippets]\nrequest_ttl_s = 3600\n' + extra
    )
    return path


def test_request_command_is_one_sorted_ascii_json_line() -> None:
    assert request_command(3, "drift", 1_795_003_600, "n1") == (
        b'{"count":3,"expires":1795003600,"id":"n1","reason":"drift"}'
    )


def test_cli_request_reaches_subscribed_devices_over_mqtt(
    tmp_path: Path, mosquitto: Mosquitto, devices: Devices
) -> None:
    path = write_config(tmp_path, mosquitto)
    (tmp_path / "devices.txt").write_text("dev-3  # the south one\n\n# none here\ndev-1\n")
    result = CliRunner().invoke(
        main,
        [
            "snippets",
            "request",
            "--devices",
            "dev-1,dev-2",
            "--devices-file",
            str(tmp_path / "devices.txt"),
            "--count",
            "5",
            "--reason",
            "audit",
            "-c",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.output.splitlines()] == [
        {"device": d, "sent": True, "error": None} for d in ("dev-1", "dev-2", "dev-3")
    ]
    wait_for(lambda: len(devices.received) == 3, 10, "three commands")
    by_device = {device: (command, qos) for device, command, qos, _ in devices.received}
    assert sorted(by_device) == ["dev-1", "dev-2", "dev-3"]
    commands = [command for command, _ in by_device.values()]
    assert {c["count"] for c in commands} == {5} and {c["reason"] for c in commands} == {"audit"}
    assert len({c["id"] for c in commands}) == 1 and set(commands[0]) == {"count", "expires", "id", "reason"}
    assert {qos for _, qos in by_device.values()} == {1}

    late = Devices(mosquitto.port)  # a device that was offline: the retained request waits for it
    try:
        wait_for(lambda: len(late.received) == 3, 10, "retained commands")
        assert all(retained for *_, retained in late.received)
    finally:
        late.close()


def test_cli_request_needs_devices_and_reports_an_unreachable_broker(tmp_path: Path) -> None:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    none = CliRunner().invoke(main, ["snippets", "request", "-c", str(path)])
    assert none.exit_code == 2 and "say which devices" in none.output
    down = CliRunner().invoke(main, ["snippets", "request", "--devices", "dev-1", "-c", str(path)])
    assert down.exit_code == 1
    assert json.loads(down.output)["error"].startswith("MQTT connect to 127.0.0.1:1")
    no_broker = tmp_path / "none.toml"
    no_broker.write_text(f'data_dir = "{tmp_path}"\n')
    refused = CliRunner().invoke(main, ["snippets", "request", "--devices", "dev-1", "-c", str(no_broker)])
    assert refused.exit_code == 1 and "mqtt.url is not set" in refused.output


def test_request_through_notehub_sets_each_devices_environment_variable(tmp_path: Path) -> None:
    notehub = Notehub()
    try:
        settings = Settings(
            data_dir=tmp_path,
            notehub={"api_url": notehub.url, "token": "secret-token", "project": PROJECT},
            snippets={"request_transport": "notehub", "request_count": 2},
        )
        requester = SnippetRequester(commander_for(settings), 2, 600, clock=lambda: T0, new_id=lambda: "r1")
        assert requester.request(["dev:1", "dev:2"], "drift") == {"dev:1": None, "dev:2": None}
        assert [r["path"] for r in notehub.requests] == [
            f"/v1/projects/{PROJECT}/devices/dev:{i}/environment_variables" for i in (1, 2)
        ]
        assert {r["method"] for r in notehub.requests} == {"PUT"}
        assert {r["auth"] for r in notehub.requests} == {"Bearer secret-token"}
        value = notehub.requests[0]["body"]["environment_variables"]["fleetwatch_snippet"]
        assert json.loads(value) == {"count": 2, "expires": T0 + 600, "id": "r1", "reason": "drift"}
        with pytest.raises(ValueError, match=r"snippets\.request_transport = notehub needs notehub\.token"):
            commander_for(Settings(data_dir=tmp_path, snippets={"request_transport": "notehub"}))
    finally:
        notehub.shutdown()
        notehub.server_close()


def finding(key: str, scope: str = "device", severity: str = "critical") -> Finding:
    return Finding(
        scope=scope,  # type: ignore[arg-type]
        key=key,
        signal="input_mean_0",
        statistic=5.1,
        p=3e-7,
        q=2e-4,
        effect=1.3,
        effect_name="z",
        severity=severity,
        baseline_version="m42-v1",
        window_start=T0,
        window_end=T0 + 3600,
        model_id=42 if scope == "device" else None,
    )


def alerts_config() -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "receivers": [{"name": "retrain", "kind": "webhook", "url": "https://ml.example/r", "payload": "retrain"}],
            "routes": [{"receivers": ["retrain"]}],
            "group_by": ["site"],
            "group_window_s": 0,
            "cooldown_minutes": 1,
        }
    )


def test_drift_alerts_request_snippets_from_the_drifted_devices(
    tmp_path: Path, mosquitto: Mosquitto, devices: Devices
) -> None:
    settings = Settings(
        data_dir=tmp_path, mqtt={"url": mosquitto.url}, snippets={"request_on_alert": True, "request_count": 4}
    )
    hook = alert_hook_from_settings(settings, INVENTORY)
    assert isinstance(hook, AlertHook)
    manager = AlertManager(alerts_config(), StateDB(":memory:"), on_notifications=hook)
    decision = manager.process([finding("dev-1"), finding("site=south", scope="cohort")], T0 + 3700.0, INVENTORY)
    wait_for(lambda: len(devices.received) == 2, 10, "commands to dev-1 and the south cohort")
    got = {device: command for device, command, *_ in devices.received}
    assert sorted(got) == ["dev-1", "dev-3"]
    assert {c["reason"] for c in got.values()} == {"drift"} and {c["count"] for c in got.values()} == {4}
    assert {c["id"] for c in got.values()} == {n.id for n in decision.notifications}

    manager.process([finding("dev-1"), finding("site=south", scope="cohort")], T0 + 3700.0 + 120, INVENTORY)
    manager.process([], T0 + 3700.0 + 240, INVENTORY)
    assert len(devices.received) == 2, "reminders and resolves ask for nothing"
    assert alert_hook_from_settings(Settings(data_dir=tmp_path), INVENTORY) is None


def test_alert_hook_caps_devices_and_survives_an_unreachable_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mqtt={"url": "mqtt://127.0.0.1:1"})
    requester = SnippetRequester(commander_for(settings), 1, 60)
    hook = AlertHook(requester, INVENTORY, max_devices=1)
    manager = AlertManager(alerts_config(), StateDB(":memory:"), on_notifications=hook)
    decision = manager.process([finding("site=north", scope="cohort")], T0 + 3700.0, INVENTORY)
    assert len(decision.notifications) == 1, "the alert decision stands"
    results = hook(decision.notifications)
    assert list(results) == ["dev-1"] and "MQTT connect" in (results["dev-1"] or "")


def test_retraining_payload_counts_the_field_data_since_the_drift_began(tmp_path: Path) -> None:
    db = StateDB(":memory:")
    store = SnippetStore(db, tmp_path / "snippets")
    rng = np.random.default_rng(1)

    def add(device: str, start: int, model_id: int = 42) -> None:
        raw = encode_snippet(rng.normal(size=(10, 3)), interval_ms=10.0, start_time=start, model_id=model_id)
        store.add(raw, device, start, "mqtt")

    add("dev-1", T0 - 60)  # before the drift began
    add("dev-1", T0 + 10)
    add("dev-2", T0 + 7200)  # requested after the alert: still counted
    add("dev-3", T0 + 20)  # another site
    add("dev-2", T0 + 30, model_id=7)  # another model
    manager = AlertManager(alerts_config(), db, field_data=FieldData(store, INVENTORY))
    manager.process([finding("dev-1"), finding("dev-2")], T0 + 3700.0, INVENTORY)
    [message] = Outbox(db).list("pending")
    snippets = json.loads(message.body)["retrain"]["data"]["snippets"]
    assert snippets == {
        "cli": "fleetwatch snippets export --model-id 42 --cohort site=north --since 2026-11-18T11:06:40Z "
        "--out snippets-2026-11-18T110640Z",
        "since": T0,
        "until": T0 + 3600,
        "count": 2,
        "devices": 2,
        "dataset": str(tmp_path / "snippets"),
    }
    assert FieldData(store, INVENTORY)(None, "fleet", T0)["count"] == 4
    assert FieldData(store, INVENTORY)(None, "model_id=7", T0)["count"] == 1
    assert FieldData(store, INVENTORY)(None, "site=east", T0) == {
        "count": 0,
        "devices": 0,
        "dataset": str(tmp_path / "snippets"),
    }
