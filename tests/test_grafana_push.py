"""`fleetwatch grafana push` against a local stand-in for a Grafana 11 server's HTTP API.

grafana-client (the extra `fleetwatch[grafana]`) brings urllib3-future, which replaces the `urllib3`
package of whatever environment it is installed in, and with it what requests and influxdb-client run on
(seen here: header names are sent re-cased, which a test of the webhooks notices). So it is never
installed into the test environment: the push runs in a subprocess, in a virtual environment of its own
that is created once and cached (`_grafana_venv`). That environment sees the test environment's packages
(`--system-site-packages`, so fleetwatch and its dependencies need no second install), and urllib3-future
puts its `urllib3` into the venv's own site-packages, which comes first on the venv's sys.path: the
shadowing stays inside the venv. `test_grafana_client_stays_in_its_own_environment` checks both sides.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fleetwatch.grafana.builder import DATASOURCE_UID
from fleetwatch.grafana.dashboards import DASHBOARDS
from fleetwatch.grafana.provisioning import CONTACT_POINT, alert_rules
from fleetwatch.grafana.push import GRAFANA_CLIENT, PushError, PushTarget, datasource_from_store_url, folder_uid, push

REPO = Path(__file__).resolve().parents[1]
TOKEN = "glsa_test_token"
STORE_URL = "influxdb://grafana:s3cret@influxdb:8086/fleet"
WEBHOOK = "http://hooks.example/fleetwatch"


# --------------------------------------------------------------------------------- a Grafana 11 stand-in


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Grafana:
    """The state and answers of the Grafana 11 HTTP API endpoints that push uses, as Grafana gives them:
    data sources by uid (409 on a duplicate name), folders (409 on a duplicate uid), `POST
    /api/dashboards/db` (412 without overwrite, version + 1 with it), and the alerting provisioning API
    (alert rules 201/200, contact points 202, policies 202; 404 for unknown uids; 400 for invalid rules).
    Every request needs `Authorization: Bearer <token>` (401 otherwise)."""

    token: str
    requests: list[Request] = field(default_factory=list)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    contact_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Request) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"message": "Unauthorized"}
            return self._route(request)

    def _route(self, r: Request) -> tuple[int, Any]:
        routes = [
            ("GET", r"/api/datasources/uid/([^/]+)", self._get_datasource),
            ("POST", r"/api/datasources", self._create_datasource),
            ("PUT", r"/api/datasources/uid/([^/]+)", self._update_datasource),
            ("GET", r"/api/folders/([^/]+)", self._get_folder),
            ("POST", r"/api/folders", self._create_folder),
            ("PUT", r"/api/folders/([^/]+)", self._update_folder),
            ("POST", r"/api/dashboards/db", self._save_dashboard),
            ("GET", r"/api/v1/provisioning/alert-rules/([^/]+)", self._get_rule),
            ("POST", r"/api/v1/provisioning/alert-rules", self._create_rule),
            ("PUT", r"/api/v1/provisioning/alert-rules/([^/]+)", self._update_rule),
            ("GET", r"/api/v1/provisioning/contact-points", self._list_contact_points),
            ("POST", r"/api/v1/provisioning/contact-points", self._create_contact_point),
            ("PUT", r"/api/v1/provisioning/contact-points/([^/]+)", self._update_contact_point),
            ("PUT", r"/api/v1/provisioning/policies", self._set_policy),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, r.path)
            if method == r.method and match:
                return handler(r, *match.groups())
        return 404, {"message": "Not found"}

    def _get_datasource(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        return 200, self.datasources[uid]

    def _stored_datasource(self, body: dict[str, Any], id_: int, version: int) -> dict[str, Any]:
        visible = {k: v for k, v in body.items() if k != "secureJsonData"}
        return {
            **visible,
            "id": id_,
            "orgId": 1,
            "version": version,
            "secureJsonFields": dict.fromkeys(body.get("secureJsonData", {}), True),
        }

    def _create_datasource(self, r: Request) -> tuple[int, Any]:
        body = r.body
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        stored = self._stored_datasource(body, len(self.datasources) + 1, 1)
        self.datasources[body["uid"]] = stored
        return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource added", "name": body["name"]}

    def _update_datasource(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        old = self.datasources[uid]
        stored = self._stored_datasource({**r.body, "uid": uid}, old["id"], old["version"] + 1)
        self.datasources[uid] = stored
        return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource updated", "name": stored["name"]}

    def _get_folder(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.folders:
            return 404, {"message": "folder not found", "status": "not-found"}
        return 200, self.folders[uid]

    def _create_folder(self, r: Request) -> tuple[int, Any]:
        uid = r.body.get("uid")
        if uid in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        folder = {
            "id": len(self.folders) + 1,
            "uid": uid,
            "title": r.body["title"],
            "url": f"/dashboards/f/{uid}/",
            "version": 1,
        }
        self.folders[uid] = folder
        return 200, folder

    def _update_folder(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.folders:
            return 404, {"message": "folder not found", "status": "not-found"}
        folder = self.folders[uid]
        folder.update(title=r.body["title"], version=folder["version"] + 1)
        return 200, folder

    def _save_dashboard(self, r: Request) -> tuple[int, Any]:
        dashboard, folder = r.body["dashboard"], r.body.get("folderUid", "")
        if folder and folder not in self.folders:
            return 400, {"message": "folder not found"}
        uid = dashboard["uid"]
        old = self.dashboards.get(uid)
        if old and not r.body.get("overwrite"):
            return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
        version = old["dashboard"]["version"] + 1 if old else 1
        saved = {**dashboard, "id": old["dashboard"]["id"] if old else len(self.dashboards) + 1, "version": version}
        self.dashboards[uid] = {"dashboard": saved, "folderUid": folder}
        slug = re.sub(r"[^a-z0-9]+", "-", dashboard["title"].lower()).strip("-")
        return 200, {
            "id": saved["id"],
            "uid": uid,
            "url": f"/d/{uid}/{slug}",
            "status": "success",
            "version": version,
            "slug": slug,
        }

    def _invalid_rule(self, rule: dict[str, Any]) -> str | None:
        required = ("title", "condition", "data", "folderUID", "ruleGroup", "for", "noDataState", "execErrState")
        missing = [k for k in required if not rule.get(k)]
        if missing:
            return f"invalid alert rule: missing {missing}"
        if rule["folderUID"] not in self.folders:
            return "invalid alert rule: folder does not exist"
        if rule["condition"] not in {q["refId"] for q in rule["data"]}:
            return "invalid alert rule: condition is not a query refId"
        if rule["noDataState"] not in ("NoData", "Alerting", "OK") or rule["execErrState"] not in (
            "Error",
            "Alerting",
            "OK",
        ):
            return "invalid alert rule: unknown state"
        for q in rule["data"]:
            if q["datasourceUid"] not in (*self.datasources, "__expr__"):
                return f"invalid alert rule: data source {q['datasourceUid']} not found"
        return None

    def _get_rule(self, r: Request, uid: str) -> tuple[int, Any]:
        return (200, self.rules[uid]) if uid in self.rules else (404, "")

    def _create_rule(self, r: Request) -> tuple[int, Any]:
        problem = self._invalid_rule(r.body)
        if problem:
            return 400, {"message": problem}
        if r.body["uid"] in self.rules:
            return 409, {"message": "a rule with this uid already exists"}
        self.rules[r.body["uid"]] = {**r.body, "id": len(self.rules) + 1, "provenance": "api"}
        return 201, self.rules[r.body["uid"]]

    def _update_rule(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.rules:
            return 404, ""
        problem = self._invalid_rule(r.body)
        if problem:
            return 400, {"message": problem}
        self.rules[uid] = {**r.body, "uid": uid, "id": self.rules[uid]["id"], "provenance": "api"}
        return 200, self.rules[uid]

    def _list_contact_points(self, r: Request) -> tuple[int, Any]:
        name = r.query.get("name", [None])[0]
        return 200, [p for p in self.contact_points.values() if name in (None, p["name"])]

    def _create_contact_point(self, r: Request) -> tuple[int, Any]:
        uid = r.body.get("uid") or f"cp{len(self.contact_points) + 1}"
        if uid in self.contact_points:
            return 400, {"message": "contact point with this uid already exists"}
        self.contact_points[uid] = {**r.body, "uid": uid}
        return 202, self.contact_points[uid]

    def _update_contact_point(self, r: Request, uid: str) -> tuple[int, Any]:
        if uid not in self.contact_points:
            return 404, {"message": "contact point not found"}
        self.contact_points[uid] = {**r.body, "uid": uid}
        return 202, {"message": "contactpoint updated"}

    def _set_policy(self, r: Request) -> tuple[int, Any]:
        names = {p["name"] for p in self.contact_points.values()}
        receivers = [r.body["receiver"], *(route["receiver"] for route in r.body.get("routes", []))]
        if any(name not in names for name in receivers):
            return 400, {"message": "invalid object specification: receiver does not exist"}
        self.policy = r.body
        return 202, {"message": "policies updated"}

    def calls(self, since: int = 0) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests[since:]]


@pytest.fixture
def grafana() -> Iterator[tuple[Grafana, str]]:
    """The stand-in on a loopback port; yields the state and its URL."""
    state = Grafana(TOKEN)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            status, body = state.answer(request)
            data = json.dumps(body).encode() if body != "" else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------ grafana-client's own environment


def _grafana_venv() -> Path:
    """A venv with grafana-client, seeing this environment's packages; made once per requirement and
    Python version under the user's cache directory (the first run installs from PyPI, ~10 s)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetwatch"
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    venv = cache / f"grafana-client-venv-{version}"
    marker = venv / "fleetwatch-requirement.txt"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"grafana-client-venv-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == GRAFANA_CLIENT):
            subprocess.run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            result = subprocess.run([*pip, GRAFANA_CLIENT], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.fail(f"cannot install {GRAFANA_CLIENT} into {venv}:\n{result.stderr}", pytrace=False)
            marker.write_text(GRAFANA_CLIENT)
    return venv


@pytest.fixture(scope="module")
def venv_python() -> Path:
    return _grafana_venv() / "bin" / "python"


def run_push(python: Path, url: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    command = [str(python), "-m", "fleetwatch", "grafana", "push", "--url", url, "--token", token, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "FLEETWATCH_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


PUSH_ARGS = ("--datasource-url", STORE_URL, "--webhook-url", WEBHOOK, "--with-policy")


def test_push_creates_everything_then_updates_in_place(grafana: tuple[Grafana, str], venv_python: Path) -> None:
    state, url = grafana
    first = run_push(venv_python, url, *PUSH_ARGS)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:2] == [f"created data source {DATASOURCE_UID}", "created folder fleetwatch"]
    assert first.stdout.count("created alert rule") == 3 and "created contact point" in first.stdout
    n_first = len(state.requests)
    creates = [c for c in state.calls() if c[0] == "POST" and "dashboards" not in c[1]]
    assert sorted(creates) == sorted(
        [("POST", "/api/datasources"), ("POST", "/api/folders")]
        + [("POST", "/api/v1/provisioning/alert-rules")] * 3
        + [("POST", "/api/v1/provisioning/contact-points")]
    )

    second = run_push(venv_python, url, *PUSH_ARGS)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and second.stdout.count("updated") == 6
    again = state.calls(n_first)
    assert ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}") in again
    assert again.count(("POST", "/api/dashboards/db")) == len(DASHBOARDS)
    assert sum(1 for m, p in again if m == "PUT" and p.startswith("/api/v1/provisioning/alert-rules/")) == 3
    assert ("PUT", "/api/v1/provisioning/contact-points/fleetwatch-webhook") in again
    assert not [c for c in again if c[0] == "POST" and "dashboards" not in c[1]], "the second push created something"

    assert len(state.datasources) == 1 and len(state.folders) == 1 and len(state.contact_points) == 1
    assert len(state.rules) == 3 and len(state.dashboards) == len(DASHBOARDS)
    assert {d["dashboard"]["version"] for d in state.dashboards.values()} == {2}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in state.requests)


