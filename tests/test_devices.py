"""Commands to devices, over real transports.

- MQTT: a real mosquitto, the daemon's real MQTT ingest into the embedded store, and 40 simulated devices
  (`fleetwatch.simulate.devices`), each its own paho client: it subscribes to `fleet/<id>/cmd/ota`,
  verifies every command with the server's public key (signature, device, expiry, replay), runs what the
  command says from the next window on (the `FleetSimulator` draws its telemetry) and publishes its frames
  to `fleet/<id>/telemetry`. A rollout of a worse model goes stage 1 -> judged rollback -> devices revert.
- Notehub API: a real local HTTP server stands in for api.notefile.net and records every request; the
  test checks the exact paths, query parameters and bodies the commander sends, and its error handling.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from fleetwatch.actions.devices import MqttCommander, NotehubClient, NotehubCommander
from fleetwatch.actions.rollout import Artifact, Plan, RolloutController, RolloutLog, command, select_devices
from fleetwatch.actions.rollout_config import RolloutConfig, RolloutNotehubConfig
from fleetwatch.actions.signing import generate_private_key, sign_command, verify_command
from fleetwatch.config import Settings
from fleetwatch.daemon import Daemon
from fleetwatch.frames import Registry
from fleetwatch.localservers import Mosquitto
from fleetwatch.simulate import FleetSimulator, FleetSpec, ModelProfile, model_crc
from fleetwatch.simulate.devices import DeviceFleet
from fleetwatch.state import StateDB

HOUR = 3600
BASELINE, WORSE = model_crc("kws-a"), model_crc("kws-worse")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- MQTT: simulated devices that obey signed commands (fleetwatch.simulate.devices) ---------------------
@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Daemon]:
    settings = Settings(
        data_dir=tmp_path / "data",
        mqtt={"url": mosquitto.url, "client_id": f"fw-{tmp_path.name}"},
        http={"enabled": False},
        drift={"enabled": False},
        pipeline={"batch_wait_s": 0.05},
    )
    running = Daemon(settings)
    running.start()
    assert running.mqtt is not None and running.mqtt.wait_connected(10)
    yield running
    running.stop()


def test_rollout_over_mqtt_stage_judged_rollback_devices_revert(daemon: Daemon, mosquitto: Mosquitto) -> None:
    spec = FleetSpec(
        n_devices=40, seed=21, window_s=HOUR, model_id=BASELINE, models={WORSE: ModelProfile(anomaly_factor=4.0)}
    )
    key = generate_private_key()
    fleet = DeviceFleet(FleetSimulator(spec), daemon.settings.mqtt, key.public_key())
    sim, ids, devices = fleet.sim, fleet.ids, fleet.devices
    inventory = {d: {"site": str(site)} for d, site in zip(ids, sim.fleet.tags["site"].tolist(), strict=True)}
    plan = Plan(
        "model",
        Artifact(str(WORSE), "https://models.example/kws-worse.tflite", "ef" * 32),
        Artifact(str(BASELINE)),
        (25.0, 100.0),
        25.0,
        4 * HOUR,
        seed=3,
    )
    selection = select_devices(inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
    canary, control = selection.canary_at(0), list(selection.control)
    late = canary[0]  # offline when the command goes out: gets the retained desired state on connecting
    fleet.connect(d for d in ids if d != late)

    config = RolloutConfig.model_validate({"bake_s": 4 * HOUR, "judge": {"min_devices": 5}})
    commander = MqttCommander(daemon.settings.mqtt, config.command_topic, timeout_s=10)
    controller = RolloutController(daemon.db, commander, config, key, store=daemon.store)
    schema = Registry.builtin().get(1)

    def window() -> int:
        """Every device runs its model for one window and the online ones publish their frames; returns the
        window's end."""
        start = fleet.now()
        online = sum(device.online for device in devices.values())
        fleet.window()
        wait_for(
            lambda: len(daemon.store.read_frames(start, start + 1, schema=schema)["device"]) == online,
            15,
            "frames stored",
        )
        return start + HOUR

    window()
    started = controller.start("kws-worse", plan, selection, now=spec.start + HOUR, actor="erin@cli")
    assert started[-1].reason == "10 of 10 commands delivered (10 target, 0 baseline)"
    fleet.connect([late])
    wait_for(lambda: all(devices[d].model == WORSE for d in canary), 10, "canary devices on the new model")
    assert all(devices[d].model == BASELINE for d in control)

    looks = 0
    while RolloutLog(daemon.db).status("kws-worse")[0]["state"] == "baking" and looks < 4:
        end = window()
        looks += 1
        controller.tick(end)
    status = RolloutLog(daemon.db).status("kws-worse")[0]
    print(f"anomaly rate x4 over MQTT, 10 vs 10 devices: rolled back at look {looks}")
    assert status["state"] == "rolled_back" and looks <= 2
    verdict = status["verdict"]
    assert verdict["verdict"] == "rollback"
    assert next(m for m in verdict["metrics"] if m["metric"] == "anomaly_rate")["status"] == "worse"
    rollback = next(e for e in RolloutLog(daemon.db).audit("kws-worse") if e.action == "rollback")
    assert rollback.actor == "controller" and rollback.reason.startswith("judge: anomaly_rate worse")

    wait_for(lambda: all(devices[d].model == BASELINE for d in canary), 10, "canary devices back on the baseline")
    window()
    last = fleet.now() - HOUR
    stored = daemon.store.read_frames(last, last + 1, schema=schema)
    assert sorted(stored["device"].tolist()) == sorted(ids)
    assert set(stored["model_id"].tolist()) == {str(BASELINE)}
    for d in canary:
        assert [c["model_id"] for c in devices[d].accepted] == [WORSE, BASELINE]
        assert devices[d].accepted[1]["rollback_model_id"] == BASELINE
    assert all(not devices[d].accepted for d in control)
    assert not any(device.refused for device in devices.values())
    fleet.close()


