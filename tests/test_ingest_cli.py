"""Import, backfill and quarantine commands through the same pipeline as live ingest.

The Notehub events API is stood in for by a local HTTP server that records requests and pages its
answers the way `GET /v1/projects/{project}/events` does (events + has_more).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from fleetwatch.frames import Registry, encode_frames
from fleetwatch.sinks import open_store

SCHEMA = Registry.builtin().get(1)


def frames(n: int) -> list[bytes]:
    rows = encode_frames(
        SCHEMA,
        {"seq": list(range(n)), "window_start": [1_795_000_000 + 3600 * i for i in range(n)], "window_s": [3600] * n},
    )
    return [r.tobytes() for r in rows]


def cli(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FLEETWATCH_DATA_DIR": str(tmp_path / "data"),
        "FLEETWATCH_STORE__URL": f"embedded://{tmp_path / 'store'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", *args], env=env, capture_output=True, text=True, check=check
    )


def stored(tmp_path: Path) -> dict[str, np.ndarray]:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    try:
        return store.read_frames(0, 2**31, schema=SCHEMA)
    finally:
        store.close()


def test_import_capture_stores_good_frames_and_quarantines_the_rest(tmp_path: Path) -> None:
    good = frames(3)
    bad = bytearray(good[0])
    bad[40] ^= 0x10
    lines = [{"device": "d1", "received": 1_795_100_000, "payload": base64.b64encode(f).decode()} for f in good]
    lines.append({"device": "d2", "received": 1_795_100_000, "payload": base64.b64encode(bytes(bad)).decode()})
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    summary = json.loads(cli(tmp_path, "import", "--capture", str(capture)).stdout)
    assert summary["messages"] == 4 and summary["stored"] == 3
    assert summary["rejected"] == {"bad_crc": 1, "bad_json": 1}
    assert stored(tmp_path)["seq"].tolist() == [0, 1, 2]
    listing = cli(tmp_path, "quarantine", "list", "--json").stdout.splitlines()
    assert sorted(json.loads(x)["reason"] for x in listing) == ["bad_crc", "bad_json"]


def test_import_notehub_events_array_and_lines(tmp_path: Path) -> None:
    events = [
        {"device": f"dev:{i}", "received": 1_795_100_000.25, "payload": base64.b64encode(f).decode()}
        for i, f in enumerate(frames(2))
    ]
    (tmp_path / "a.json").write_text(json.dumps(events))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(e | {"device": "dev:x"}) for e in events))
    summary = json.loads(
        cli(tmp_path, "import", "--notehub-events", str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")).stdout
    )
    assert summary["stored"] == 4
    assert sorted(stored(tmp_path)["device"].tolist()) == ["dev:0", "dev:1", "dev:x", "dev:x"]


def test_quarantine_show_and_replay_after_a_schema_is_added(tmp_path: Path) -> None:
    frame = bytearray(frames(1)[0])
    frame[2] = 9
    from fleetwatch.frames.crc import crc16

    frame[-2:] = crc16(bytes(frame[:-2])).to_bytes(2, "little")
    capture = tmp_path / "c.jsonl"
    capture.write_text(
        json.dumps({"device": "d", "received": 1_795_100_000, "payload": base64.b64encode(bytes(frame)).decode()})
    )
    cli(tmp_path, "import", "--capture", str(capture))
    entry = json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)
    shown = json.loads(cli(tmp_path, "quarantine", "show", str(entry["id"])).stdout)
    assert shown["reason"] == "unknown_schema" and shown["hex"] == bytes(frame).hex()
    assert json.loads(cli(tmp_path, "quarantine", "replay", "--all").stdout)["still_rejected"] == 1
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    text = (Path(__file__).resolve().parents[1] / "fleetwatch/frames/schemas/tinyml-health.toml").read_text()
    (schemas / "nine.toml").write_text(text.replace("id = 1", "id = 9").replace("tinyml-health", "nine"))
    replay = cli(
        tmp_path, "quarantine", "replay", "--reason", "unknown_schema", "--schema-dir", str(schemas), check=False
    )
    if replay.returncode != 0:
        os.environ["FLEETWATCH_FRAMES__SCHEMA_DIRS"] = json.dumps([str(schemas)])
        try:
            replay = cli(tmp_path, "quarantine", "replay", "--reason", "unknown_schema")
        finally:
            del os.environ["FLEETWATCH_FRAMES__SCHEMA_DIRS"]
    assert json.loads(replay.stdout)["replayed"] == 1
    assert cli(tmp_path, "quarantine", "list", "--json").stdout == ""
    assert json.loads(cli(tmp_path, "quarantine", "purge", "--older-than", "1d").stdout) == {"purged": 0}


class NotehubEvents(BaseHTTPRequestHandler):
    """Stands for the Notehub API: GET /v1/projects/{project}/events, pages of 2, bearer token required."""

    events: ClassVar[list[dict]] = []
    requests: ClassVar[list[tuple[str, dict, str]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, query, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != "Bearer tok":
            self.send_response(401)
            self.end_headers()
            return
        page, size = int(query["pageNum"]), int(query["pageSize"])
        chunk = self.events[(page - 1) * size : page * size]
        body = json.dumps({"events": chunk, "has_more": page * size < len(self.events)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def notehub_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotehubEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_backfill_pages_the_notehub_events_api(tmp_path: Path, notehub_api: str) -> None:
    NotehubEvents.events = [
        {"device": f"dev:{i}", "received": 1_795_100_000 + i, "payload": base64.b64encode(f).decode()}
        for i, f in enumerate(frames(5))
    ]
    NotehubEvents.requests = []
    os.environ.update({"FLEETWATCH_NOTEHUB__API_URL": notehub_api, "FLEETWATCH_NOTEHUB__TOKEN": "tok"})
    try:
        out = cli(
            tmp_path,
            "backfill",
            "notehub",
            "--project",
            "app:123",
            "--since",
            "2026-11-01T00:00:00Z",
            "--page-size",
            "2",
        ).stdout
    finally:
        for key in ("FLEETWATCH_NOTEHUB__API_URL", "FLEETWATCH_NOTEHUB__TOKEN"):
            del os.environ[key]
    assert json.loads(out)["stored"] == 5
    assert [q["pageNum"] for _, q, _ in NotehubEvents.requests] == ["1", "2", "3"]
    path, query, auth = NotehubEvents.requests[0]
    assert path == "/v1/projects/app:123/events" and auth == "Bearer tok"
    assert query["startDate"] == "1793491200" and query["sortOrder"] == "asc"
