"""Forwarding snippets to Edge Impulse, exporting them, and the [snippets] configuration.

`Recorder` (tests/recording_server.py) is a real HTTP server on 127.0.0.1 standing in for Edge Impulse's
ingestion service (`https://ingestion.edgeimpulse.com`, `POST /api/{training|testing}/data`): it records
each request and answers as scripted (200, 429 with Retry-After, 5xx, 400 with Edge Impulse's reason).
Sleeping between retries is injected, so no test waits for real.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from recording_server import Recorder, Reply

from fleetwatch.cli import main
from fleetwatch.config import Settings, load_config
from fleetwatch.frames.snippet import encode_snippet
from fleetwatch.snippets.edgeimpulse import (
    ZERO_SIGNATURE,
    Forwarder,
    acquisition_document,
    csv_document,
    sensors_for,
)
from fleetwatch.snippets.store import Record, SnippetStore, store_from_settings
from fleetwatch.state import StateDB

ROOT = Path(__file__).resolve().parents[1]
START = 1_795_000_000
API_KEY = "ei_0123456789abcdef0123456789abcdef"
HMAC_KEY = "5f1c0ffee5f1c0ffee5f1c0ffee5f1c0"
SAMPLES = np.array([[0.1, -9.81, 0.5], [0.25, -9.75, 0.0], [1e-3, 3.3333333, -2.0]], dtype=np.float32)


def raw(samples: np.ndarray = SAMPLES, start: int = START, model_id: int = 42) -> bytes:
    return encode_snippet(samples, interval_ms=16.0, start_time=start, reason="anomaly", model_id=model_id)


@pytest.fixture
def ingestion() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def settings(tmp_path: Path, ingestion: Recorder | None = None, **snippets: Any) -> Settings:
    base = {"api_key": API_KEY, "hmac_key": HMAC_KEY, "backoff_base_s": 2.0, "backoff_max_s": 30.0}
    if ingestion is not None:
        base["ingestion_url"] = ingestion.url("/")
    return Settings(data_dir=tmp_path, snippets=base | snippets)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def forwarder(config: Settings, store: SnippetStore, sleeps: Sleeps | None = None) -> Forwarder:
    return Forwarder(config.snippets, store, sleep=sleeps if sleeps is not None else Sleeps(), clock=lambda: START)


def add(store: SnippetStore, data: bytes, device: str = "dev-1", label: str | None = None) -> Record:
    return store.add(data, device, START + 5, "mqtt", label)[0]


def verify_signature(body: bytes, key: str) -> bool:
    """Edge Impulse's check: the HMAC of the document with its signature zeroed equals the signature."""
    signature = json.loads(body)["signature"]
    zeroed = body.replace(signature.encode(), ZERO_SIGNATURE.encode(), 1)
    return hmac.compare_digest(hmac.new(key.encode(), zeroed, hashlib.sha256).hexdigest(), signature)


def test_forward_sends_the_exact_document_and_headers(tmp_path: Path, ingestion: Recorder) -> None:
    config = settings(tmp_path, ingestion)
    store = store_from_settings(config, StateDB(config.state_path))
    record = add(store, raw(), "dev:1", label="shake")
    [result] = forwarder(config, store).forward([record])
    assert (result.status, result.attempts) == ("sent", 1)

    [request] = ingestion.received
    assert (request.method, request.path) == ("POST", "/api/training/data")
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["x-label"] == "shake"
    assert request.headers["x-file-name"] == f"dev_1.{record.checksum[:12]}.json"
    assert request.headers["Content-Type"] == "application/json"
    document = request.json()
    assert list(document) == ["protected", "signature", "payload"]
    assert document["protected"] == {"ver": "v1", "alg": "HS256", "iat": START}
    assert len(document["signature"]) == 64 and document["signature"] != ZERO_SIGNATURE
    assert verify_signature(request.body, HMAC_KEY)
    assert not verify_signature(request.body, HMAC_KEY + "x")
    assert document["payload"] == {
        "device_name": "dev:1",
        "device_type": "fleetwatch",
        "interval_ms": 16.0,
        "sensors": [
            {"name": "accX", "units": "m/s2"},
            {"name": "accY", "units": "m/s2"},
            {"name": "accZ", "units": "m/s2"},
        ],
        "values": [[0.1, -9.81, 0.5], [0.25, -9.75, 0.0], [0.001, 3.3333333, -2.0]],
    }
    assert np.array_equal(np.array(document["payload"]["values"], dtype=np.float32), SAMPLES)
    after = store.get(record.id)
    assert after is not None and (after.forwarded_at, after.forward_category) == (START, "training")


