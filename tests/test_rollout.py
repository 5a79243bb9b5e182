"""Rollouts: the stratified draw, the state machine, and a daemon restart in the middle of a rollout.

The restart test runs against real servers: commands go to a real mosquitto (`MqttCommander`, retained,
QoS 1) and telemetry lives in the real embedded store. The simulated fleet (`FleetSimulator`) runs what
was delivered to it: after each controller step the test deploys, for the next window, the version the
controller recorded as delivered to each device (test_devices.py has devices that read the broker).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.actions.devices import MqttCommander
from fleetwatch.actions.judge import METRICS
from fleetwatch.actions.rollout import (
    Artifact,
    Plan,
    RolloutController,
    RolloutError,
    RolloutLog,
    select_devices,
)
from fleetwatch.actions.rollout_config import RolloutConfig
from fleetwatch.actions.signing import generate_private_key, verify_command
from fleetwatch.baselines.fit import fit_reference
from fleetwatch.baselines.model import BaselineStore
from fleetwatch.cli import main
from fleetwatch.config import MqttConfig
from fleetwatch.drift.scopes import read_inventory
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.localservers import Mosquitto
from fleetwatch.simulate import FleetSimulator, FleetSpec, ModelProfile, inventory_csv, model_crc
from fleetwatch.sinks import open_store
from fleetwatch.state import StateDB

HOUR = 3600
NEW_MODEL = model_crc("kws-b")


# -- the draw --------------------------------------------------------------------------------------------
def _inventory(n: int = 400) -> dict[str, dict[str, str]]:
    rng = np.random.default_rng(0)
    sites = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    hardware = rng.choice(["a", "b"], n, p=[0.7, 0.3])
    return {f"dev-{i:04d}": {"site": s, "hw": h} for i, (s, h) in enumerate(zip(sites, hardware, strict=True))}


def test_draw_is_reproducible_nested_and_stratified() -> None:
    inventory = _inventory()
    draw = select_devices(inventory, stages=(5, 25, 100), control_pct=10, seed=42)
    again = select_devices(inventory, stages=(5, 25, 100), control_pct=10, seed=42)
    other = select_devices(inventory, stages=(5, 25, 100), control_pct=10, seed=43)
    assert draw == again and draw.control != other.control

    assert len(draw.control) == 40 and draw.eligible == 400
    stages = [set(draw.canary_at(k)) for k in range(3)]
    assert [len(s) for s in stages] == [20, 100, 360]
    assert stages[0] < stages[1] < stages[2] and not stages[2] & set(draw.control)
    assert stages[2] | set(draw.control) == set(inventory)

    # systematic sampling per stratum: each stratum within one device of its proportional share
    def strata(devices: object) -> collections.Counter:
        return collections.Counter((inventory[d]["site"], inventory[d]["hw"]) for d in devices)

    everyone, control = strata(inventory), strata(draw.control)
    remaining = everyone - control
    for stratum, size in everyone.items():
        assert abs(control[stratum] - 0.10 * size) <= 1.5
        for k, count in ((0, 20), (1, 100)):
            assert abs(strata(draw.canary_at(k))[stratum] - count * remaining[stratum] / 360) <= 1.5


def test_draw_within_a_cohort() -> None:
    inventory = _inventory()
    draw = select_devices(inventory, stages=(50, 100), control_pct=20, seed=1, cohort=("site=north|east", "hw=a"))
    chosen = set(draw.control) | set(draw.canary_at(1))
    assert chosen == {d for d, t in inventory.items() if t["site"] in ("north", "east") and t["hw"] == "a"}
    with pytest.raises(RolloutError, match="eligible"):
        select_devices(inventory, stages=(100,), control_pct=5, seed=1, cohort=("site=moon",))


# -- the state machine with real servers -----------------------------------------------------------------
class Harness:
    """A fleet, a real embedded store, state database and baseline store, and a controller sending over
    real MQTT."""

    def __init__(self, tmp: Path, broker: Mosquitto, config: RolloutConfig) -> None:
        self.spec = FleetSpec(n_devices=120, seed=5, window_s=HOUR)
        self.sim = FleetSimulator(self.spec)
        (tmp / "inventory.csv").write_text(inventory_csv(self.spec))
        self.inventory = read_inventory(tmp / "inventory.csv")
        self.index = {d: i for i, d in enumerate(self.sim.fleet.ids.tolist())}
        self.store = open_store(f"embedded://{tmp / 'store'}")
        self.state_path = tmp / "state.db"
        self.config = config
        self.key = generate_private_key()
        self.mqtt = MqttConfig(url=broker.url, client_id="fleetwatch-test")
        self.baselines = BaselineStore(tmp / "baselines")
        self.open()

    def open(self) -> None:
        """(Re)start the daemon's part: a state database handle and a controller on it."""
        self.db = StateDB(self.state_path)
        commander = MqttCommander(self.mqtt, self.config.command_topic, timeout_s=5)
        self.controller = RolloutController(
            self.db, commander, self.config, self.key, store=self.store, baselines=self.baselines
        )

    def close(self) -> None:
        self.db.close()

    def now(self) -> int:
        return self.spec.start + self.sim.next_window * HOUR

    def window(self, rollout_id: str, ignoring: Sequence[str] = ()) -> None:
        """Devices run what was delivered to them (except those `ignoring` commands), then report one
        window (written to the store)."""
        devices = RolloutLog(self.db).devices(rollout_id)
        for desired, model in (("target", NEW_MODEL), ("baseline", self.spec.model_id)):
            chosen = [self.index[d] for d, r in devices.items() if r["sent"] == desired and d not in ignoring]
            if chosen:
                self.sim.deploy(chosen, model, "1.0.0")
        telemetry = self.sim.step()
        decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin())
        self.store.write_frames(decoded.batches[1])


