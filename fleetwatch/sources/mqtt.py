"""MQTT source (paho-mqtt 2.x, MQTT v5 or 3.1.1): QoS 1, persistent session, optional shared subscription, TLS.

Messages are acknowledged manually, only once their frames are durable (see pipeline.py), so a
`kill -9` of the daemon loses nothing the broker accepted: the broker keeps unacknowledged messages in
the session (fixed client id, clean_start false, session expiry) and sends them again on reconnect.
The subscription is QoS 1, so a message comes at QoS 1 (acknowledged with the others of its batch,
`Client.ack_many`) or QoS 0 (nothing to acknowledge). The device id is the topic level where the configured
topic has `+`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from fleetwatch.config import MqttConfig
from fleetwatch.mqttclient import connect, new_client
from fleetwatch.pipeline import Message

log = logging.getLogger(__name__)


class MqttSource:
    """Subscribes to the telemetry topic and hands each message to `submit` with an ack callback."""

    transport = "mqtt"

    def __init__(self, config: MqttConfig, submit: Callable[[Message], None]) -> None:
        self.config = config
        self._submit = submit
        self._device_level = config.topic.split("/").index("+")
        self._intake = threading.Event()
        self._intake.set()
        self.connected = threading.Event()
        self.client = new_client(config, config.client_id, manual_ack=True, persistent=True)
        self.client.reconnect_delay_set(int(config.reconnect_min_s), int(config.reconnect_max_s))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self._ack_to = self._acks_for_this_connection()

    def start(self) -> None:
        connect(self.client, self.config, persistent=True, wait=False)
        self.client.loop_start()

    def stop_intake(self) -> None:
        """Stop taking new messages; those arriving now stay unacknowledged and come again next session."""
        self._intake.clear()

    def close(self) -> None:
        """Disconnect (keeping the broker-side session) and stop the network thread."""
        self._intake.clear()
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connect to %s:%s refused: %s", self.config.host, self.config.port, reason)
            return
        log.info(
            "MQTT connected to %s:%s; subscribing %s", self.config.host, self.config.port, self.config.subscription
        )
        self._ack_to = self._acks_for_this_connection()
        client.subscribe(self.config.subscription, qos=1)
        self.connected.set()

    def _acks_for_this_connection(self) -> Callable[[list[int]], None]:
        """The `ack_to` of the messages of the connection just made. Once another connection replaced it, it
        drops their acknowledgements: the broker resends those messages in the session under ids it may reuse
        for others after the new copies are acknowledged, so a stale PUBACK could acknowledge a message that is
        not durable yet."""

        def ack(mids: list[int]) -> None:
            if self._ack_to is ack:
                self.client.ack_many(mids)

        return ack

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        log.warning(
            "MQTT broker %s:%s unreachable; retrying with backoff (up to %s s)",
            self.config.host,
            self.config.port,
            int(self.config.reconnect_max_s),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self._intake.is_set():
            return
        levels = msg.topic.split("/", self._device_level + 1)
        device = levels[self._device_level] if len(levels) > self._device_level else ""
        ack_to = self._ack_to if msg.qos else None
        self._submit(
            Message(bytes(msg.payload), device, int(time.time()), self.transport, ack_to=ack_to, ack_id=msg.mid)
        )
