"""paho-mqtt clients built from `MqttConfig`: the protocol version, credentials, TLS and the connect call.

The daemon's ingest (`sources.mqtt`), the rollout commander (`actions.devices`) and the demo's simulated
devices share this, so a broker that speaks only MQTT 3.1.1 (`mqtt.protocol = "3.1.1"`) works for all of
them. A persistent session is `clean_start=False` plus a session expiry in v5, `clean_session=False` in
3.1.1 (where the broker keeps the session until the client connects clean).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetwatch.config import MqttConfig

#: A PUBACK without reason code or properties (MQTT 3.1.1 and v5 alike) as a big-endian uint32 with the
#: message id in the low 16 bits: type 4, remaining length 2.
_PUBACK = 0x4002_0000


class Client(mqtt.Client):
    """paho's client plus `ack_many`."""

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages (with `manual_ack`) from any thread: one queued write of all the PUBACKs.

        `ack(mid, 1)` queues one packet per message and wakes the network thread through its socket pair each
        time; this queues their bytes back to back as a single packet the way `ack` does (paho's
        `_packet_queue`, the path of all its sends), so the network thread wakes once and sends them in one
        `send`.
        """
        if mids:
            self._packet_queue(mqtt.PUBACK, struct.pack(f"!{len(mids)}I", *[_PUBACK | mid for mid in mids]), 0, 1)


def new_client(config: MqttConfig, client_id: str, *, manual_ack: bool = False, persistent: bool = False) -> Client:
    """A client with the configured protocol, credentials and TLS; `persistent` keeps the broker session."""
    if config.protocol == "5":
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    else:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
            manual_ack=manual_ack,
        )
    user, password = config.credentials()
    if user:
        client.username_pw_set(user, password)
    if config.tls:
        client.tls_set(
            ca_certs=str(config.tls_ca) if config.tls_ca else None,
            certfile=str(config.tls_cert) if config.tls_cert else None,
            keyfile=str(config.tls_key) if config.tls_key else None,
        )
    return client


def connect(client: mqtt.Client, config: MqttConfig, *, persistent: bool = False, wait: bool = True) -> None:
    """Connect (blocking when `wait`, else in the network loop); v5 persistent sessions send their expiry and
    receive maximum."""
    kwargs: dict[str, object] = {}
    if config.protocol == "5" and persistent:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = config.session_expiry_s
        props.ReceiveMaximum = config.receive_maximum
        kwargs = {"clean_start": False, "properties": props}
    if wait:
        client.connect(config.host, config.port, config.keepalive_s, **kwargs)
    else:
        client.connect_async(config.host, config.port, config.keepalive_s, **kwargs)
