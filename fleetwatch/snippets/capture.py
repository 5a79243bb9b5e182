"""Asking devices for snippets, by hand (`fleetwatch snippets request`) or when drift is alerted.

A request is one line of ASCII JSON with sorted keys, `{"count":3,"expires":1795086400,"id":"...",
"reason":"drift"}`: capture `count` snippets (reason code `requested`) before `expires` (Unix s), and act
once per `id`. It travels through the rollout commanders (`fleetwatch.actions.devices`): over MQTT to
`fleet/<device>/cmd/snippet` (QoS 1, retained, so a device that is offline gets it when it subscribes)
or as the Notehub environment variable `fleetwatch_snippet` of each device (`snippets.request_transport`).

With `snippets.request_on_alert`, new or escalated drift asks the drifted devices: device alerts name
their device, cohort alerts (`site=north`) every device of that inventory cohort; at most
`request_max_devices` per notification. The request id is the notification id.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetwatch.actions.alerts import Notification
from fleetwatch.actions.devices import Commander, MqttCommander, NotehubCommander, notehub_client
from fleetwatch.actions.receivers import drifting_items
from fleetwatch.actions.rollout_config import RolloutNotehubConfig
from fleetwatch.config import Settings
from fleetwatch.snippets.store import Query, SnippetStore

log = logging.getLogger(__name__)

Inventory = Mapping[str, Mapping[str, str]]
#: Cohorts the drift engine names from the frames themselves, not from the inventory.
FRAME_COHORTS = ("model_id", "fw_version")


def request_command(count: int, reason: str, expires: int, request_id: str) -> bytes:
    """The wire form of a snippet request (see the module docstring)."""
    command = {"count": count, "expires": expires, "id": request_id, "reason": reason}
    return json.dumps(command, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def commander_for(settings: Settings) -> Commander:
    """The commander `snippets.request_transport` names, from the root [mqtt] or [notehub] section."""
    config = settings.snippets
    if config.request_transport == "mqtt":
        return MqttCommander(settings.mqtt, config.command_topic)
    client = notehub_client(settings.notehub, config.timeout_s, "snippets.request_transport = notehub")
    return NotehubCommander(client, RolloutNotehubConfig(env_var=config.env_var, timeout_s=config.timeout_s))


def cohort_devices(cohort: str, inventory: Inventory | None) -> list[str] | None:
    """The devices of an inventory cohort `tag=value`, sorted; None when the cohort does not narrow the
    devices (`fleet`, or a cohort of the frames themselves such as `model_id=...`)."""
    tag, _, value = cohort.partition("=")
    if cohort == "fleet" or not value or tag in FRAME_COHORTS:
        return None
    return sorted(device for device, tags in (inventory or {}).items() if tags.get(tag) == value)


def cohort_model(cohort: str) -> int | None:
    """The model id a `model_id=<id>` cohort names, else None."""
    tag, _, value = cohort.partition("=")
    return int(value) if tag == "model_id" and value.isdigit() else None


class SnippetRequester:
    """Sends snippet requests through a commander; `clock` and `new_id` are injectable for tests."""

    def __init__(
        self,
        commander: Commander,
        count: int,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16],
    ) -> None:
        self.commander = commander
        self.count = count
        self.ttl_s = ttl_s
        self._clock = clock
        self._new_id = new_id

    def request(
        self, devices: Sequence[str], reason: str, count: int | None = None, request_id: str | None = None
    ) -> dict[str, str | None]:
        """Ask each device for snippets; device -> None when the transport took the request, else the error."""
        wire = request_command(
            count or self.count, reason, int(self._clock()) + self.ttl_s, request_id or self._new_id()
        )
        return self.commander.send([(device, wire) for device in devices])


def drifted_devices(notification: Notification, inventory: Inventory | None) -> list[str]:
    """The devices a notification's new or escalated drift concerns (sorted, no duplicates)."""
    devices: set[str] = set()
    for item in drifting_items(notification):
        if item.alert.scope == "device":
            devices.add(item.alert.key)
        elif item.alert.scope == "cohort":
            devices.update(cohort_devices(item.alert.key, inventory) or ())
    return sorted(devices)


class AlertHook:
    """`AlertManager(on_notifications=...)`: requests snippets from the devices of new or escalated drift.

    A failure to reach the devices is logged, never raised: it must not undo an alert decision."""

    def __init__(self, requester: SnippetRequester, inventory: Inventory | None, max_devices: int) -> None:
        self.requester = requester
        self.inventory = inventory
        self.max_devices = max_devices

    def __call__(self, notifications: Sequence[Notification]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for notification in notifications:
            devices = [d for d in drifted_devices(notification, self.inventory) if d not in results]
            if not devices:
                continue
            if len(devices) > self.max_devices:
                log.warning(
                    "drift notification %s concerns %d devices; requesting snippets from the first %d",
                    notification.id,
                    len(devices),
                    self.max_devices,
                )
                devices = devices[: self.max_devices]
            try:
                sent = self.requester.request(devices, "drift", request_id=notification.id)
            except Exception as exc:  # a transport failure must not stop the alert pipeline
                log.error("snippet request for notification %s failed: %s", notification.id, exc)
                sent = dict.fromkeys(devices, str(exc))
            failed = sorted(d for d, error in sent.items() if error)
            if failed:
                log.warning("snippet request %s not delivered to %s", notification.id, ", ".join(failed))
            results.update(sent)
        return results


def alert_hook_from_settings(settings: Settings, inventory: Inventory | None) -> AlertHook | None:
    """The hook when `snippets.request_on_alert` is on, else None."""
    config = settings.snippets
    if not config.request_on_alert:
        return None
    requester = SnippetRequester(commander_for(settings), config.request_count, config.request_ttl_s)
    return AlertHook(requester, inventory, config.request_max_devices)


class FieldData:
    """`AlertManager(field_data=...)`: what the snippet dataset holds for a retraining payload — the
    snippets of the notification's model and cohort collected since the drift began."""

    def __init__(self, store: SnippetStore, inventory: Inventory | None) -> None:
        self.store = store
        self.inventory = inventory

    def __call__(self, model_id: int | None, cohort: str, since: int) -> dict[str, Any]:
        devices = cohort_devices(cohort, self.inventory)
        model = model_id if model_id is not None else cohort_model(cohort)
        records = [] if devices == [] else self.store.query(Query(devices=devices, since=since, model_id=model))
        return {
            "count": len(records),
            "devices": len({r.device for r in records}),
            "dataset": str(self.store.directory),
        }
