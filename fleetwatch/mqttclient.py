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
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetwatch.config import MqttConfig

#: A PUBACK without reason code or properties (MQTT 3.1.1 and v5 alike) as a big-endian uint32 with the
#: message id in the low 16 bits: type 4, remaining length 2.
_PUBACK = 0x4002_0000
#: Bytes `loop_read` asks the socket for at once.
READ_SIZE = 1 << 16


class Client(mqtt.Client):
    """paho's client with a buffered `loop_read`, shorter `_handle_publish` and `_handle_on_message`, plus
    `ack_many`.

    They use paho 2.2's internals (`_sock_recv`, `_in_packet`, `_packet_handle`, `_packet_queue`): the
    dependency is pinned to 2.2.x, and the MQTT tests run them against mosquitto.
    """

    _read_socket: object = None
    _read_buffer: bytearray
    _filtered = False

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has (up to READ_SIZE bytes) and handle every whole packet in it.

        paho's own reads one packet per network loop with three `recv` calls (type, length, rest) and a
        `select` before each packet. Here one `recv` serves every packet it brings; the incomplete tail
        stays buffered, and since it needs more bytes from the socket to complete, the next `select`
        wakes for them. `max_packets` is unused (paho deprecated it).
        """
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._read_socket is not self._sock:  # a new connection: a buffer of its own
            self._read_buffer = bytearray()
            self._read_socket = self._sock
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        buffer = self._read_buffer
        buffer += data
        pos, end = 0, len(buffer)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:  # packets handled before a callback raised are not handled again
            while pos + 2 <= end and not rc and self._sock is not None:
                length, shift, start = 0, 0, pos + 1
                while start < end and buffer[start] & 0x80:
                    length |= (buffer[start] & 0x7F) << shift
                    shift += 7
                    start += 1
                if start - pos > 4:
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
                if start == end:
                    break
                length |= buffer[start] << shift
                start += 1
                if start + length > end:
                    break
                self._in_packet = {
                    "command": buffer[pos],
                    "have_remaining": 1,
                    "remaining_count": [],
                    "remaining_mult": 1,
                    "remaining_length": length,
                    "packet": buffer[start : start + length],
                    "to_process": 0,
                    "pos": 0,
                }
                pos = start + length
                try:
                    rc = self._packet_handle()
                except MalformedPacket as exc:
                    self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            del buffer[:pos]
        return self._loop_rc_handle(rc) if rc > 0 else rc

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's, without `_packet.decode_publish`, for a QoS 0 or 1 PUBLISH without properties (telemetry).

        In MQTT v5 paho builds and fills a `Properties` object per message even when there are none, a
        third of its time per message; here such a message's `properties` is None, as in MQTT 3.1.1.
        QoS 2, properties, or a packet too short for its lengths go to paho's.
        """
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        size = len(packet)
        topic_end = 2 + (packet[0] << 8 | packet[1]) if size >= 2 else size + 1
        start = topic_end + 2 if qos else topic_end
        if self._protocol == mqtt.MQTTv5:
            if start >= size or packet[start]:
                return super()._handle_publish()
            start += 1
        if qos > 1 or start > size or topic_end == 2:
            return super()._handle_publish()
        message = mqtt.MQTTMessage(
            packet[topic_end] << 8 | packet[topic_end + 1] if qos else 0, bytes(packet[2:topic_end])
        )
        message.qos = qos
        message.dup = bool(command & 0x08)
        message.retain = bool(command & 0x01)
        message.payload = bytes(packet[start:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def message_callback_add(self, sub: str, callback: mqtt.CallbackOnMessage) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """paho's, without matching the topic against per-topic callbacks while none was ever added (a
        quarter of paho's time per message after `_handle_publish`)."""
        if self._filtered:
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

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