def test_forward_is_idempotent_and_honours_label_and_category(tmp_path: Path, ingestion: Recorder) -> None:
    config = settings(tmp_path, ingestion)
    store = store_from_settings(config, StateDB(config.state_path))
    first, second = add(store, raw()), add(store, raw(start=START + 60), "dev-2")
    results = forwarder(config, store).forward(store.query(), label="idle", category="testing")
    assert [r.status for r in results] == ["sent", "sent"]
    assert [r.path for r in ingestion.received] == ["/api/testing/data"] * 2
    assert [r.headers["x-label"] for r in ingestion.received] == ["idle", "idle"]
    again = forwarder(config, store).forward(store.query())
    assert [(r.id, r.status) for r in again] == [(first.id, "skipped"), (second.id, "skipped")]
    assert "forwarded to testing at 2026-11-18T11:06:40Z" in again[0].detail
    assert len(ingestion.received) == 2, "nothing is sent twice"


def test_429_with_retry_after_then_success(tmp_path: Path, ingestion: Recorder) -> None:
    config = settings(tmp_path, ingestion)
    store = store_from_settings(config, StateDB(config.state_path))
    record = add(store, raw())
    ingestion.script(Reply(429, (("Retry-After", "7"),), b"slow down"), Reply(503, body=b"busy"), Reply(200))
    sleeps = Sleeps()
    [result] = forwarder(config, store, sleeps).forward([record])
    assert (result.status, result.attempts) == ("sent", 3)
    assert sleeps[0] == 7.0, "Retry-After is honoured"
    assert 0 <= sleeps[1] <= 2 * config.snippets.backoff_base_s, "then full-jitter backoff (attempt 2)"
    assert len(ingestion.received) == 3
    assert len({r.body for r in ingestion.received}) == 1, "every retry sends the same document"


def test_400_gives_up_at_once_with_edge_impulses_reason(tmp_path: Path, ingestion: Recorder) -> None:
    config = settings(tmp_path, ingestion)
    store = store_from_settings(config, StateDB(config.state_path))
    record = add(store, raw())
    ingestion.script(Reply(400, body=f"Invalid signature for key {HMAC_KEY} (api key {API_KEY})".encode()))
    sleeps = Sleeps()
    [result] = forwarder(config, store, sleeps).forward([record])
    assert (result.status, result.attempts, sleeps) == ("failed", 1, [])
    assert result.detail.startswith("HTTP 400: permanent: Invalid signature for key ***")
    assert API_KEY not in result.detail and HMAC_KEY not in result.detail
    after = store.get(record.id)
    assert after is not None and after.forwarded_at is None and after.forward_error == result.detail
    ingestion.script(Reply(200))
    assert [r.status for r in forwarder(config, store).forward(store.query())] == ["sent"], "a failure is retried later"


def test_retries_are_bounded(tmp_path: Path, ingestion: Recorder) -> None:
    config = settings(tmp_path, ingestion, retries=2)
    store = store_from_settings(config, StateDB(config.state_path))
    record = add(store, raw())
    ingestion.default = Reply(502, body=b"bad gateway")
    sleeps = Sleeps()
    [result] = forwarder(config, store, sleeps).forward([record])
    assert (result.status, result.attempts, len(sleeps)) == ("failed", 3, 2)
    assert result.detail == "gave up after 3 attempts: HTTP 502: bad gateway"


