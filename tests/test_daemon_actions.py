"""The daemon runs the actions side: drift findings of its scheduled check become signed webhook alerts (and
snippet requests to the drifted devices), and a rollout started from the CLI is judged and rolled back by
the daemon's own scheduled controller step.

Real servers only: a real mosquitto (the `mosquitto` fixture), the real embedded store, and
`recording_server.Recorder`, a real HTTP server on 127.0.0.1 standing for a generic JSON webhook receiver
(the `webhook` kind; a Slack incoming webhook is reached the same way, with another body).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from click.testing import CliRunner
from recording_server import Received, Recorder
from test_ingest_mqtt import Publisher, free_port, wait_for
from test_rollout import _retained

from fleetwatch.actions.receivers import signature
from fleetwatch.actions.rollout import RolloutLog
from fleetwatch.actions.signing import load_public_key, verify_command
from fleetwatch.baselines import BaselineStore
from fleetwatch.cli import main
from fleetwatch.config import Settings
from fleetwatch.daemon import Daemon
from fleetwatch.demo import fit_simulated_baseline
from fleetwatch.frames import Registry
from fleetwatch.grafana.dashboards import SIGNALS
from fleetwatch.localservers import Mosquitto
from fleetwatch.simulate import Change, FleetSimulator, FleetSpec, ModelProfile, Target, inventory_csv, model_crc
from fleetwatch.simulate.devices import DeviceFleet
from fleetwatch.sinks import open_store
from fleetwatch.state import StateDB

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600
SECRET = "webhook-hmac-secret"
SCHEMA = Registry.builtin().get(1)


def _verified(request: Received) -> bool:
    header = request.headers.get("X-Fleetwatch-Signature", "")
    stamp = header.partition("t=")[2].partition(",")[0]
    return stamp.isdigit() and header == signature(SECRET, request.body, int(stamp))


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz/ready", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def _metric(text: str, name: str) -> dict[str, float]:
    """Samples of one family in Prometheus text: the label part of each line -> value."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            labels, _, value = line[len(name) :].rpartition(" ")
            samples[labels] = float(value)
    return samples


def test_drift_found_by_the_daemon_job_reaches_the_webhook_signed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    reference = 48  # two days: one would leave the profiles' error so large that h is 40 for cohorts (docs/drift.md)
    spec = FleetSpec(n_devices=40, seed=4, window_s=HOUR)
    shift = Change("input_mean_shift", 3.0, Target(where="site=north"), onset=reference, channels=(0,))
    sim = FleetSimulator(spec, [shift])
    (tmp_path / "inventory.csv").write_text(inventory_csv(spec))
    receiver = Recorder()
    webhook = {"name": "ops", "kind": "webhook", "url": receiver.url("/hooks/fleetwatch"), "secret": SECRET}
    settings = Settings(
        data_dir=tmp_path / "data",
        mqtt={"url": mosquitto.url, "client_id": f"fw-{tmp_path.name}"},
        http={"listen": "127.0.0.1:0"},
        fleet={"inventory": tmp_path / "inventory.csv"},
        pipeline={"batch_wait_s": 0.05},
        snippets={"request_on_alert": True},
        alerts={
            "receivers": [webhook],
            "routes": [{"cohort": "site=*", "receivers": ["ops"]}],
            "group_by": ["site"],
            "group_window_s": 0,
            "delivery": {"poll_interval_s": 0.2},
        },
    )
    daemon = Daemon(settings)
    fit_simulated_baseline(sim, reference, daemon.store, BaselineStore(settings.baselines_dir))
    daemon.start()
    publisher = Publisher(mosquitto.port)
    try:
        assert daemon.mqtt is not None and daemon.mqtt.wait_connected(10)
        for _ in range(4):  # live windows with site=north shifted; the daemon's drift job after each
            start = spec.start + sim.next_window * HOUR
            telemetry = sim.step()
            frames = telemetry.frames()
            publisher.publish([(d, frames[i].tobytes()) for i, d in enumerate(telemetry.device.tolist())])
            wait_for(
                lambda s=start: len(daemon.store.read_frames(s, s + 1, schema=SCHEMA)["device"]) == spec.n_devices,
                15,
                "the window stored",
            )
            assert daemon.jobs.run("drift-check", start + HOUR)
            wait_for(lambda: daemon.actions.outbox.outbox.counts()["pending"] == 0, 10, "the outbox delivered")
            if any(r.json()["group"]["label"] == "site=north" for r in receiver.received):
                break
        north = [r for r in receiver.received if r.json()["group"]["label"] == "site=north"]
        assert north, [r.json()["title"] for r in receiver.received]
        message = north[0].json()
        assert message["status"] == "firing"
        assert {(a["scope"], a["signal"]) for a in message["alerts"]} >= {("cohort", "input_mean_0")}
        assert {a["key"] for a in message["alerts"] if a["scope"] == "cohort"} == {"site=north"}
        devices = {a["key"] for a in message["alerts"] if a["scope"] == "device"}
        inventory = dict(zip(sim.fleet.ids.tolist(), sim.fleet.tags["site"].tolist(), strict=True))
        assert all(inventory[d] == "north" for d in devices)
        assert all(_verified(r) for r in receiver.received)
        assert north[0].headers["Idempotency-Key"] and north[0].path == "/hooks/fleetwatch"

        # the check also wrote each device's baseline band (at the window's start, like its telemetry):
        # site=north's channel 0 sits about 3 sigma above its band's mean, the others within
        bands = daemon.store.read_table("baseline_band", start, start + 1)
        assert set(bands["device"].tolist()) == set(inventory) and set(bands["signal"]) == {s.name for s in SIGNALS}
        window = daemon.store.read_frames(start, start + 1, schema=SCHEMA)
        value = dict(zip(window["device"].tolist(), window["input_mean_0"].tolist(), strict=True))
        channel = bands["signal"] == "input_mean_0"
        z = {
            d: 3 * (value[d] - mean) / (upper - mean)
            for d, mean, upper in zip(
                bands["device"][channel], bands["mean"][channel], bands["upper"][channel], strict=True
            )
        }
        assert np.mean([z[d] for d, site in inventory.items() if site == "north"]) > 2
        assert abs(np.mean([z[d] for d, site in inventory.items() if site != "north"])) < 1
        assert np.all(bands["lower"] <= bands["mean"]) and np.all(bands["mean"] <= bands["upper"])
        requests_sent = {d: json.loads(w) for d, w in _retained(mosquitto, "fleet/+/cmd/snippet").items()}
        assert set(requests_sent) == {d for d, site in inventory.items() if site == "north"}  # the snippets hook
        assert {r["reason"] for r in requests_sent.values()} == {"drift"}

        text = requests.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5).text
        sent = _metric(text, "fleetwatch_alert_deliveries_total")
        assert sent['{outcome="sent",receiver="ops"}'] == len(receiver.received)
        assert sum(_metric(text, "fleetwatch_alerts_open").values()) >= 1
        assert _metric(text, "fleetwatch_rollouts")['{state="baking"}'] == 0
    finally:
        publisher.close()
        daemon.stop()
        receiver.close()
    listing = CliRunner().invoke(main, ["alerts", "list", "--json", "--state", str(settings.state_path)])
    assert any(a["key"] == "site=north" for a in json.loads(listing.output)["alerts"]), listing.output


