"""Grafana provisioning: the data source, the dashboard provider, alert rules, contact point and policy.

One definition of each thing serves both ways of getting it into Grafana: `build` writes the files that
Grafana's file provisioning reads at start-up (dashboards/provisioning/...), and `grafana.push` sends the
same objects through the HTTP API (`api_*` functions give the API's shapes).

Values in the files that differ per installation are environment variables, which Grafana expands when it
reads data source and contact point files (`${FLEETWATCH_INFLUX_URL}` ...). Alert rule queries are not
expanded (Grafana leaves `model` alone), so their `$timeFilter` reaches the data source intact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetwatch.grafana.builder import DATASOURCE_UID, Dashboard, Json
from fleetwatch.grafana.dashboards import DASHBOARDS, drift, fleet_overview

FOLDER_UID = "fleetwatch"
FOLDER_TITLE = "fleetwatch"
RULE_GROUP = "fleetwatch"
CONTACT_POINT = "fleetwatch-webhook"
CONTACT_POINT_UID = "fleetwatch-webhook"
DATASOURCE_NAME = "fleetwatch InfluxDB"
#: Where the dashboard provider reads the JSON files (mount dashboards/ there).
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/fleetwatch"
EXPRESSION = "__expr__"
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def datasource_v1(url: str, database: str, user: str = "", password: str = "") -> Json:
    """InfluxDB 1.x, InfluxQL, user/password (HTTP basic auth of the v1 API)."""
    source: Json = {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": "influxdb",
        "access": "proxy",
        "url": url,
        "user": user,
        "isDefault": False,
        "jsonData": {"version": "InfluxQL", "dbName": database, "httpMode": "POST", "timeInterval": "1m"},
        "secureJsonData": {"password": password},
    }
    return source


def datasource_v2(url: str, database: str, token: str) -> Json:
    """InfluxDB 2.x/3.x through InfluxQL: a DBRP-mapped database, the token sent as `Authorization: Token`."""
    source = datasource_v1(url, database)
    del source["user"]
    source["jsonData"]["httpHeaderName1"] = "Authorization"
    source["secureJsonData"] = {"httpHeaderValue1": f"Token {token}"}
    return source


def dashboard_provider() -> Json:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "fleetwatch",
                "orgId": 1,
                "folder": FOLDER_TITLE,
                "folderUid": FOLDER_UID,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }


def _influx(ref_id: str, query: str, seconds: int) -> Json:
    return {
        "refId": ref_id,
        "relativeTimeRange": {"from": seconds, "to": 0},
        "datasourceUid": DATASOURCE_UID,
        "model": {
            "refId": ref_id,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
            "rawQuery": True,
            "query": query,
            "resultFormat": "time_series",
            "intervalMs": 60000,
            "maxDataPoints": 43200,
        },
    }


def _expression(ref_id: str, model: Json) -> Json:
    return {
        "refId": ref_id,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": EXPRESSION,
        "model": {"refId": ref_id, "datasource": {"type": EXPRESSION, "uid": EXPRESSION}, **model},
    }


def _reduce(ref_id: str, source: str) -> Json:
    return _expression(
        ref_id, {"type": "reduce", "expression": source, "reducer": "last", "settings": {"mode": "dropNN"}}
    )


def _threshold(ref_id: str, source: str, kind: str, value: float) -> Json:
    evaluator = {"type": kind, "params": [value]}
    return _expression(ref_id, {"type": "threshold", "expression": source, "conditions": [{"evaluator": evaluator}]})


def _rule(
    uid: str,
    title: str,
    data: list[Json],
    *,
    no_data: str,
    pending: str,
    severity: str,
    annotations: Json,
    dashboard: Dashboard,
    panel: str,
    folder_uid: str,
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "condition": data[-1]["refId"],
        "data": data,
        "noDataState": no_data,
        "execErrState": "Error",
        "for": pending,
        "labels": {"severity": severity, "service": "fleetwatch"},
        "annotations": annotations,
        "dashboardUid": dashboard.uid,
        "panelId": dashboard.panel_id(panel),
        "isPaused": False,
        "folderUID": folder_uid,
        "ruleGroup": RULE_GROUP,
        "orgID": 1,
    }


def alert_rules(folder_uid: str = FOLDER_UID) -> list[Json]:
    """The Grafana-managed rules in the provisioning API's shape (the file drops folderUID, ruleGroup, orgID).

    The condition is the last query of each rule.
    """
    overview, findings = fleet_overview(), drift()
    ingest = 'SELECT sum("count") FROM "ingest" WHERE $timeFilter AND "outcome" = '
    return [
        _rule(
            "fleetwatch-ingest-stalled",
            "fleetwatch: ingest stalled",
            [_influx("A", ingest + "'stored'", 600), _reduce("B", "A"), _threshold("C", "B", "lt", 1)],
            no_data="Alerting",
            pending="5m",
            severity="critical",
            annotations={
                "summary": "No frame stored in the last 10 minutes",
                "description": "The daemon stored no frames, or stopped writing its ingest counters (no data). Check "
                "the daemon, the broker and the store.",
            },
            dashboard=overview,
            panel="Frames by outcome",
            folder_uid=folder_uid,
        ),
        _rule(
            "fleetwatch-quarantine-spike",
            "fleetwatch: quarantine spike",
            [
                _influx("A", ingest + "'quarantined'", 900),
                _influx("B", ingest + "'received'", 900),
                _reduce("C", "A"),
                _reduce("D", "B"),
                _expression("E", {"type": "math", "expression": "$C >= 10 && $C > 0.01 * $D"}),
            ],
            no_data="OK",
            pending="5m",
            severity="warning",
            annotations={
                "summary": "More than 1% of received frames (and at least 10) quarantined in 15 minutes",
                "description": "See 'Quarantine by reason' on the fleet overview; `fleetwatch quarantine list` shows "
                "the frames and their reasons.",
            },
            dashboard=overview,
            panel="Quarantine by reason",
            folder_uid=folder_uid,
        ),
        _rule(
            "fleetwatch-drift-critical",
            "fleetwatch: critical drift",
            [
                _influx(
                    "A",
                    'SELECT count("q") FROM "findings" WHERE $timeFilter AND "severity" = \'critical\' '
                    'GROUP BY "scope", "key", "signal"',
                    7200,
                ),
                _reduce("B", "A"),
                _threshold("C", "B", "gt", 0),
            ],
            no_data="OK",
            pending="0s",
            severity="critical",
            annotations={
                "summary": "Critical drift: {{ $labels.signal }} on {{ $labels.scope }} {{ $labels.key }}",
                "description": "The drift engine reported a critical finding in the last 2 hours; the drift dashboard "
                "shows its statistic, q-value, effect size and baseline.",
            },
            dashboard=findings,
            panel="Findings (not ok), newest first",
            folder_uid=folder_uid,
        ),
    ]


def contact_point(url: str) -> Json:
    """A webhook contact point, in the provisioning API's shape."""
    return {
        "uid": CONTACT_POINT_UID,
        "name": CONTACT_POINT,
        "type": "webhook",
        "settings": {"url": url, "httpMethod": "POST"},
        "disableResolveMessage": False,
    }


