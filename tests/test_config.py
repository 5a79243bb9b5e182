"""Configuration: TOML + FLEETWATCH_* environment, clear errors naming the key, secrets masked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.config import ConfigError, load_config, mask_url, masked
from fleetwatch.logs import setup_logging


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(text)
    return path


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_config(None)
    assert settings.store_url == f"embedded://{tmp_path / 'xdg' / 'fleetwatch' / 'store'}"
    assert settings.state_path == tmp_path / "xdg" / "fleetwatch" / "state.db"
    assert settings.mqtt.url is None and settings.mqtt.topic == "fleet/+/telemetry"
    assert settings.http.listen == "127.0.0.1:8080"
    assert settings.notehub.secret_header == "X-Fleetwatch-Secret"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[store]\nurl = "embedded:///var/lib/x"\n[mqtt]\nurl = "mqtt://a:1883"\ntopic = "t/+/x"\n')
    monkeypatch.setenv("FLEETWATCH_STORE__URL", "influxdb://127.0.0.1:8086/fleet")
    settings = load_config(path)
    assert settings.store_url == "influxdb://127.0.0.1:8086/fleet"
    assert settings.mqtt.url == "mqtt://a:1883" and settings.mqtt.topic == "t/+/x"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {"FLEETWATCH_MQTT__URL": "http://broker:1883"}, "mqtt.url: expected mqtt://host"),
        ('[mqtt]\ntopic = "fleet/#"\n', {}, "mqtt.topic: expected exactly one `+`"),
        ('[store]\nurl = "postgres://x"\n', {}, "store.url: expected embedded:///path/to/dir or influxdb://"),
        ('[store]\nurl = "influxdb://h:8086/bad;name"\n', {}, "store.url: expected influxdb://host:port/<database>"),
        ("[http]\nlisten = 8080\n", {}, "http.listen"),
        ('[mqtt]\nurll = "mqtt://x"\n', {}, "mqtt.urll: unknown key"),
        ('[notehub]\ndevice_field = "imei"\n', {}, "notehub.device_field"),
        ("[pipeline]\nqueue_max_messages = 0\n", {}, "pipeline.queue_max_messages"),
        ("[alerts]\ncooldown_minutes = 0\n", {}, "alerts.cooldown_minutes"),
        ('[[alerts.routes]]\nreceivers = ["nobody"]\n', {}, "alerts: routes[0].receivers: unknown receivers"),
        ('[[alerts.receivers]]\nname = "x"\nkind = "pager"\n', {}, "alerts.receivers.0: Input tag 'pager'"),
        ("[rollout]\nstages = [50, 10]\n", {}, "rollout.stages: stages must be percents"),
        ("", {"FLEETWATCH_ROLLOUT__JUDGE__ALPHA_ROLLBACK": "0.9"}, "rollout.judge.alpha_rollback"),
        ('[rollout]\ncommand_topic = "fleet/+/ota"\n', {}, "rollout.command_topic: expected one {device}"),
    ],
)
def test_bad_values_fail_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_secrets_come_from_files_and_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "route.secret"
    secret.write_text("s3cr3t-route\n")
    path = write(tmp_path, f'[notehub]\nsecret_file = "{secret}"\n[mqtt]\nurl = "mqtt://dev:hunter2@b:1883"\n')
    monkeypatch.setenv("FLEETWATCH_STORE__URL", "influxdb://u:pw@127.0.0.1:8086/fleet?token=abc")
    settings = load_config(path)
    assert settings.notehub.secret is not None
    assert settings.notehub.secret.get_secret_value() == "s3cr3t-route"
    shown = json.dumps(masked(settings))
    for leaked in ("s3cr3t-route", "hunter2", "pw@", "abc"):
        assert leaked not in shown
    assert "mqtt://dev:***@b:1883" in shown and "token=***" in shown


def test_alerts_and_rollout_sections_load_and_mask_their_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slack = tmp_path / "slack.url"
    slack.write_text("https://hooks.slack.com/services/T0/B0/s3cr3t\n")
    path = write(
        tmp_path,
        '[alerts]\ngroup_by = ["site"]\n'
        f'[[alerts.receivers]]\nname = "ops"\nkind = "slack"\nurl_file = "{slack}"\n'
        '[[alerts.receivers]]\nname = "hook"\nkind = "webhook"\nurl = "http://127.0.0.1:9/h"\nsecret = "hm4c"\n'
        '[[alerts.routes]]\nreceivers = ["ops", "hook"]\n'
        "[rollout]\nstages = [10, 100]\n[rollout.judge]\nmin_devices = 4\n",
    )
    monkeypatch.setenv("FLEETWATCH_ROLLOUT__BAKE_S", "7200")
    settings = load_config(path)
    assert [r.name for r in settings.alerts.receivers] == ["ops", "hook"] and settings.alerts.group_by == ["site"]
    assert (settings.rollout.stages, settings.rollout.judge.min_devices, settings.rollout.bake_s) == (
        [10.0, 100.0],
        4,
        7200,
    )
    shown = masked(settings)
    assert "s3cr3t" not in json.dumps(shown) and "hm4c" not in json.dumps(shown)
    assert [r["url"] for r in shown["alerts"]["receivers"]] == ["**********", "http://127.0.0.1:9/h"]
    assert load_config(None).alerts.receivers == [] and load_config(None).rollout.stages == [5.0, 25.0, 100.0]


def test_secret_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"notehub.*secret_file: cannot read"):
        load_config(write(tmp_path, f'[notehub]\nsecret_file = "{tmp_path / "missing"}"\n'))


def test_mqtt_url_parts() -> None:
    from fleetwatch.config import MqttConfig

    config = MqttConfig(url="mqtts://dev%40x:p%2Fw@broker.example:8883", shared_group="g")
    assert (config.host, config.port, config.tls) == ("broker.example", 8883, True)
    assert config.credentials() == ("dev@x", "p/w")
    assert config.subscription == "$share/g/fleet/+/telemetry"
    assert MqttConfig(url="mqtt://b").port == 1883


def test_mask_url() -> None:
    assert (
        mask_url("influxdb://admin:secret@h:8086/db?rp=a&token=t0k") == "influxdb://admin:***@h:8086/db?rp=a&token=***"
    )


def test_cli_config_check(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "influxdb://127.0.0.1:8086/fleet"\n[notehub]\nsecret = "xyz"\n')
    ok = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(ok.stdout)
    assert shown["store"]["url"] == "influxdb://127.0.0.1:8086/fleet"
    assert shown["notehub"]["secret"] == "**********"
    bad = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "config", "check"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "FLEETWATCH_HTTP__LISTEN": "nope"},
    )
    assert bad.returncode == 1
    assert "http.listen: expected host:port" in bad.stderr


def test_reference_docs_and_example_are_generated_from_the_model() -> None:
    from fleetwatch.config import example_toml, reference, reference_markdown

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "configuration.md").read_text() == reference_markdown(), "run: fleetwatch config reference"
    assert (root / "deploy" / "fleetwatch.toml").read_text() == example_toml(), "run: fleetwatch config example"
    example = example_toml()
    assert all(f"# {key.rpartition('.')[2]} = " in example for key, *_ in reference())
    assert all(description for *_, description in reference())


def test_logging_keeps_apscheduler_job_chatter_out_unless_debugging() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        scheduler = logging.getLogger("apscheduler.executors.default")
        assert not scheduler.isEnabledFor(logging.INFO) and scheduler.isEnabledFor(logging.WARNING)
        assert logging.getLogger("fleetwatch.daemon").isEnabledFor(logging.INFO)
        setup_logging("DEBUG")
        assert scheduler.isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("apscheduler").setLevel(logging.NOTSET)