def test_a_worse_canary_started_from_the_cli_is_rolled_back_by_the_running_daemon(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`fleetwatch run` as a process; `fleetwatch rollout start` from the CLI; the canary model peaks at
    ~100% RAM (a guardrail). The daemon's `rollouts` job (every 2 s here: drift.window_s = 2) judges it,
    rolls it back and publishes the signed rollback commands, which the simulated devices obey."""
    worse = model_crc("kws-b")
    now = int(time.time())
    spec = FleetSpec(n_devices=30, seed=6, window_s=1, start=now, models={worse: ModelProfile(memory_delta=45)})
    sim = FleetSimulator(spec)
    (tmp_path / "inventory.csv").write_text(inventory_csv(spec))
    config = tmp_path / "fleetwatch.toml"
    http_port = free_port()
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nclient_id = "fw-proc-{tmp_path.name}"\n'
        f'[fleet]\ninventory = "{tmp_path / "inventory.csv"}"\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n[pipeline]\nbatch_wait_s = 0.05\n'
        "[drift]\nwindow_s = 2\ncheck_delay_s = 0\nenabled = false\n"
        "[rollout]\nstages = [30, 100]\ncontrol_pct = 30\nbake_s = 600\n"
    )
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(main, [*args, "-c", str(config)])
        assert result.exit_code == 0, result.output
        return result.output

    cli("rollout", "keygen")
    public = load_public_key(tmp_path / "data" / "keys" / "ota-signing.pub.pem")
    fleet = DeviceFleet(sim, Settings(mqtt={"url": mosquitto.url}).mqtt, public)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env |= {"PYTHONPATH": str(ROOT), "FLEETWATCH_CONFIG": str(config)}
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "fleetwatch", "run"], cwd=ROOT, env=env, stderr=log)
    try:
        wait_for(lambda: _ready(http_port), 30, "the daemon to be ready")
        fleet.connect()
        baseline = str(spec.model_id)
        cli("rollout", "start", "--model", str(worse), "--baseline", baseline, "--id", "kws-b", "--reason", "new")
        rollouts = RolloutLog(StateDB(tmp_path / "data" / "state.db"))
        canary = [d for d, row in rollouts.devices("kws-b").items() if row["desired"] == "target"]
        assert len(canary) == 9  # stage 1: 30% of the 30 eligible devices
        wait_for(lambda: all(fleet.devices[d].model == worse for d in canary), 10, "the canary on kws-b")

        def rolled_back() -> bool:
            fleet.window()  # one window a second, as the devices run it, over MQTT to the daemon
            time.sleep(max(0.0, fleet.now() - time.time()))
            return rollouts.status("kws-b")[0]["state"] == "rolled_back"

        wait_for(rolled_back, 25, "the daemon to roll the canary back")
        trail = rollouts.audit("kws-b")
        rollback = next(e for e in trail if e.action == "rollback")
        assert rollback.actor == "controller" and "guardrail memory_ceiling" in rollback.reason
        wait_for(lambda: all(fleet.devices[d].model == spec.model_id for d in canary), 10, "the canary reverted")
        retained = _retained(mosquitto)
        commands = {d: verify_command(retained[d], public) for d in canary}
        assert {c["model_id"] for c in commands.values()} == {spec.model_id}
        assert all(c["rollout_id"] == "kws-b" for c in commands.values())
        status = cli("rollout", "status", "kws-b")
        assert status.startswith("kws-b: rolled_back")
        text = requests.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5).text
        assert _metric(text, "fleetwatch_rollouts")['{state="rolled_back"}'] == 1
        assert _metric(text, "fleetwatch_rollout_stage") == {}  # no active rollout left
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        fleet.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(5)
        log.close()
    store = open_store(f"embedded://{tmp_path / 'data' / 'store'}")
    frames = store.read_frames(now, int(time.time()) + 60, schema=SCHEMA, devices=canary)
    store.close()
    assert str(worse) in set(frames["model_id"].astype(str).tolist())