def test_unsigned_document_and_extra_channels() -> None:
    from fleetwatch.frames.snippet import decode_snippet

    snippet = decode_snippet(encode_snippet(np.ones((2, 5), dtype=np.float32), interval_ms=0.5))
    config = Settings().snippets
    document = json.loads(acquisition_document(snippet, "d", "board", config.sensors, 123))  # type: ignore[arg-type]
    assert document["protected"] == {"ver": "v1", "alg": "none", "iat": 123}
    assert document["signature"] == ZERO_SIGNATURE
    assert [s["name"] for s in document["payload"]["sensors"]] == ["accX", "accY", "accZ", "ch3", "ch4"]
    assert sensors_for(1, config.sensors) == [{"name": "accX", "units": "m/s2"}]
    assert document["payload"]["values"] == [[1.0] * 5, [1.0] * 5]


def test_csv_timestamps_stay_plain_decimals_on_long_fractional_recordings() -> None:
    from fleetwatch.frames.snippet import decode_snippet

    snippet = decode_snippet(encode_snippet(np.zeros((60000, 1), dtype=np.float32), interval_ms=1000 / 48))
    lines = csv_document(snippet, [])  # type: ignore[arg-type]
    rows = lines.splitlines()
    assert rows[0] == "timestamp,ch0" and rows[1] == "0,0.0" and rows[2] == "20.833334,0.0"
    assert rows[-1] == f"{59999 * float(np.float32(1000 / 48)):.6f},0.0" == "1249979.204813,0.0"


def write_config(tmp_path: Path, ingestion: Recorder, extra: str = "") -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[fleet]\ninventory = "{tmp_path / "inventory.csv"}"\n[snippets]\n'
        f'ingestion_url = "{ingestion.url("/")}"\napi_key = "{API_KEY}"\nretries = 0\n'
        'sensors = [{name = "x", units = "g"}, {name = "y", units = "g"}, {name = "z", units = "g"}]\n' + extra
    )
    (tmp_path / "inventory.csv").write_text("device,site\ndev-1,north\ndev-2,south\n")
    return path


