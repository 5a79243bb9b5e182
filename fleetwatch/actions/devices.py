"""Commands to devices: the signed desired state over MQTT or the Notehub API. All the I/O of rollouts.

A commander takes `(device, wire)` pairs — `wire` being a signed command (`fleetwatch.actions.signing`) —
and reports, per device, None when the command was delivered to the transport or the error otherwise.

- `MqttCommander`: publishes each command to `fleet/<device>/cmd/ota` (the configured template) with QoS 1
  and the retain flag, and waits for the broker's PUBACK. The retained message is the device's desired
  state: a device that was offline gets it on its next subscription; a newer command replaces it.
- `NotehubCommander`: sets the device's environment variable (`PUT /v1/projects/{projectUID}/devices/
  {deviceUID}/environment_variables`, body `{"environment_variables": {NAME: wire}}`); the Notecard
  syncs it and the host reads it with `env.get`. A fleet-wide command (device "*") sets the fleet's
  variable instead (`PUT /v1/projects/{projectUID}/fleets/{fleetUID}/environment_variables`). With `dfu`
  on, a firmware command (one with `version`) whose url is `notehub:<file>` also starts a host-firmware
  update of the file uploaded to Notehub (`POST /v1/projects/{projectUID}/dfu/host/update?deviceUID=...`,
  body `{"filename": file}`), and `status` reads `GET /v1/projects/{projectUID}/dfu/host/status` (paged).
  Device ids must be Notehub DeviceUIDs (`notehub.device_field = "device"`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
import requests

from fleetwatch.config import MqttConfig, NotehubConfig
from fleetwatch.mqttclient import connect, new_client

if TYPE_CHECKING:
    from fleetwatch.actions.rollout_config import RolloutConfig, RolloutNotehubConfig
    from fleetwatch.config import Settings

log = logging.getLogger(__name__)

#: The device id of a fleet-wide command.
FLEET = "*"
NOTEHUB_FILE = "notehub:"


class Commander(Protocol):
    """Delivers signed commands; `fleet_wide` says whether it can take a command for device "*"."""

    fleet_wide: bool

    def send(self, commands: Sequence[tuple[str, bytes]]) -> dict[str, str | None]:
        """Deliver each (device, wire); device -> None when delivered, else the error."""
        ...

    def status(self, devices: Sequence[str]) -> dict[str, str]:
        """What the transport knows about each device's update (empty when it knows nothing)."""
        ...


class MqttCommander:
    """Retained QoS 1 publishes, one short MQTT connection per batch (commands are rare).

    `stay_connected` keeps one connection open from the first batch until `close()`: for brokers that
    acknowledge a publish before routing it and drop what is not yet routed when the publisher disconnects
    (the demo's embedded amqtt 0.12 broker does).
    """

    fleet_wide = False

    def __init__(
        self,
        config: MqttConfig,
        topic: str = "fleet/{device}/cmd/ota",
        timeout_s: float = 30.0,
        *,
        stay_connected: bool = False,
    ) -> None:
        if not config.url:
            raise ValueError("mqtt.url is not set: commands to devices over MQTT need a broker")
        self.config, self.topic, self.timeout_s = config, topic, timeout_s
        self.stay_connected = stay_connected
        self._client: mqtt.Client | None = None

    def send(self, commands: Sequence[tuple[str, bytes]]) -> dict[str, str | None]:
        try:
            client = self._client or self._connect()
        except OSError as exc:
            return dict.fromkeys(
                (d for d, _ in commands), f"MQTT connect to {self.config.host}:{self.config.port}: {exc}"
            )
        try:
            infos = [
                (device, client.publish(self.topic.format(device=device), wire, qos=1, retain=True))
                for device, wire in commands
            ]
            deadline = time.monotonic() + self.timeout_s
            results: dict[str, str | None] = {}
            for device, info in infos:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
                results[device] = (
                    None if info.is_published() else f"no PUBACK within {self.timeout_s:g} s (rc {info.rc})"
                )
            return results
        finally:
            if self.stay_connected:
                self._client = client
            else:
                _disconnect(client)

    def close(self) -> None:
        """Disconnect the connection kept by `stay_connected` (a no-op otherwise)."""
        client, self._client = self._client, None
        if client is not None:
            _disconnect(client)

    def _connect(self) -> mqtt.Client:
        client = new_client(self.config, f"{self.config.client_id}-rollout-{time.time_ns()}")
        client.max_inflight_messages_set(100)
        connect(client, self.config)
        client.loop_start()
        return client

    def status(self, devices: Sequence[str]) -> dict[str, str]:
        return {}


