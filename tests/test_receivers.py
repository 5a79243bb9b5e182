"""Payload builders per receiver kind (pure): exact shapes, limits, signatures, the sandboxed template."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from fleetwatch.actions.alerts import Notification, evaluate
from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.receivers import (
    ADAPTIVE_CARD_CONTENT_TYPE,
    GITHUB_CLIENT_PAYLOAD_MAX_KEYS,
    RenderError,
    render,
    request_for,
    retrain_payload,
    safe_target,
    secrets_of,
    signature,
)
from fleetwatch.findings import Finding

SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
TEAMS_URL = "https://prod-01.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=TEAMSSIG"
T0 = 1_795_000_000


def config(**extra: Any) -> AlertsConfig:
    receivers = [
        {"name": "slack", "kind": "slack", "url": SLACK_URL},
        {"name": "teams", "kind": "teams", "url": TEAMS_URL},
        {
            "name": "hook",
            "kind": "webhook",
            "url": "https://ml.example/hook",
            "secret": "whsec",
            "headers": {"X-Team": "ml"},
        },
        {"name": "retrain-hook", "kind": "webhook", "url": "https://ml.example/retrain", "payload": "retrain"},
        {"name": "gh", "kind": "github_dispatch", "repository": "acme/models", "token": "ghp_TOKEN"},
        {
            "name": "tpl",
            "kind": "http",
            "url": "https://pager.example/v1/events",
            "method": "PUT",
            "token": "PAGERTOKEN",
            "body_template": '{"summary": {{ notification.title | tojson }}, "n": {{ notification.alerts | length }}}',
        },
    ]
    names = [r["name"] for r in receivers]
    return AlertsConfig.model_validate(
        {"receivers": receivers, "routes": [{"receivers": names}], "group_by": ["site"], "group_window_s": 0} | extra
    )


def finding(
    key: str, severity: str = "critical", signal: str = "input_mean_0", effect: float = 1.3, **kw: Any
) -> Finding:
    fields = dict(
        scope="device",
        key=key,
        signal=signal,
        statistic=5.1,
        p=3e-7,
        q=2e-4,
        effect=effect,
        effect_name="z",
        severity=severity,
        baseline_version="m42-v1",
        window_start=T0,
        window_end=T0 + 3600,
        model_id=42,
    )
    return Finding(**(fields | kw))


def notification(
    findings: list[Finding], cfg: AlertsConfig | None = None, sites: dict[str, str] | None = None
) -> Notification:
    inventory = {f.key: {"site": (sites or {}).get(f.key, "north")} for f in findings}
    decision = evaluate(findings, [], [], cfg or config(), now=T0 + 3700.0, inventory=inventory)
    assert len(decision.notifications) == 1
    return decision.notifications[0]


def body(n: Notification, receiver: str, cfg: AlertsConfig | None = None) -> dict[str, Any]:
    cfg = cfg or config()
    built = render(n, cfg.receiver(receiver))
    assert built is not None and built.content_type == "application/json"
    return json.loads(built.data)


def test_slack_incoming_webhook_block_kit_with_fallback_text() -> None:
    n = notification([finding(f"dev-{i:02d}", effect=1.0 + i / 10) for i in range(12)])
    message = body(n, "slack")
    assert set(message) == {"text", "blocks"}
    assert message["text"] == "[CRITICAL] 12 devices at site=north drifted on input_mean_0"
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]
    header = message["blocks"][0]["text"]
    assert header == {
        "type": "plain_text",
        "text": ":red_circle: CRITICAL: 12 devices at site=north drifted on input_mean_0",
        "emoji": True,
    }
    fields = message["blocks"][1]["fields"]
    assert len(fields) <= 10 and all(f["type"] == "mrkdwn" for f in fields)
    assert {"type": "mrkdwn", "text": "*Group*\nsite=north"} in fields
    assert {"type": "mrkdwn", "text": "*Window*\n2026-11-18T11:06:40Z – 2026-11-18T12:06:40Z"} in fields
    lines = message["blocks"][2]["text"]["text"].split("\n")
    assert lines[0] == "• `dev-00` input_mean_0 z=+1.00 q=0.0002 critical (new)"
    assert len(lines) == 12
    assert message["blocks"][3]["elements"][0]["text"] == f"fleetwatch · route route-0 · notification {n.id}"


def test_slack_escapes_markup_and_respects_block_limits() -> None:
    n = notification([finding("<!channel>&co")] + [finding(f"dev-{i:03d}") for i in range(150)])
    message = body(n, "slack")
    assert "<!channel>" not in json.dumps(message)
    assert "• `&lt;!channel&gt;&amp;co`" in message["blocks"][2]["text"]["text"]
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    assert len(message["blocks"][2]["text"]["text"]) <= 3000
    assert message["blocks"][2]["text"]["text"].endswith("• `…` and 131 more")


def test_teams_workflow_adaptive_card_envelope() -> None:
    n = notification([finding("dev-01", severity="warning")])
    message = body(n, "teams")
    assert message["type"] == "message"
    assert len(message["attachments"]) == 1
    attachment = message["attachments"][0]
    assert attachment["contentType"] == ADAPTIVE_CARD_CONTENT_TYPE == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "WARNING: device dev-01 at site=north drifted on input_mean_0",
        "weight": "Bolder",
        "size": "Medium",
        "color": "Warning",
        "wrap": True,
    }
    assert {"title": "Model", "value": "42"} in card["body"][1]["facts"]
    assert card["body"][2]["facts"] == [{"title": "dev-01", "value": "input_mean_0 z=+1.30 q=0.0002 warning (new)"}]


def test_generic_webhook_document_schema_version_1() -> None:
    n = notification([finding("dev-01"), finding("dev-02", signal="latency_p95", effect=-2.0)])
    document = body(n, "hook")
    assert document["version"] == 1
    assert document["type"] == "alert"
    assert document["id"] == n.id
    assert document["status"] == "firing"
    assert document["severity"] == "critical"
    assert document["title"] == "2 devices at site=north drifted on input_mean_0 and latency_p95"
    assert document["group"] == {"label": "site=north", "model_id": 42}
    assert document["created_at"] == T0 + 3700.0
    first = document["alerts"][0]
    assert set(first) == {
        "id",
        "reason",
        "scope",
        "key",
        "signal",
        "severity",
        "cohorts",
        "opened_at",
        "first_window_start",
        "finding",
    }
    assert first["cohorts"] == ["site=north", "model_id=42"]
    assert first["finding"]["q"] == 2e-4 and first["finding"]["baseline_version"] == "m42-v1"
    assert Finding.from_json(document["alerts"][1]["finding"]).effect == -2.0


def test_github_repository_dispatch_carries_the_retraining_payload_in_ten_keys() -> None:
    n = notification(
        [finding(f"dev-{i}", effect=1.0 + i) for i in range(3)]
        + [finding("dev-9", signal="conf_mean", effect=-0.8, severity="warning")]
    )
    dispatch = body(n, "gh")
    assert set(dispatch) == {"event_type", "client_payload"}
    assert dispatch["event_type"] == "fleetwatch-retrain"
    payload = dispatch["client_payload"]
    assert len(payload) <= GITHUB_CLIENT_PAYLOAD_MAX_KEYS == 10
    assert payload["model_id"] == 42
    assert payload["cohort"] == "site=north"
    assert payload["baseline_version"] == "m42-v1"
    assert payload["time_range"] == {"start": T0, "end": T0 + 3600}
    assert payload["signals"] == [
        {
            "signal": "input_mean_0",
            "effect_name": "z",
            "effect_median": 2.0,
            "effect_max": 3.0,
            "alerts": 3,
            "severity": "critical",
        },
        {
            "signal": "conf_mean",
            "effect_name": "z",
            "effect_median": -0.8,
            "effect_max": -0.8,
            "alerts": 1,
            "severity": "warning",
        },
    ]
    assert payload["devices"] == {"count": 4, "ids": ["dev-0", "dev-1", "dev-2", "dev-9"]}
    assert payload["data"] == {
        "snippets": {
            "cli": "fleetwatch snippets export --model-id 42 --cohort site=north "
            "--since 2026-11-18T11:06:40Z --out snippets-2026-11-18T110640Z",
            "since": T0,
            "until": T0 + 3600,
        }
    }
    field_data = {"count": 12, "devices": 3, "dataset": "/var/lib/fleetwatch/snippets"}
    with_field_data = json.loads(render(n, config().receiver("gh"), field_data).data)["client_payload"]
    assert with_field_data["data"]["snippets"] == payload["data"]["snippets"] | field_data
    assert len(with_field_data) == len(payload)


def test_retraining_receivers_only_take_new_or_escalated_drift() -> None:
    cfg = config(cooldown_minutes=1)
    first = evaluate([finding("dev-1")], [], [], cfg, now=100.0)
    reminder = evaluate([finding("dev-1")], first.changed, [], cfg, now=200.0)
    assert [i.reason for i in reminder.notifications[0].items] == ["reminder"]
    assert retrain_payload(reminder.notifications[0]) is None
    assert render(reminder.notifications[0], cfg.receiver("gh")) is None
    assert render(reminder.notifications[0], cfg.receiver("retrain-hook")) is None
    assert render(reminder.notifications[0], cfg.receiver("hook")) is not None
    resolved = evaluate([finding("dev-1", severity="ok")], reminder.changed, [], cfg, now=300.0)
    assert resolved.notifications[0].status == "resolved"
    assert render(resolved.notifications[0], cfg.receiver("gh")) is None
    document = body(first.notifications[0], "retrain-hook", cfg)
    assert (document["version"], document["type"], document["id"]) == (1, "retrain", first.notifications[0].id)
    assert document["retrain"] == retrain_payload(first.notifications[0])


def test_templated_http_body_is_rendered_in_a_sandbox() -> None:
    n = notification([finding("dev-1")])
    built = render(n, config().receiver("tpl"))
    assert built is not None and built.content_type == "application/json"
    assert json.loads(built.data) == {"summary": "device dev-1 at site=north drifted on input_mean_0", "n": 1}
    escape = config(
        receivers=[
            {
                "name": "t",
                "kind": "http",
                "url": "http://x",
                "body_template": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            }
        ],
        routes=[{"receivers": ["t"]}],
    )
    with pytest.raises(RenderError, match="SecurityError"):
        render(n, escape.receiver("t"))
    typo = config(
        receivers=[{"name": "t", "kind": "http", "url": "http://x", "body_template": "{{ notification.titel }}"}],
        routes=[{"receivers": ["t"]}],
    )
    with pytest.raises(RenderError, match="UndefinedError"):
        render(n, typo.receiver("t"))


def test_requests_per_kind_carry_credentials_and_the_idempotency_key() -> None:
    cfg = config()
    n = notification([finding("dev-1")])
    common = {"Idempotency-Key": "n1.x", "Content-Type": "application/json"}
    slack = request_for(cfg.receiver("slack"), render(n, cfg.receiver("slack")), "n1.x", T0)
    assert (slack.method, slack.url) == ("POST", SLACK_URL)
    assert common.items() <= slack.headers.items()
    gh = request_for(cfg.receiver("gh"), render(n, cfg.receiver("gh")), "n1.x", T0)
    assert (gh.method, gh.url) == ("POST", "https://api.github.com/repos/acme/models/dispatches")
    assert gh.headers["Authorization"] == "Bearer ghp_TOKEN"
    assert gh.headers["Accept"] == "application/vnd.github+json"
    assert gh.headers["X-GitHub-Api-Version"] == "2022-11-28"
    tpl = request_for(cfg.receiver("tpl"), render(n, cfg.receiver("tpl")), "n1.x", T0)
    assert (tpl.method, tpl.url, tpl.headers["Authorization"]) == (
        "PUT",
        "https://pager.example/v1/events",
        "Bearer PAGERTOKEN",
    )
    hook_body = render(n, cfg.receiver("hook"))
    hook = request_for(cfg.receiver("hook"), hook_body, "n1.x", T0)
    assert hook.headers["X-Team"] == "ml"
    t, v1 = (part.split("=", 1)[1] for part in hook.headers["X-Fleetwatch-Signature"].split(","))
    expected = hmac.new(b"whsec", f"{t}.".encode() + hook_body.data, hashlib.sha256).hexdigest()
    assert int(t) == T0 and hmac.compare_digest(v1, expected)
    unsigned = request_for(cfg.receiver("retrain-hook"), hook_body, "n1.x", T0)
    assert "X-Fleetwatch-Signature" not in unsigned.headers


def test_signature_matches_the_documented_construction() -> None:
    body_text = '{"version":1}'
    mac = hmac.new(b"k", f"{T0}.{body_text}".encode(), hashlib.sha256).hexdigest()
    assert signature("k", body_text.encode(), T0) == f"t={T0},v1={mac}"
    assert signature("k", body_text.encode(), T0 + 1) != signature("k", body_text.encode(), T0)


def test_secrets_are_known_and_targets_are_masked() -> None:
    cfg = config()
    assert safe_target(cfg.receiver("slack")) == "https://hooks.slack.com/…"
    assert safe_target(cfg.receiver("teams")) == "https://prod-01.westeurope.logic.azure.com:443/…"
    assert safe_target(cfg.receiver("gh")) == "https://api.github.com/…"
    assert "/services/T000/B000/XXXXSECRETXXXX" in secrets_of(cfg.receiver("slack"))
    assert any("sig=TEAMSSIG" in s for s in secrets_of(cfg.receiver("teams")))
    assert "ghp_TOKEN" in secrets_of(cfg.receiver("gh"))
    assert "whsec" in secrets_of(cfg.receiver("hook"))
    assert "PAGERTOKEN" in secrets_of(cfg.receiver("tpl"))
