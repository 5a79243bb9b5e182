"""The real local servers: loopback only, start/stop/restart on the same port, readable failures."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.localservers import Influxd, Mosquitto, ServerError


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while we look; listening sockets stay open
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
                family = socket.AF_INET if size == 4 else socket.AF_INET6
                found.add((socket.inet_ntop(family, words), int(port, 16)))
    return found


def retained(port: int, topic: str) -> bytes | None:
    """The retained message of `topic` on the broker, or None."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, message: got.append(message.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    for _ in range(20):  # a retained message comes right after the SUBACK
        client.loop(0.05)
        if got:
            break
    client.disconnect()
    return got[0] if got else None


def test_mosquitto_listens_on_loopback_only_and_keeps_persistent_data_across_restart() -> None:
    with Mosquitto(persistence=True) as broker:
        assert broker.process is not None
        assert listening_addresses(broker.process.pid) == {("127.0.0.1", broker.port)}
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("fleet/x/config", b"kept", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        port, directory, pid = broker.port, broker.dir, broker.process.pid
        broker.restart()
        assert (broker.port, broker.dir) == (port, directory) and broker.process.pid != pid
        assert retained(broker.port, "fleet/x/config") == b"kept"
        assert "max_queued_messages 1000000" in broker.config.read_text()
    assert not directory.exists()


def test_mosquitto_without_persistence_forgets_on_restart() -> None:
    with Mosquitto() as broker:
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("fleet/x/config", b"gone", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        broker.stop()
        assert not broker.running
        broker.start()
        assert retained(broker.port, "fleet/x/config") is None


def test_influxd_listens_on_loopback_only_and_keeps_data_across_restart(influxd: Influxd) -> None:
    assert influxd.process is not None
    addresses = listening_addresses(influxd.process.pid)
    assert ("127.0.0.1", influxd.port) in addresses and len(addresses) == 2  # HTTP and the RPC service
    assert {address for address, _ in addresses} == {"127.0.0.1"}
    influxd.query('CREATE DATABASE "kept"')
    port = influxd.port
    influxd.restart()
    assert influxd.port == port
    names = json.loads(influxd.query("SHOW DATABASES"))["results"][0]["series"][0]["values"]
    assert ["kept"] in names and ["_internal"] not in names  # self-monitoring is off
    influxd.query('DROP DATABASE "kept"')


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    broker = Mosquitto().start()
    try:
        assert broker.process is not None
        process = broker.process
        os.kill(process.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
        broker.stop(timeout=0.5)
        assert process.returncode == -signal.SIGKILL
    finally:
        broker.close()


@pytest.mark.parametrize(("server", "package"), [(Mosquitto, "mosquitto"), (Influxd, "influxdb")])
def test_a_missing_binary_names_the_debian_package(
    server: type[Mosquitto] | type[Influxd], package: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ServerError, match=f"install the Debian package `{package}`"):
        server()


def test_a_failed_start_shows_the_servers_log() -> None:
    broker = Mosquitto(extra_config="no_such_option true")
    with pytest.raises(ServerError) as info:
        broker.start()
    message = str(info.value)
    assert "exited with code" in message and "no_such_option" in message and str(broker.log) in message
    assert not broker.running
    broker.close()