def test_push_sends_the_committed_dashboards_and_the_right_objects(
    grafana: tuple[Grafana, str], venv_python: Path
) -> None:
    state, url = grafana
    result = run_push(venv_python, url, *PUSH_ARGS, "--folder", "Fleet Ops")
    assert result.returncode == 0, result.stderr
    (source,) = state.datasources.values()
    assert source["url"] == "http://influxdb:8086" and source["jsonData"]["dbName"] == "fleet"
    assert source["user"] == "grafana" and source["secureJsonFields"] == {"password": True}
    sent = next(r.body for r in state.requests if r.path == "/api/datasources")
    assert sent["secureJsonData"] == {"password": "s3cret"}
    assert (
        state.folders == {"fleet-ops": state.folders["fleet-ops"]}
        and state.folders["fleet-ops"]["title"] == "Fleet Ops"
    )
    for name in DASHBOARDS:
        committed = json.loads((REPO / "dashboards" / name).read_text())
        saved = state.dashboards[committed["uid"]]
        assert saved["folderUid"] == "fleet-ops"
        assert {k: v for k, v in saved["dashboard"].items() if k not in ("id", "version")} == {
            k: v for k, v in committed.items() if k != "version"
        }
    expected = {r["uid"]: r for r in alert_rules("fleet-ops")}
    assert {uid: {k: rule[k] for k in expected[uid]} for uid, rule in state.rules.items()} == expected
    (point,) = state.contact_points.values()
    assert point["name"] == CONTACT_POINT and point["settings"]["url"] == WEBHOOK
    assert state.policy is not None and state.policy["receiver"] == CONTACT_POINT


