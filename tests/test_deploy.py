"""deploy/: what can be checked without Docker.

- docker-compose.yml parses; every file it mounts or builds from is in the repository; every variable it
  needs is in .env.example; Grafana gets every variable its mounted provisioning files use; fleetwatch's
  environment is a valid configuration (`Settings` loads it, with deploy/fleetwatch.toml).
- The broker: deploy/mosquitto/mosquitto.conf, acl and init-passwd.sh run by the real mosquitto and
  mosquitto_passwd (paths moved into a temporary directory, the listener onto a loopback port): no
  anonymous or wrong-password logins; a device publishes its own telemetry and snippets and not
  another's, reads its own commands and snippet requests and not another's; the daemon's real MQTT source
  reads telemetry and snippets through the shared subscription; the TLS listener example takes a device
  over mutual TLS.
- The systemd unit passes `systemd-analyze verify` and has the settings operations.md promises.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from certs import write_certificates

from fleetwatch.config import MqttConfig, load_config
from fleetwatch.localservers import HOST, Mosquitto, ServerError, find_binary, free_port
from fleetwatch.mqttclient import connect, new_client
from fleetwatch.pipeline import Message, acknowledge
from fleetwatch.sources.mqtt import MqttSource

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines()
    return {k: "x" for k, _, _ in (line.partition("=") for line in lines if line and not line.startswith("#"))}


def _expand(value: str, values: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: values[m[1]], value)


# -- docker compose ----------------------------------------------------------------------------------------
def test_compose_mounts_and_builds_only_what_the_repository_has() -> None:
    services = _compose()["services"]
    assert {"mosquitto", "influxdb", "grafana", "fleetwatch"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in the repository"
    build = services["fleetwatch"]["build"]
    context = DEPLOY / build["context"]
    dockerfile = (context / build["dockerfile"]).read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (context / source).exists(), f"Dockerfile copies {source}, which is not in the context"


def test_every_variable_the_compose_file_needs_is_in_the_env_example() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    needed = set(VARIABLE.findall(text))
    assert needed and needed <= set(_env_example()), needed - set(_env_example())


def test_grafana_gets_every_variable_its_provisioning_files_use() -> None:
    grafana = _compose()["services"]["grafana"]
    used: set[str] = set()
    for volume in grafana["volumes"]:
        source = DEPLOY / volume.split(":")[0]
        if volume.startswith("../dashboards/provisioning"):
            files = [source] if source.is_file() else sorted(source.glob("*.yaml"))
            used |= {v for f in files for v in VARIABLE.findall(f.read_text(encoding="utf-8"))}
    assert used, "no provisioning file mounted"
    assert used <= set(grafana["environment"]), used - set(grafana["environment"])


def test_the_fleetwatch_service_environment_is_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _compose()["services"]["fleetwatch"]
    for name in [k for k in os.environ if k.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(name)
    values = _env_example()
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, _expand(str(value), values))
    settings = load_config(DEPLOY / "fleetwatch.toml")
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.credentials()) == (
        "mosquitto",
        1883,
        ("fleetwatch", "x"),
    )
    assert settings.mqtt.subscription == "$share/fleetwatch/fleet/+/telemetry"
    assert settings.store_url == "influxdb://influxdb:8086/fleet?token=x"
    mounted = {v.split(":")[1] for v in service["volumes"]}
    assert service["environment"]["FLEETWATCH_CONFIG"] in mounted


def test_the_init_scripts_are_valid_shell() -> None:
    for script in (DEPLOY / "influxdb" / "init-dbrp.sh", DEPLOY / "mosquitto" / "init-passwd.sh"):
        shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)
        assert os.access(script, os.X_OK)


# -- the broker ----------------------------------------------------------------------------------------------
class DeployedMosquitto(Mosquitto):
    """The real mosquitto with deploy/mosquitto/mosquitto.conf, its /mosquitto/ paths moved into `dir`."""

    def _config_text(self) -> str:
        text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
        places = {"config/conf.d": f"{self.dir}/conf.d", "config/": f"{DEPLOY / 'mosquitto'}/", "": f"{self.dir}/"}
        text = re.sub(r"/mosquitto/(config/conf\.d|config/)?", lambda m: places[m[1] or ""], text)
        text = re.sub(r"^listener 1883$", f"listener {self.port} {HOST}", text, flags=re.M)
        return text + "user root\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DeployedMosquitto]:
    for sub in ("passwd", "data", "conf.d", "certs"):
        (tmp_path / sub).mkdir()
    env = {"PATH": os.environ["PATH"], "PASSWORD_FILE": str(tmp_path / "passwd" / "passwd")}
    script = str(DEPLOY / "mosquitto" / "init-passwd.sh")
    find_binary("mosquitto_passwd", "mosquitto")
    subprocess.run(["sh", script], env=env | {"MQTT_FLEETWATCH_PASSWORD": "fw-secret"}, check=True)
    for device in ("dev-1", "dev-2"):
        subprocess.run(["sh", script, device], env=env, input=f"{device}-secret\n", text=True, check=True)
    server = DeployedMosquitto(tmp_path)
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


def _client(broker: Mosquitto, user: str | None, password: str | None = None) -> tuple[mqtt.Client, list]:
    """A connected MQTT v5 client and the messages it receives; fails when the broker refuses it."""
    got: list[mqtt.MQTTMessage] = []
    config = MqttConfig(url=broker.url, username=user, password=password)
    client = new_client(config, f"{user}-{time.time_ns()}")
    client.on_message = lambda c, u, m: got.append(m)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    connect(client, config)
    client.loop_start()
    if not connected.wait(5):
        client.loop_stop()
        raise ConnectionRefusedError(f"broker refused {user}")
    return client, got


def _connects(config: MqttConfig) -> bool:
    """Whether the broker accepts a client with `config` (a CONNACK that is not a failure)."""
    accepted = threading.Event()
    client = new_client(config, f"probe-{time.time_ns()}")
    client.on_connect = lambda c, u, f, rc, p: accepted.set() if not rc.is_failure else None
    try:
        connect(client, config)
    except OSError:
        return False
    client.loop_start()
    try:
        return accepted.wait(3)
    finally:
        client.disconnect()
        client.loop_stop()


def _wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(("data", "command"), [("telemetry", "cmd/ota"), ("snippet", "cmd/snippet")])
def test_the_broker_holds_devices_to_their_own_topics(broker: DeployedMosquitto, data: str, command: str) -> None:
    """Telemetry and OTA commands, snippets and snippet requests: a device writes its own data topic and
    reads its own commands only; the daemon reads every device's data (shared subscription) and writes the
    commands."""
    assert not _connects(MqttConfig(url=broker.url)), "anonymous login accepted"
    assert not _connects(MqttConfig(url=broker.url, username="dev-1", password="wrong")), "wrong password accepted"
    assert _connects(MqttConfig(url=broker.url, username="dev-1", password="dev-1-secret"))

    received: list[Message] = []

    def submit(message: Message) -> None:
        received.append(message)
        acknowledge([message])

    daemon = MqttConfig(
        url=broker.url, username="fleetwatch", password="fw-secret", shared_group="fleetwatch", topic=f"fleet/+/{data}"
    )
    source = MqttSource(daemon, submit)
    source.start()
    assert source.wait_connected(5)
    time.sleep(0.3)  # the subscription is in place
    dev1, _ = _client(broker, "dev-1", "dev-1-secret")
    dev1.publish(f"fleet/dev-2/{data}", b"spoofed", qos=1).wait_for_publish(5)
    dev1.publish(f"fleet/dev-1/{data}", b"own", qos=1).wait_for_publish(5)
    assert _wait(lambda: received)
    time.sleep(0.3)
    assert [(m.device, m.payload) for m in received] == [("dev-1", b"own")]

    commander, _ = _client(broker, "fleetwatch", "fw-secret")
    for device in ("dev-1", "dev-2"):
        commander.publish(f"fleet/{device}/{command}", f"for {device}".encode(), qos=1, retain=True).wait_for_publish(5)
    dev2, dev2_got = _client(broker, "dev-2", "dev-2-secret")
    dev2.subscribe(f"fleet/dev-2/{command}", qos=1)
    dev1_reader, dev1_got = _client(broker, "dev-1", "dev-1-secret")
    dev1_reader.subscribe(f"fleet/dev-2/{command}", qos=1)
    dev1_reader.subscribe(f"fleet/dev-1/{command}", qos=1)
    assert _wait(lambda: dev2_got and dev1_got)
    time.sleep(0.3)
    assert [bytes(m.payload) for m in dev2_got] == [b"for dev-2"]
    assert [bytes(m.payload) for m in dev1_got] == [b"for dev-1"]
    dev1.publish(f"fleet/dev-1/{command}", b"self-issued", qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.3)
    assert [bytes(m.payload) for m in dev1_got] == [b"for dev-1"], "a device wrote its own command"
    for client in (dev1, commander, dev2, dev1_reader):
        client.disconnect()
        client.loop_stop()
    source.close()


def test_the_tls_listener_example_takes_devices_over_mutual_tls(tmp_path: Path) -> None:
    for sub in ("passwd", "data", "conf.d", "certs"):
        (tmp_path / sub).mkdir()
    (tmp_path / "passwd" / "passwd").write_text("")
    write_certificates(tmp_path / "certs")
    tls_port = free_port()
    example = (DEPLOY / "mosquitto" / "tls.conf.example").read_text(encoding="utf-8")
    example = example.replace("listener 8883", f"listener {tls_port} {HOST}").replace("/mosquitto/", f"{tmp_path}/")
    (tmp_path / "conf.d" / "tls.conf").write_text(example)
    server = DeployedMosquitto(tmp_path)
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        certs = tmp_path / "certs"
        device = MqttConfig(
            url=f"mqtts://{HOST}:{tls_port}",
            tls_ca=certs / "ca.crt",
            tls_cert=certs / "dev-1.crt",
            tls_key=certs / "dev-1.key",
        )
        client = new_client(device, "dev-1")
        connect(client, device)
        client.loop_start()
        info = client.publish("fleet/dev-1/telemetry", b"over tls", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
        client.disconnect()
        client.loop_stop()
        no_cert = MqttConfig(url=f"mqtts://{HOST}:{tls_port}", tls_ca=certs / "ca.crt")
        assert not _connects(no_cert), "a device without a certificate got in"
    finally:
        server.close()


# -- systemd -----------------------------------------------------------------------------------------------
def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (DEPLOY / "fleetwatch.service").read_text(encoding="utf-8")
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", ";")))
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["DynamicUser"] == "yes" and settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "fleetwatch" and settings["NoNewPrivileges"] == "yes"
    assert settings["ExecStart"].endswith("fleetwatch run --config /etc/fleetwatch/fleetwatch.toml")
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found (Debian package systemd)"
    local = tmp_path / "fleetwatch.service"
    local.write_text(unit.replace("/usr/local/bin/fleetwatch", f"{shutil.which('python3')} -m fleetwatch"))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