def test_cli_forward_dry_run_sends_nothing_and_masks_the_key(tmp_path: Path, ingestion: Recorder) -> None:
    path = write_config(tmp_path, ingestion)
    store = store_from_settings(load_config(path), StateDB(load_config(path).state_path))
    record = add(store, raw(), "dev-1", label="bump")
    result = CliRunner().invoke(main, ["snippets", "forward", "--dry-run", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert API_KEY not in result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[-1] == {"sent": 0, "skipped": 0, "failed": 0, "dry_run": 1}
    plan = json.loads(lines[0]["detail"])
    assert plan["url"] == ingestion.url("/api/training/data")
    assert plan["headers"] == {
        "x-api-key": "***",
        "x-label": "bump",
        "x-file-name": f"dev-1.{record.checksum[:12]}.json",
        "Content-Type": "application/json",
    }
    assert plan["protected"] == {"ver": "v1", "alg": "none", "iat": START}
    assert plan["payload"]["sensors"][0] == {"name": "x", "units": "g"} and plan["payload"]["values"] == "3 x 3"
    assert ingestion.received == []
    assert store.get(record.id).forwarded_at is None  # type: ignore[union-attr]


def test_cli_forward_filters_and_exits_1_on_failure(tmp_path: Path, ingestion: Recorder) -> None:
    path = write_config(tmp_path, ingestion)
    store = store_from_settings(load_config(path), StateDB(load_config(path).state_path))
    add(store, raw(model_id=42), "dev-1")
    south = add(store, raw(start=START + 3600, model_id=42), "dev-2")
    ingestion.script(Reply(401, body=b"unknown API key"))
    failed = CliRunner().invoke(main, ["snippets", "forward", "--cohort", "site=north", "-c", str(path)])
    assert failed.exit_code == 1
    assert json.loads(failed.output.splitlines()[-1]) == {"sent": 0, "skipped": 0, "failed": 1}
    assert "HTTP 401: permanent: unknown API key" in failed.output
    ok = CliRunner().invoke(main, ["snippets", "forward", "--since", "2026-11-18T12:00:00Z", "-c", str(path)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output.splitlines()[0])["id"] == south.id
    assert [r.headers["x-label"] for r in ingestion.received] == ["unlabeled", "unlabeled"]


def test_cli_list_and_export_json_and_csv(tmp_path: Path, ingestion: Recorder) -> None:
    path = write_config(tmp_path, ingestion)
    store = store_from_settings(load_config(path), StateDB(load_config(path).state_path))
    first = add(store, raw(), "dev-1", label="bump")
    add(store, raw(start=START + 3600, model_id=7), "dev-2")
    listed = CliRunner().invoke(main, ["snippets", "list", "--json", "--model-id", "42", "-c", str(path)])
    assert listed.exit_code == 0, listed.output
    [row] = [json.loads(line) for line in listed.output.splitlines()]
    assert (row["id"], row["device"], row["label"], row["reason"], row["checksum"]) == (
        first.id,
        "dev-1",
        "bump",
        "anomaly",
        first.checksum,
    )
    table = CliRunner().invoke(main, ["snippets", "list", "--device", "dev-2", "-c", str(path)])
    assert table.output.splitlines()[0].startswith("1 snippets in ")
    assert "dev-2" in table.output and "3x3 @16ms" in table.output

    out = tmp_path / "export"
    exported = CliRunner().invoke(main, ["snippets", "export", "--out", str(out), "-c", str(path)])
    assert json.loads(exported.output) == {"exported": 2, "out": str(out), "format": "json"}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["device"] for m in manifest] == ["dev-1", "dev-2"]
    document = json.loads((out / manifest[0]["file"]).read_text())
    assert document["payload"]["values"][0] == [0.1, -9.81, 0.5]
    assert document["protected"]["alg"] == "none"

    csv_out = tmp_path / "csv"
    result = CliRunner().invoke(
        main,
        ["snippets", "export", "--format", "csv", "--out", str(csv_out), "--cohort", "site=south", "-c", str(path)],
    )
    assert result.exit_code == 0, result.output
    [name] = [p.name for p in csv_out.glob("*.csv")]
    rows = list(csv.reader((csv_out / name).read_text().splitlines()))
    assert rows[0] == ["timestamp", "x", "y", "z"]
    assert rows[1:] == [
        ["0", "0.1", "-9.81", "0.5"],
        ["16", "0.25", "-9.75", "0.0"],
        ["32", "0.001", "3.3333333", "-2.0"],
    ]


def test_cli_cohort_without_inventory_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["snippets", "list", "--cohort", "site=north"], env={"FLEETWATCH_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 2 and "needs fleet.inventory" in result.output


def test_config_check_masks_the_keys_and_bad_values_name_the_key(tmp_path: Path, ingestion: Recorder) -> None:
    path = write_config(tmp_path, ingestion, f'hmac_key = "{HMAC_KEY}"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shown = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    assert API_KEY not in shown.stdout and HMAC_KEY not in shown.stdout
    snippets = json.loads(shown.stdout)["snippets"]
    assert snippets["api_key"] == snippets["hmac_key"] == "**********"
    assert snippets["dir"] == str(tmp_path / "data" / "snippets")
    for key, value, message in [
        ("FLEETWATCH_SNIPPETS__TOPIC", "fleet/snippets", "snippets.topic: expected exactly one `+` level"),
        ("FLEETWATCH_SNIPPETS__INGESTION_URL", "ftp://x", "snippets.ingestion_url: expected http(s)://host"),
        ("FLEETWATCH_SNIPPETS__CATEGORY", "validation", "snippets.category: Input should be 'training' or 'testing'"),
        ("FLEETWATCH_SNIPPETS__COMMAND_TOPIC", "fleet/cmd", "snippets.command_topic: expected one {device}"),
    ]:
        bad = subprocess.run(
            [sys.executable, "-m", "fleetwatch", "config", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**env, key: value},
        )
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
    duplicate = path.read_text().replace('name = "y"', 'name = "x"')
    path.write_text(duplicate)
    with pytest.raises(ValueError, match=r"snippets.sensors: .*sensor names must be unique"):
        load_config(path)
