"""fleetwatch's MQTT client (`fleetwatch.mqttclient.Client`) against a real mosquitto.

The client replaces paho's receive path (one buffered `recv` for many packets, its own PUBLISH decoding)
and adds `ack_many`; these tests hold it to what paho's own path guarantees: every message, byte for byte
and in order (per QoS level, as the broker sends them), whatever its size (packets split across reads,
every width of the remaining-length field), QoS 0 and 1, MQTT 3.1.1 and 5 (properties still decoded by
paho), and acknowledgements that the broker honours in a persistent session.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from certs import write_certificates
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetwatch.config import MqttConfig
from fleetwatch.localservers import HOST, Mosquitto, ServerError, free_port
from fleetwatch.mqttclient import READ_SIZE, Client, connect, new_client

TOPIC = "fleet/dev-1/telemetry"
#: Payload sizes around each width of MQTT's remaining length (1, 2, 3 and 4 bytes), a packet larger than
#: one `recv` (READ_SIZE), and an empty payload.
SIZES = [0, 1, *range(110, 120), *range(16_365, 16_375), *range(2_097_130, 2_097_140, 3), READ_SIZE * 3 + 7]


class Received:
    """What the subscriber got, in order, and the QoS 1 message ids not yet acknowledged."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool, Properties | None]] = []
        self.unacked: list[int] = []
        self.lock = threading.Lock()

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.qos, msg.dup, getattr(msg, "properties", None)))
            if msg.qos:
                self.unacked.append(msg.mid)

    def take_unacked(self) -> list[int]:
        with self.lock:
            mids, self.unacked = self.unacked, []
        return mids

    def wait_for(self, count: int, client: Client | None = None, timeout: float = 30) -> None:
        """Until `count` messages came; with `client`, acknowledges them as they come (as the pipeline does)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            if client is not None:
                client.ack_many(self.take_unacked())
            time.sleep(0.02)
        if client is not None:
            client.ack_many(self.take_unacked())
        assert len(self.messages) == count, f"{len(self.messages)} of {count} messages came"


@contextmanager
def subscriber(config: MqttConfig, client_id: str, received: Received) -> Iterator[Client]:
    """A persistent-session subscriber with manual acknowledgements on fleetwatch's client."""
    client = new_client(config, client_id, manual_ack=True, persistent=True)
    client.on_message = received.on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    connect(client, config, persistent=True)
    client.loop_start()
    client.subscribe("fleet/+/telemetry", qos=1)
    assert subscribed.wait(10), "no SUBACK"
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publisher(config: MqttConfig) -> mqtt.Client:
    """Stock paho: the devices' side."""
    protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=protocol)
    if config.tls:
        client.tls_set(ca_certs=str(config.tls_ca))
    client.connect(config.host, config.port)
    client.loop_start()
    return client


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_every_message_arrives_whole_and_in_order(mosquitto, protocol: str) -> None:
    check_every_message_arrives(MqttConfig(url=mosquitto.url, protocol=protocol))


def test_over_tls_every_message_arrives_whole_and_in_order(tmp_path: Path) -> None:
    """TLS hands the client decrypted records, not what the kernel holds: the reads split differently."""
    write_certificates(tmp_path)
    tls_port = free_port()
    listener = f"listener {tls_port} {HOST}\ncertfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key"
    try:
        server = Mosquitto(extra_config=listener)
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        check_every_message_arrives(MqttConfig(url=f"mqtts://{HOST}:{tls_port}", tls_ca=tmp_path / "ca.crt"))
    finally:
        server.close()


def check_every_message_arrives(config: MqttConfig) -> None:
    protocol = config.protocol
    payloads = [bytes([i % 251]) * size for i, size in enumerate(SIZES)]
    payloads += [i.to_bytes(4, "little") * 19 for i in range(600)]
    qos = [i % 2 for i in range(len(payloads))]
    received = Received()
    with subscriber(config, f"sub-{protocol}", received) as client:
        pub = publisher(config)
        infos = [pub.publish(TOPIC, payload, qos=q) for payload, q in zip(payloads, qos, strict=True)]
        for info in infos:
            info.wait_for_publish(30)
        received.wait_for(len(payloads), client)
        pub.disconnect()
        pub.loop_stop()
    assert [m[0] for m in received.messages] == [TOPIC] * len(payloads)
    for level in (0, 1):  # the broker keeps the order of each QoS; QoS 0 may overtake QoS 1 held in flight
        sent = [p for p, q in zip(payloads, qos, strict=True) if q == level]
        assert [m[1] for m in received.messages if m[2] == level] == sent


def test_v5_properties_still_reach_the_callback(mosquitto) -> None:
    config = MqttConfig(url=mosquitto.url, protocol="5")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("gateway", "gw-7")
    received = Received()
    with subscriber(config, "sub-props", received) as client:
        pub = publisher(config)
        pub.publish(TOPIC, b"with properties", qos=1, properties=props).wait_for_publish(10)
        pub.publish(TOPIC, b"without", qos=1).wait_for_publish(10)
        received.wait_for(2, client)
        pub.disconnect()
        pub.loop_stop()
    (_, first, _, _, first_props), (_, second, _, _, second_props) = received.messages
    assert (first, second) == (b"with properties", b"without")
    assert first_props.UserProperty == [("gateway", "gw-7")]
    assert second_props is None


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_the_broker_resends_what_was_not_acknowledged_and_only_that(mosquitto, protocol: str) -> None:
    config = MqttConfig(url=mosquitto.url, protocol=protocol)
    client_id = f"sub-acks-{protocol}"
    first = Received()
    with subscriber(config, client_id, first):
        pub = publisher(config)
        for i in range(10):
            pub.publish(TOPIC, b"m%d" % i, qos=1).wait_for_publish(10)
        first.wait_for(10)
    again = Received()
    with subscriber(config, client_id, again) as client:
        again.wait_for(10)
        assert [m[1] for m in again.messages] == [b"m%d" % i for i in range(10)]
        assert all(m[3] for m in again.messages), "a resent message without the DUP flag"
        client.ack_many(again.take_unacked())
        pub.publish(TOPIC, b"after", qos=1).wait_for_publish(10)
        again.wait_for(11, client)
        time.sleep(0.5)  # let the acknowledgements reach the broker before the session ends
    pub.disconnect()
    pub.loop_stop()
    last = Received()
    with subscriber(config, client_id, last):
        time.sleep(1.5)
    assert last.messages == [], f"acknowledged messages came again: {[m[1] for m in last.messages]}"
