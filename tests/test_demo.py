"""`fleetwatch demo` in a short mode, as a user runs it: a subprocess `python -m fleetwatch demo`, with a real
broker (the local mosquitto, and the embedded amqtt broker), the real daemon, webhook receiver and simulated
devices. The test asserts the story from what the demo leaves behind (`--keep`): the drift alert for
site=north went out to the webhook, the canary was rolled back, and the canary devices' last frames in the
store report the baseline model again. Ctrl-C stops it cleanly with the summary and exit status 130.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetwatch.actions.rollout import RolloutLog
from fleetwatch.actions.webhooks import Outbox
from fleetwatch.cli import main
from fleetwatch.config import load_config
from fleetwatch.demo import BASELINE, WORSE, WORSE_NAME
from fleetwatch.frames import Registry
from fleetwatch.sinks import open_store
from fleetwatch.state import StateDB

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--devices", "60", "--duration", "7", "--pace", "0.5", "--seed", "3", "--no-live"]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    return env | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", "demo", *args],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("broker", "store"), [("mosquitto", "embedded"), ("embedded", "embedded"), ("auto", "influxdb")]
)
def test_the_story_happens(tmp_path: Path, broker: str, store: str, request: pytest.FixtureRequest) -> None:
    keep = tmp_path / "demo"
    options = ["--store", request.getfixturevalue("influx_db")] if store == "influxdb" else []
    started = time.monotonic()
    result = _demo(*SHORT, "--broker", broker, "--keep", str(keep), *options)
    elapsed = time.monotonic() - started
    print(f"demo with {broker} broker, {store} store: {elapsed:.1f} s\n{result.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr

    out = result.stdout
    protocol = "MQTT 3.1.1" if broker == "embedded" else "MQTT 5"
    assert protocol in out
    alert = re.search(r"drift: +alert sent for site=north at window (\d+) \(drift injected at window (\d+)\)", out)
    assert alert and int(alert[2]) <= int(alert[1]) <= int(alert[2]) + 2, out
    rollback = re.search(r"canary rolled back at window \d+ .*; (\d+) of (\d+) devices reverted to kws-a", out)
    assert rollback and rollback[1] == rollback[2] and int(rollback[1]) > 0, out
    assert f"kept in {keep}" in out

    settings = load_config(keep / "fleetwatch.toml")
    assert settings.store_url == (options[1] if options else f"embedded://{keep / 'store'}")
    status_text = CliRunner().invoke(main, ["rollout", "status", "-c", str(keep / "fleetwatch.toml")]).output
    assert status_text.startswith(f"{WORSE_NAME}: rolled_back"), status_text
    db = StateDB(settings.state_path)
    status = RolloutLog(db).status(WORSE_NAME)[0]
    assert status["state"] == "rolled_back" and status["verdict"]["verdict"] == "rollback"
    sent = [json.loads(m.body) for m in Outbox(db).list("sent", 1000)]
    north = [
        m
        for m in sent
        if m["status"] == "firing"
        and m["group"]["label"] == "site=north"
        and any(a["signal"] == "input_mean_0" for a in m["alerts"])
    ]
    assert north, [m["title"] for m in sent]
    db.close()

    roles = RolloutLog(StateDB(settings.state_path)).roles(WORSE_NAME)
    canary = sorted(d for d, role, stage in roles if role == "canary" and stage == 0)  # stage 1's devices
    store = open_store(settings.store_url)
    frames = store.read_frames(0, 2**32, schema=Registry.builtin().get(1), devices=canary)
    store.close()
    models: dict[str, list[str]] = {}
    for device, model in zip(frames["device"].tolist(), frames["model_id"].tolist(), strict=True):
        models.setdefault(str(device), []).append(str(model))
    assert sorted(models) == canary
    assert all(str(WORSE) in seen and seen[-1] == str(BASELINE) for seen in models.values()), models


@pytest.mark.integration
def test_ctrl_c_stops_cleanly_with_a_summary(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "demo", "--devices", "20", "--duration", "60", "--no-live"],
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert "devices online" in first, first + (process.stderr.read() if process.stderr else "")
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "(interrupted)" in out and "data:    removed" in out


def test_bad_options_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--duration", "3", "--no-live"])
    assert result.exit_code == 2 and "the story needs at least 10" in result.output
    result = CliRunner().invoke(main, ["demo", "--store", "http://127.0.0.1:8086/fleet", "--no-live"])
    assert result.exit_code == 2 and "--store: expected embedded:///path/to/dir or influxdb://" in result.output
    (tmp_path / "old").write_text("x")
    result = CliRunner().invoke(main, ["demo", "--keep", str(tmp_path), "--no-live"])
    assert result.exit_code == 2 and "give a new or empty directory" in result.output


def test_the_readme_main_command_is_the_demo() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no shell block"
    assert blocks[0].strip() == "pip install '.[demo]' && fleetwatch demo"
    assert "./scripts/test" in blocks[1]