# -- Notehub API: a recording stand-in server ------------------------------------------------------------
class Notehub(ThreadingHTTPServer):
    """A local HTTP server standing in for the Notehub API: records (method, path, query, headers, body)
    of every request and answers from `responses` (path -> list of (status, JSON) in turn, else 200 {})."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NotehubHandler)
        self.requests: list[dict[str, Any]] = []
        self.responses: dict[str, list[tuple[int, Any]]] = {}
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _NotehubHandler(BaseHTTPRequestHandler):
    server: Notehub

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append(
            {
                "method": self.command,
                "path": parts.path,
                "query": parse_qs(parts.query),
                "auth": self.headers.get("Authorization"),
                "body": body,
            }
        )
        queued = self.server.responses.get(parts.path)
        status, answer = queued.pop(0) if queued else (200, {})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def notehub() -> Iterator[Notehub]:
    server = Notehub()
    yield server
    server.shutdown()
    server.server_close()


PROJECT = "app:2606f411-dea6-44a0-9743-1130f57d77d8"
FIRMWARE = Plan(
    "firmware",
    Artifact("1.1.0", "notehub:app-1.1.0.bin", "aa" * 32),
    Artifact("1.0.0", "notehub:app-1.0.0.bin", "bb" * 32),
    (30.0, 60.0),
    20.0,
    HOUR,
)


def _commander(notehub: Notehub, **config: Any) -> NotehubCommander:
    client = NotehubClient(notehub.url, "secret-token", PROJECT, timeout_s=5)
    return NotehubCommander(client, RolloutNotehubConfig(**config))


def test_notehub_environment_variables_and_host_dfu(notehub: Notehub) -> None:
    key = generate_private_key()
    wires = {d: sign_command(command(FIRMWARE, "fw", d, "target", 1000, 60), key) for d in ("dev:1", "dev:2", "dev:3")}
    notehub.responses[f"/v1/projects/{PROJECT}/devices/dev:3/environment_variables"] = [(503, {"err": "busy"})]
    results = _commander(notehub, dfu=True).send(list(wires.items()))
    assert results["dev:1"] is None and results["dev:2"] is None
    assert results["dev:3"] is not None and "HTTP 503" in results["dev:3"]

    puts, dfu = notehub.requests[:3], notehub.requests[3]
    for request, device in zip(puts, wires, strict=True):
        assert request["method"] == "PUT"
        assert request["path"] == f"/v1/projects/{PROJECT}/devices/{device}/environment_variables"
        assert request["auth"] == "Bearer secret-token"
        assert list(request["body"]) == ["environment_variables"]
        value = request["body"]["environment_variables"]["fleetwatch_ota"]
        assert verify_command(value.encode(), key.public_key())["device"] == device
    assert dfu["method"] == "POST" and dfu["path"] == f"/v1/projects/{PROJECT}/dfu/host/update"
    assert dfu["query"] == {"deviceUID": ["dev:1", "dev:2"]}  # not dev:3, whose command did not get through
    assert dfu["body"] == {"filename": "app-1.1.0.bin"}
    assert len(notehub.requests) == 4


def test_notehub_dfu_status_is_read_page_by_page(notehub: Notehub) -> None:
    path = f"/v1/projects/{PROJECT}/dfu/host/status"
    page = {
        "device_uid": "dev:1",
        "dfu_in_progress": True,
        "current": {"version": "1.0.0"},
        "status": {
            "requested_version": "1.1.0",
            "updates": [{"phase": "downloading", "status": "ok", "description": "43%"}],
        },
    }
    notehub.responses[path] = [
        (200, {"devices": [page], "has_more": True}),
        (200, {"devices": [{"device_uid": "dev:2"}]}),
    ]
    status = _commander(notehub, dfu=True).status(["dev:1", "dev:2"])
    assert status == {
        "dev:1": "in progress, running 1.0.0, requested 1.1.0, downloading/ok: 43%",
        "dev:2": "idle, running ?, requested ?",
    }
    assert [r["query"]["pageNum"] for r in notehub.requests] == [["1"], ["2"]]
    assert notehub.requests[0]["query"]["deviceUID"] == ["dev:1", "dev:2"]
    assert _commander(notehub).status(["dev:1"]) == {}  # without DFU the API knows nothing of the update


def test_promotion_sets_the_fleet_variable(notehub: Notehub, tmp_path: Path) -> None:
    """The controller with the Notehub commander: promoting the last stage (60%) commands every device still
    on the baseline (control, and those no stage reached) and, with `fleet_uid` set, the fleet's variable
    (a command for device "*")."""
    key = generate_private_key()
    controller = RolloutController(
        StateDB(tmp_path / "state.db"), _commander(notehub, fleet_uid="fleet:north"), RolloutConfig(), key
    )
    inventory = {f"dev:{i}": {"site": "north"} for i in range(10)}
    selection = select_devices(inventory, stages=FIRMWARE.stages, control_pct=FIRMWARE.control_pct, seed=1)
    controller.start("fw-1.1.0", FIRMWARE, selection, now=1000, actor="frank@cli")
    controller.promote("fw-1.1.0", now=1100, actor="frank@cli", reason="early", force=True)
    events = controller.promote("fw-1.1.0", now=1200, actor="frank@cli", reason="done", force=True)
    assert [e.action for e in events] == ["promote", "command"]
    assert events[-1].reason == "5 of 5 commands delivered (5 target, 0 baseline)"  # 2 control, 2 unstaged, "*"
    fleet = [r for r in notehub.requests if "/fleets/" in r["path"]]
    assert [r["path"] for r in fleet] == [f"/v1/projects/{PROJECT}/fleets/fleet:north/environment_variables"]
    cmd = verify_command(fleet[0]["body"]["environment_variables"]["fleetwatch_ota"].encode(), key.public_key())
    assert (cmd["device"], cmd["version"], cmd["issued"]) == ("*", "1.1.0", 1200)
    device_puts = [r for r in notehub.requests if "/devices/" in r["path"]]
    assert len(device_puts) == 10 and len({r["path"] for r in device_puts}) == 10
    assert np.all([r["method"] == "PUT" for r in notehub.requests])