def test_push_reports_grafana_refusals(grafana: tuple[Grafana, str], venv_python: Path) -> None:
    state, url = grafana
    refused = run_push(venv_python, url, *PUSH_ARGS, token="wrong")
    assert refused.returncode == 1 and "Grafana answered 401" in refused.stderr
    assert not state.datasources
    asked_before = len(state.requests)
    no_source = run_push(venv_python, url, "--webhook-url", WEBHOOK)
    assert no_source.returncode == 1 and "Grafana answered 400" in no_source.stderr
    assert "invalid alert rule: data source fleetwatch-influxdb not found" in no_source.stderr
    assert not state.datasources
    assert not any(r.path.startswith("/api/datasources") for r in state.requests[asked_before:])
    unreachable = run_push(venv_python, "http://127.0.0.1:9", *PUSH_ARGS)
    assert unreachable.returncode == 1 and "cannot reach Grafana" in unreachable.stderr


def test_grafana_client_stays_in_its_own_environment(venv_python: Path) -> None:
    """Inside the push venv urllib3 is urllib3-future; this environment keeps the real urllib3, and
    requests and influxdb-client here still run on it."""
    probe = "import urllib3, importlib.metadata as m; print(urllib3.__file__); print(m.version('urllib3'))"
    inside = subprocess.run([str(venv_python), "-c", probe], capture_output=True, text=True, check=True)
    assert inside.stdout.splitlines()[0].startswith(str(venv_python.parents[1]))
    outside = subprocess.run(
        [sys.executable, "-c", probe + "; import requests, influxdb_client; print(requests.adapters.HTTPAdapter)"],
        capture_output=True,
        text=True,
        check=True,
    )
    path, _version, _adapter = outside.stdout.splitlines()
    assert not path.startswith(str(venv_python.parents[1])) and "urllib3_future" not in path
    listing = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listing.stdout)}
    assert not names & {"urllib3-future", "niquests", "grafana-client"}


def test_push_needs_grafana_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grafana_client", None)
    with pytest.raises(PushError, match=re.escape("pip install 'fleetwatch[grafana]'")):
        push(PushTarget("http://grafana:3000", TOKEN), datasource_from_store_url(STORE_URL))


def test_data_source_from_the_store_url() -> None:
    v1 = datasource_from_store_url("influxdb://ops:pw@db.example:8086/fleet?tls=1")
    assert (v1["url"], v1["user"], v1["jsonData"]["dbName"], v1["secureJsonData"]) == (
        "https://db.example:8086",
        "ops",
        "fleet",
        {"password": "pw"},
    )
    v2 = datasource_from_store_url("influxdb://db.example:8086/fleet?token=abc")
    assert v2["jsonData"]["httpHeaderName1"] == "Authorization" and "user" not in v2
    assert v2["secureJsonData"] == {"httpHeaderValue1": "Token abc"}
    with pytest.raises(ValueError):
        datasource_from_store_url("http://db.example:8086/fleet")


def test_folder_uid_from_title() -> None:
    assert [folder_uid(t) for t in ("fleetwatch", "Fleet Ops / EU", "???")] == [
        "fleetwatch",
        "fleet-ops-eu",
        "fleetwatch",
    ]