class NotehubClient:
    """The few Notehub API calls rollouts use (bearer token, JSON)."""

    def __init__(
        self, api_url: str, token: str, project: str, timeout_s: float = 30.0, session: requests.Session | None = None
    ) -> None:
        self.base = f"{api_url.rstrip('/')}/v1/projects/{project}"
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json"

    def set_device_env(self, device: str, variables: Mapping[str, str]) -> None:
        self._call("PUT", f"/devices/{device}/environment_variables", body={"environment_variables": dict(variables)})

    def set_fleet_env(self, fleet: str, variables: Mapping[str, str]) -> None:
        self._call("PUT", f"/fleets/{fleet}/environment_variables", body={"environment_variables": dict(variables)})

    def dfu_update(self, devices: Sequence[str], filename: str) -> None:
        """Start a host-firmware update of `filename` (uploaded to Notehub) on `devices`."""
        self._call("POST", "/dfu/host/update", params=[("deviceUID", d) for d in devices], body={"filename": filename})

    def dfu_status(self, devices: Sequence[str], page_size: int = 500) -> list[dict[str, Any]]:
        """The host-firmware DFU status of `devices`, every page."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params = [("deviceUID", d) for d in devices] + [("pageSize", str(page_size)), ("pageNum", str(page))]
            data = self._call("GET", "/dfu/host/status", params=params)
            out += data.get("devices") or []
            if not data.get("has_more"):
                return out
            page += 1

    def _call(
        self, method: str, path: str, *, params: Sequence[tuple[str, str]] = (), body: Any = None
    ) -> dict[str, Any]:
        response = self.session.request(
            method, self.base + path, params=list(params), json=body, timeout=self.timeout_s
        )
        if response.status_code >= 300:
            raise NotehubError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else {}


class NotehubError(RuntimeError):
    """The Notehub API refused a request or could not be reached."""


class NotehubCommander:
    """Commands as Notehub environment variables, optionally with a host-firmware DFU."""

    def __init__(self, client: NotehubClient, config: RolloutNotehubConfig) -> None:
        self.client, self.config = client, config
        self.fleet_wide = config.fleet_uid is not None

    def send(self, commands: Sequence[tuple[str, bytes]]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        dfu: dict[str, list[str]] = {}
        for device, wire in commands:
            variables = {self.config.env_var: wire.decode("ascii")}
            try:
                if device == FLEET:
                    self.client.set_fleet_env(self.config.fleet_uid or "", variables)
                else:
                    self.client.set_device_env(device, variables)
                results[device] = None
            except (requests.RequestException, NotehubError) as exc:
                results[device] = str(exc)
                continue
            if not self.config.dfu or device == FLEET:
                continue
            sent = _command(wire)
            url = sent.get("url", "")
            if "version" in sent and url.startswith(NOTEHUB_FILE):
                dfu.setdefault(url.removeprefix(NOTEHUB_FILE), []).append(device)
        for filename, devices in dfu.items():
            try:
                self.client.dfu_update(devices, filename)
            except (requests.RequestException, NotehubError) as exc:
                results.update(dict.fromkeys(devices, f"DFU of {filename}: {exc}"))
        return results

    def status(self, devices: Sequence[str]) -> dict[str, str]:
        if not self.config.dfu or not devices:
            return {}
        try:
            rows = self.client.dfu_status(devices)
        except (requests.RequestException, NotehubError) as exc:
            log.warning("Notehub DFU status unavailable: %s", exc)
            return {}
        return {row.get("device_uid", ""): _dfu_text(row) for row in rows if row.get("device_uid")}


def _disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _command(wire: bytes) -> dict[str, Any]:
    """The (already signed) command inside a wire message; the sender trusts its own bytes."""
    return json.loads(wire)["cmd"]


def _dfu_text(row: Mapping[str, Any]) -> str:
    state = row.get("status") or {}
    updates = state.get("updates") or []
    last = updates[-1] if updates else {}
    parts = [
        "in progress" if row.get("dfu_in_progress") else "idle",
        f"running {(row.get('current') or {}).get('version', '?')}",
        f"requested {state.get('requested_version', '?')}",
    ]
    if last:
        parts.append(f"{last.get('phase', '?')}/{last.get('status', '?')}: {last.get('description', '')}".rstrip(": "))
    return ", ".join(parts)


def commander_from_settings(settings: Settings, rollout: RolloutConfig) -> Commander:
    """The commander `rollout.transport` names, built from the root config's [mqtt] or [notehub] section."""
    if rollout.transport == "mqtt":
        return MqttCommander(settings.mqtt, rollout.command_topic)
    client = notehub_client(settings.notehub, rollout.notehub.timeout_s, "rollout.transport = notehub")
    return NotehubCommander(client, rollout.notehub)


def notehub_client(config: NotehubConfig, timeout_s: float, needed_by: str) -> NotehubClient:
    """A Notehub API client from the root [notehub] section; `needed_by` names the setting in the error."""
    if config.token is None or not config.project:
        raise ValueError(f"{needed_by} needs notehub.token and notehub.project")
    return NotehubClient(config.api_url, config.token.get_secret_value(), config.project, timeout_s)