def _config(**changes: object) -> RolloutConfig:
    judge = {"min_devices": 8, "min_windows": 3, "anomaly_rate_ratio": 1.5, "latency_p95_ratio": 1.2}
    return RolloutConfig.model_validate(
        {"stages": [20, 100], "control_pct": 20, "bake_s": 4 * HOUR, "judge": judge, **changes}
    )


def _plan() -> Plan:
    return Plan(
        "model",
        Artifact(str(NEW_MODEL), "https://m/kws-b.tflite", "ab" * 32),
        Artifact(str(model_crc("kws-a"))),
        (20.0, 100.0),
        20.0,
        4 * HOUR,
        seed=9,
    )


def _retained(broker: Mosquitto, topic: str = "fleet/+/cmd/ota") -> dict[str, bytes]:
    """Retained messages under `topic`, by device (what a device subscribing now would get)."""
    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{time.time_ns()}")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[1], bytes(m.payload)) if m.retain else None
    client.on_subscribe = lambda *args: done.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    done.wait(5)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    return got


def test_a_restart_mid_rollout_resumes_from_the_state_database(tmp_path: Path, mosquitto: Mosquitto) -> None:
    h = Harness(tmp_path, mosquitto, _config())
    h.window("none")
    h.window("none")
    plan = _plan()
    selection = select_devices(h.inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
    h.controller.start("model-b", plan, selection, now=h.now(), actor="alice@cli", reason="new keyword model")
    assert RolloutLog(h.db).status("model-b")[0]["devices"]["canary"]["delivered"] == 24

    for _ in range(2):  # two looks of stage 1, then the daemon stops
        h.window("model-b")
        h.controller.tick(h.now())
    before = RolloutLog(h.db).status("model-b")[0]
    assert before["state"] == "baking" and before["stage"] == 1 and before["info"] == 0.5
    h.close()

    h.open()  # a new daemon on the same state database
    looks_seen = []
    while RolloutLog(h.db).status("model-b")[0]["state"] in ("baking", "judged") and len(looks_seen) < 12:
        h.window("model-b")
        looks_seen += [e for e in h.controller.tick(h.now()) if e.action == "judge"]
    status = RolloutLog(h.db).status("model-b")[0]
    trail = RolloutLog(h.db).audit("model-b")

    assert status["state"] == "promoted", [e.reason for e in trail]
    # the first look after the restart continued the persisted stage: info 0.5 -> 0.75
    assert (looks_seen[0].evidence["info_before"], looks_seen[0].evidence["info"]) == (0.5, 0.75)
    actions = [(e.action, e.to_state, e.stage) for e in trail]
    assert actions == [
        ("create", "planned", None),
        ("stage", "baking", 0),
        ("command", "baking", 0),
        *[("judge", "baking", 0)] * 4,
        ("stage", "baking", 1),
        ("command", "baking", 1),
        *[("judge", "baking", 1)] * 4,
        ("promote", "promoted", 1),
        ("command", "promoted", 1),
    ]
    assert trail[0].actor == "alice@cli" and trail[0].reason == "new keyword model"
    assert all(e.actor == "controller" for e in trail[3:])
    assert [e.evidence["info"] for e in trail if e.action == "judge"] == [0.25, 0.5, 0.75, 1.0] * 2
    assert all(e.evidence["verdict"] == "promote" for e in trail if e.action == "judge" and e.evidence["info"] == 1)
    assert trail[2].reason == "24 of 24 commands delivered (24 target, 0 baseline)"
    assert trail[-1].reason.startswith("24 of 24 commands delivered (24 target")  # the control group, last

    devices = RolloutLog(h.db).devices("model-b")
    assert all(row["sent"] == "target" for row in devices.values()) and len(devices) == 120
    retained = _retained(mosquitto)
    assert set(retained) == set(devices)
    commands = [verify_command(wire, h.key.public_key()) for wire in retained.values()]
    assert {c["model_id"] for c in commands} == {NEW_MODEL} and {c["rollout_id"] for c in commands} == {"model-b"}

    # every look is in the store for the Rollouts dashboard: per metric and arm, at the look's time
    judged = [e for e in trail if e.action == "judge"]
    points = h.store.read_table("rollout", 0, 2**31)
    assert sorted(set(points["time"].tolist())) == [e.at for e in judged]
    assert len(points["time"]) == len(judged) * len(METRICS) * 2
    assert set(points["rollout_id"].tolist()) == {"model-b"} and set(points["arm"].tolist()) == {"canary", "control"}
    assert set(points["metric"].tolist()) == {m.name for m in METRICS}
    for e in judged:
        at = points["time"] == e.at
        assert set(points["stage"][at].tolist()) == {f"stage {e.stage + 1} ({plan.stages[e.stage]:g}%)"}
        assert set(points["verdict"][at].tolist()) == {e.evidence["verdict"]}
        for m in e.evidence["metrics"]:
            row = at & (points["metric"] == m["metric"]) & (points["arm"] == "canary")
            assert points["estimate"][row].tolist() == [m["canary_median"]]
            assert points["n_devices"][row].tolist() == [m["n_canary"]]
    bounded = np.isfinite(points["lower"]) & np.isfinite(points["upper"])
    assert bounded.any()
    assert np.all(points["lower"][bounded] <= points["estimate"][bounded])
    assert np.all(points["estimate"][bounded] <= points["upper"][bounded])
    h.close()


def test_the_judge_uses_each_models_baseline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Control runs the old model, whose baseline (fitted on the windows before the rollout) has a calibration
    map of 0.5 in every bin; the new model has no baseline: its accuracy comes from the bin midpoints."""
    h = Harness(tmp_path, mosquitto, _config())
    for _ in range(12):
        h.window("none")
    plan = _plan()
    old = int(plan.baseline.version)
    reference = h.store.read_frames(h.spec.start, h.now(), schema=Registry.builtin().get(1))
    fitted = fit_reference(reference, model_id=old, version="model-x", fitted_at=h.now(), time_range=(0, h.now()))
    version = h.baselines.next_version(old)
    h.baselines.save(dataclasses.replace(fitted, version=version, calibration=(0.5,) * 10))
    selection = select_devices(h.inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
    h.controller.start("model-b", plan, selection, now=h.now(), actor="erin@cli")
    h.window("model-b")
    look = next(e for e in h.controller.tick(h.now()) if e.action == "judge")

    assert look.evidence["sources"] == {
        "canary calibration": f"bin midpoints (model {NEW_MODEL} has no baseline)",
        "control calibration": f"{version} (fitted calibration)",
        "confidence reference": f"{version} confidence proportions",
    }
    assert f"canary model {NEW_MODEL} has no baseline: its accuracy is estimated with the bin midpoints" in look.reason
    accuracy = next(m for m in look.evidence["metrics"] if m["metric"] == "accuracy")
    # every control device: sum_b H_b 0.5 / N = 0.5 exactly; the canary's midpoints give more than that
    assert accuracy["control_median"] == pytest.approx(0.5) and accuracy["n_control"] == 24
    assert accuracy["canary_median"] > 0.6
    h.close()


def test_undelivered_commands_are_resent_and_laggards_reported(tmp_path: Path, mosquitto: Mosquitto) -> None:
    h = Harness(tmp_path, mosquitto, _config(adoption_deadline_s=2 * HOUR))
    plan = _plan()
    selection = select_devices(h.inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
    mosquitto.stop()
    events = h.controller.start("model-b", plan, selection, now=h.now(), actor="bob@cli")
    assert events[-1].action == "command" and events[-1].reason.startswith("0 of 24 commands delivered")
    assert len(events[-1].evidence["failed"]) == 24
    assert RolloutLog(h.db).status("model-b")[0]["devices"]["canary"]["delivered"] == 0
    mosquitto.start()

    stuck = selection.canary_at(0)[:3]  # these three never install the update
    h.window("model-b")
    resent = h.controller.tick(h.now())
    assert resent[0].action == "command" and resent[0].reason.startswith("24 of 24 commands delivered")
    for _ in range(3):
        h.window("model-b", ignoring=stuck)
        events = h.controller.tick(h.now())
        if any(e.action == "adoption" for e in events):
            break
    report = next(e for e in RolloutLog(h.db).audit("model-b") if e.action == "adoption")
    assert sorted(report.evidence["devices"]) == sorted(stuck)
    assert report.reason == f"3 devices did not report {NEW_MODEL} within 7200 s"
    canary = RolloutLog(h.db).status("model-b")[0]["devices"]["canary"]
    assert (canary["adopted"], canary["laggards"]) == (21, 3)
    h.close()


def test_operator_actions_and_their_rules(tmp_path: Path, mosquitto: Mosquitto) -> None:
    h = Harness(tmp_path, mosquitto, _config(auto_promote=False))
    plan = _plan()
    selection = select_devices(h.inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
    h.controller.start("m1", plan, selection, now=h.now(), actor="carol@cli")
    with pytest.raises(RolloutError, match="is active"):
        h.controller.start("m2", plan, selection, now=h.now(), actor="carol@cli")
    with pytest.raises(RolloutError, match="still baking"):
        h.controller.promote("m1", now=h.now(), actor="carol@cli", reason="impatient")
    for _ in range(4):
        h.window("m1")
        h.controller.tick(h.now())
    status = RolloutLog(h.db).status("m1")[0]
    assert status["state"] == "judged" and status["verdict"]["verdict"] == "promote"  # waits for an operator
    h.controller.promote("m1", now=h.now(), actor="carol@cli", reason="looks good")
    assert RolloutLog(h.db).status("m1")[0]["stage"] == 2

    h.controller.abort("m1", now=h.now(), actor="dave@cli", reason="wrong artifact uploaded")
    devices = RolloutLog(h.db).devices("m1")
    canary = [row for row in devices.values() if row["role"] == "canary"]
    assert all(row["desired"] == "baseline" and row["sent"] == "baseline" for row in canary)
    assert all(row["desired"] is None for row in devices.values() if row["role"] == "control")
    last = RolloutLog(h.db).audit("m1")[-2]
    assert (last.action, last.to_state, last.actor, last.reason) == (
        "abort",
        "aborted",
        "dave@cli",
        "wrong artifact uploaded",
    )
    with pytest.raises(RolloutError, match="aborted"):
        h.controller.rollback("m1", now=h.now(), actor="dave@cli", reason="again")
    retained = {d: json.loads(w)["cmd"] for d, w in _retained(mosquitto).items()}
    assert {retained[d]["model_id"] for d, row in devices.items() if row["role"] == "canary"} == {
        int(plan.baseline.version)
    }
    h.close()


# -- the command line ------------------------------------------------------------------------------------
def test_cli_keygen_start_status_rollback(tmp_path: Path, mosquitto: Mosquitto) -> None:
    spec = FleetSpec(n_devices=30, seed=2)
    (tmp_path / "inventory.csv").write_text(inventory_csv(spec))
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[fleet]\ninventory = "{tmp_path / "inventory.csv"}"\n'
    )
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["rollout", *args, "-c", str(config)])
        assert result.exit_code == 0, result.output
        return result.output

    assert "BEGIN PUBLIC KEY" in run("keygen")
    assert "never overwritten" in runner.invoke(main, ["rollout", "keygen", "-c", str(config)]).output
    draw = json.loads(
        run("start", "--firmware", "1.1.0", "--baseline", "1.0.0", "--canary", "10%", "--dry-run", "--json")
    )
    assert draw["plan"]["target"]["version"] == "1.1.0" and draw["plan"]["stages"] == [10.0, 25.0, 100.0]
    assert [len(s) for s in draw["stages"]] == [3, 8, 28] and len(draw["control"]) == 2
    assert RolloutLog(StateDB(tmp_path / "data" / "state.db")).status() == []

    out = run(
        "start",
        "--firmware",
        "1.1.0",
        "--baseline",
        "1.0.0",
        "--canary",
        "10%",
        "--id",
        "fw-1.1.0",
        "--url",
        "https://u/1.1.0.bin",
        "--sha256",
        "AB" * 32,
        "--bake",
        "2h",
        "--reason",
        "fixes the I2C hang",
    )
    assert "stage 1 (10%): 3 canary devices" in out and "3 of 3 commands delivered" in out
    status = json.loads(run("status", "fw-1.1.0", "--json", "--audit"))
    assert status["rollouts"][0]["state"] == "baking" and status["rollouts"][0]["bake_s"] == 7200
    assert [e["action"] for e in status["audit"]] == ["create", "stage", "command"]
    assert status["audit"][0]["reason"] == "fixes the I2C hang" and status["audit"][0]["actor"].endswith("@cli")
    assert "rolled_back" in run("rollback", "fw-1.1.0", "--reason", "field reports of resets")
    assert "fw-1.1.0: rolled_back" in run("status")
    retained = _retained(mosquitto)
    assert len(retained) == 3 and {json.loads(w)["cmd"]["version"] for w in retained.values()} == {"1.0.0"}
    refused = runner.invoke(main, ["rollout", "start", "--firmware", "x.y", "--baseline", "1.0.0", "-c", str(config)])
    assert refused.exit_code == 2 and "major.minor.patch" in refused.output


def test_cli_judge_reads_the_store(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=40, seed=8, models={NEW_MODEL: ModelProfile(latency_factor=1.5)})
    sim = FleetSimulator(spec)
    sim.deploy(list(range(20)), NEW_MODEL, "1.0.0")
    telemetry = sim.run(4)
    store = open_store(f"embedded://{tmp_path / 'store'}")
    decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin())
    store.write_frames(decoded.batches[1])
    store.close()
    ids = sim.fleet.ids.tolist()
    (tmp_path / "canary.txt").write_text("\n".join(ids[:20]) + "\n")
    (tmp_path / "control.txt").write_text("\n".join(ids[20:]) + "\n\n")
    config = tmp_path / "fleetwatch.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nurl = "embedded://{tmp_path / "store"}"\n')
    args = ["rollout", "judge", "--canary", str(tmp_path / "canary.txt"), "--control", str(tmp_path / "control.txt")]
    args += ["--from", str(spec.start), "--to", str(spec.start + 4 * spec.window_s), "-c", str(config)]

    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["verdict"] == "rollback" and (verdict["n_canary"], verdict["n_control"]) == (20, 20)
    latency = next(m for m in verdict["metrics"] if m["metric"] == "latency_p95")
    assert latency["status"] == "worse" and 1.4 < latency["estimate"] < 1.6 and latency["limit"] == pytest.approx(1.1)
    text = CliRunner().invoke(main, args).output
    assert text.startswith("verdict: rollback (20 canary, 20 control devices)")
    assert "latency_p95    worse" in text and "guardrail memory_ceiling: ok" in text
    # no baselines in data_dir/baselines: both models fall back to the midpoints, and say so
    assert f"canary calibration: bin midpoints (model {NEW_MODEL} has no baseline)" in text
    assert f"canary model {NEW_MODEL} has no baseline" in " ".join(verdict["reasons"])