def notification_policy() -> Json:
    """The policy tree: everything to the webhook, critical alerts repeated sooner. Replaces the org's tree."""
    return {
        "receiver": CONTACT_POINT,
        "group_by": ["grafana_folder", "alertname"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {
                "receiver": CONTACT_POINT,
                "object_matchers": [["severity", "=", "critical"]],
                "group_by": ["grafana_folder", "alertname", "scope", "key", "signal"],
                "repeat_interval": "1h",
            }
        ],
    }


def alerting_files(webhook_url: str) -> dict[str, Json]:
    """File name (under provisioning/alerting/) -> content."""
    rules = [{k: v for k, v in rule.items() if k not in ("folderUID", "ruleGroup", "orgID")} for rule in alert_rules()]
    point = contact_point(webhook_url)
    receiver = {k: point[k] for k in ("uid", "type", "settings", "disableResolveMessage")}
    return {
        "rules.yaml": {
            "apiVersion": 1,
            "groups": [{"orgId": 1, "name": RULE_GROUP, "folder": FOLDER_TITLE, "interval": "1m", "rules": rules}],
        },
        "contact-points.yaml": {
            "apiVersion": 1,
            "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": [receiver]}],
        },
        "policies.yaml": {"apiVersion": 1, "policies": [{"orgId": 1, **notification_policy()}]},
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for JSON-like data: strings double-quoted (JSON escapes are YAML escapes), lists of
    scalars and empty containers in flow style. Deterministic, so the committed files diff cleanly."""
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        lines = []
        for key, item in value.items():
            name = key if _PLAIN_KEY.match(key) else json.dumps(key)
            if _is_block(item):
                lines.append(f"{pad}{name}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{name}: {_flow(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and _is_block(value):
        lines = []
        for item in value:
            body = to_yaml(item, indent + 2) if _is_block(item) else " " * (indent + 2) + _flow(item)
            lines.append(f"{pad}- {body[indent + 2 :]}")
        return "\n".join(lines)
    return pad + _flow(value)


def _is_block(value: Any) -> bool:
    """Mappings, and lists of mappings, go in block style; everything else on one line."""
    if isinstance(value, list):
        return any(isinstance(item, Mapping) and item for item in value)
    return isinstance(value, Mapping) and bool(value)


def _flow(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def dump_json(model: Json) -> str:
    """A dashboard file: indented JSON with a final newline."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def build(out: Path) -> list[Path]:
    """Write every dashboard and provisioning file under `out` (the repo's dashboards/); returns the paths."""
    header = "# Generated by `fleetwatch grafana build`; edit fleetwatch/grafana/, not this file.\n"
    v1 = datasource_v1(
        "${FLEETWATCH_INFLUX_URL}",
        "${FLEETWATCH_INFLUX_DB}",
        "${FLEETWATCH_INFLUX_USER}",
        "${FLEETWATCH_INFLUX_PASSWORD}",
    )
    v2 = datasource_v2("${FLEETWATCH_INFLUX_URL}", "${FLEETWATCH_INFLUX_DB}", "${FLEETWATCH_INFLUX_TOKEN}")
    files: dict[str, str] = {name: dump_json(make().to_json()) for name, make in DASHBOARDS.items()}
    yaml_files: dict[str, Json] = {
        "provisioning/datasources/fleetwatch.yaml": {"apiVersion": 1, "datasources": [v1]},
        "provisioning/variants/datasource-influxdb-v2.yaml": {"apiVersion": 1, "datasources": [v2]},
        "provisioning/dashboards/fleetwatch.yaml": dashboard_provider(),
        **{
            f"provisioning/alerting/{name}": content
            for name, content in alerting_files("${FLEETWATCH_ALERT_WEBHOOK_URL}").items()
        },
    }
    files.update({name: header + to_yaml(content) + "\n" for name, content in yaml_files.items()})
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
