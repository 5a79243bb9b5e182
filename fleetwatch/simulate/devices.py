"""Simulated devices on a real broker: the I/O shell around `FleetSimulator` (tests and the demo).

Each `SimulatedDevice` is its own MQTT client, as a real device is: it subscribes to its command topic
(`fleet/<id>/cmd/ota`), verifies every command with the server's public key (signature, device, expiry,
replay) and runs the model the last accepted command names. `DeviceFleet` advances the simulator one
window at a time: each device runs its current model for the window (a changed model is an over-the-air
update, `FleetSimulator.deploy`), and every online device publishes its frame to `fleet/<id>/telemetry`
with QoS 1, waiting for the broker's PUBACK. Simulated time is the start of the window the fleet is in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec

from fleetwatch.actions.signing import SignatureError, verify_command
from fleetwatch.config import MqttConfig
from fleetwatch.mqttclient import connect, new_client
from fleetwatch.simulate.simulator import FleetSimulator
from fleetwatch.simulate.telemetry import Telemetry


class SimulatedDevice:
    """A device with its own MQTT client that runs the model its last accepted command names.

    `accepted` lists the commands it obeyed, `refused` why it refused others.
    """

    def __init__(
        self,
        device_id: str,
        config: MqttConfig,
        key: ec.EllipticCurvePublicKey,
        clock: Callable[[], int],
        model: int,
        command_topic: str = "fleet/{device}/cmd/ota",
        telemetry_topic: str = "fleet/{device}/telemetry",
    ) -> None:
        self.id, self.config, self.key, self.clock = device_id, config, key, clock
        self.model = model
        self.last_issued = 0
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.subscribed = threading.Event()
        self.online = False
        self.command_topic = command_topic.format(device=device_id)
        self.telemetry_topic = telemetry_topic.format(device=device_id)
        self.client = new_client(config, device_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.command_topic, qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_command

    def connect(self) -> None:
        connect(self.client, self.config)
        self.client.loop_start()
        self.online = True

    def _on_command(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            cmd = verify_command(bytes(message.payload), self.key)
        except SignatureError as exc:
            self.refused.append(str(exc))
            return
        if cmd["device"] not in (self.id, "*") or self.clock() >= cmd["expires"] or cmd["issued"] <= self.last_issued:
            self.refused.append(f"device/expiry/replay check failed: {cmd}")
            return
        self.last_issued = cmd["issued"]
        self.model = cmd["model_id"]
        self.accepted.append(cmd)

    def publish(self, frame: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.telemetry_topic, frame, qos=1)

    def close(self) -> None:
        if self.online:
            self.client.disconnect()
            self.client.loop_stop()
            self.online = False


class DeviceFleet:
    """Every device of `sim`, each a `SimulatedDevice` on the broker of `config`."""

    def __init__(self, sim: FleetSimulator, config: MqttConfig, key: ec.EllipticCurvePublicKey) -> None:
        self.sim = sim
        self.ids: list[str] = sim.fleet.ids.tolist()
        self.devices = {
            d: SimulatedDevice(d, config, key, self.now, int(model))
            for d, model in zip(self.ids, sim.deployed.model_id.tolist(), strict=True)
        }

    def now(self) -> int:
        """Simulated time: the start of the window the fleet is in."""
        return self.sim.spec.start + self.sim.next_window * self.sim.spec.window_s

    def connect(self, ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """Connect these devices (default: all) and wait until each has subscribed to its commands."""
        chosen = list(self.ids if ids is None else ids)
        for d in chosen:
            self.devices[d].connect()
        deadline = time.monotonic() + timeout
        for d in chosen:
            if not self.devices[d].subscribed.wait(max(deadline - time.monotonic(), 0.01)):
                raise TimeoutError(f"device {d} did not subscribe to its commands within {timeout:g} s")

    def window(self, timeout: float = 30.0) -> Telemetry:
        """One window: every device runs its current model, online devices publish their frame (QoS 1)."""
        for i, d in enumerate(self.ids):
            if self.devices[d].model != self.sim.deployed.model_id[i]:
                self.sim.deploy([i], self.devices[d].model, self.sim.spec.fw_version)
        telemetry = self.sim.step()
        frames = telemetry.frames()
        infos = [self.devices[d].publish(frames[i].tobytes()) for i, d in enumerate(self.ids) if self.devices[d].online]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
        return telemetry

    def close(self) -> None:
        for device in self.devices.values():
            device.close()
