"""What each receiver kind gets, pure: a notification in, a request body out; then, at send time, the URL
and headers (credentials, signature, idempotency key).

Kinds: `slack` (incoming webhook: Block Kit `blocks` plus a fallback `text`), `teams` (workflow webhook: an
Adaptive Card in the `attachments` envelope), `webhook` (the versioned JSON schema below, signed),
`github_dispatch` (`repository_dispatch` with the retraining payload as `client_payload`), and `http` (any
endpoint, body from a sandboxed Jinja2 template). docs/alerting.md shows each payload.

The body is built once, when the notification is queued, and stored; retries send the same bytes with the
same `Idempotency-Key`. Only the signature timestamp changes per attempt.

>>> signature("s3cret", b'{"a":1}', 1795000000)
't=1795000000,v1=66ef648639d5226245f765ca0416c5549c32aab329ad5708610bb4d8a1ac84e5'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from fleetwatch import __version__
from fleetwatch.actions.alerts import Item, Notification
from fleetwatch.findings import SEVERITY_RANK

if TYPE_CHECKING:
    from fleetwatch.actions.config import ReceiverConfig

SCHEMA_VERSION = 1
GITHUB_CLIENT_PAYLOAD_MAX_KEYS = 10
LISTED_MAX = 20
RETRAIN_DEVICES_MAX = 100
SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
GITHUB_API_VERSION = "2022-11-28"
_SLACK_EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "resolved": ":large_green_circle:"}
_TEAMS_COLOR = {"critical": "Attention", "warning": "Warning", "resolved": "Good"}


class RenderError(ValueError):
    """A body could not be built (a template failed); the message goes straight to dead letters."""


@dataclass(frozen=True)
class Body:
    """A request body, built once per (notification, receiver)."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class Request:
    """Method, URL and headers of one attempt. The URL and headers may hold secrets: never log them."""

    method: str
    url: str
    headers: dict[str, str]


def template_environment() -> SandboxedEnvironment:
    """The Jinja2 environment of `http` receivers: sandboxed, and undefined names are errors."""
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def render(
    notification: Notification, receiver: ReceiverConfig, field_data: Mapping[str, Any] | None = None
) -> Body | None:
    """The body `receiver` gets for `notification`, or None when it takes no part in it (retraining
    receivers only take new or escalated drift). `field_data` is what the snippet dataset holds for the
    drift (see `retrain_payload`). Raises RenderError when a template fails."""
    if receiver.kind == "slack":
        return _json_body(slack_message(notification))
    if receiver.kind == "teams":
        return _json_body(teams_message(notification))
    retrain = retrain_payload(notification, field_data)
    if receiver.kind == "github_dispatch":
        if retrain is None:
            return None
        return _json_body({"event_type": receiver.event_type, "client_payload": retrain})
    if receiver.payload == "retrain" and retrain is None:
        return None
    if receiver.kind == "webhook":
        if receiver.payload == "retrain":
            return _json_body(_envelope(notification, "retrain") | {"retrain": retrain})
        return _json_body(alert_document(notification))
    try:
        text = (
            template_environment()
            .from_string(receiver.body_template)
            .render(notification=alert_document(notification), retrain=retrain)
        )
    except Exception as exc:  # a user template may raise anything; it must not stop the alert decision
        raise RenderError(f"receiver {receiver.name}: body_template failed: {type(exc).__name__}: {exc}") from exc
    return Body(text.encode("utf-8"), receiver.content_type)


def request_for(receiver: ReceiverConfig, body: Body, idempotency_key: str, now: int) -> Request:
    """Method, URL and headers of one attempt at `now` (unix seconds; the signature timestamp)."""
    headers = {
        "Content-Type": body.content_type,
        "User-Agent": f"fleetwatch/{__version__}",
        "Idempotency-Key": idempotency_key,
    }
    if receiver.kind in ("slack", "teams"):
        return Request("POST", receiver.url.get_secret_value(), headers)
    if receiver.kind == "github_dispatch":
        headers |= {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {receiver.token.get_secret_value()}",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
        }
        return Request("POST", f"{receiver.api_url.rstrip('/')}/repos/{receiver.repository}/dispatches", headers)
    headers |= receiver.headers
    if receiver.kind == "webhook":
        if receiver.secret is not None:
            headers["X-Fleetwatch-Signature"] = signature(receiver.secret.get_secret_value(), body.data, now)
        return Request("POST", receiver.url, headers)
    if receiver.token is not None:
        headers["Authorization"] = f"Bearer {receiver.token.get_secret_value()}"
    return Request(receiver.method, receiver.url, headers)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`: the X-Fleetwatch-Signature header."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def secrets_of(receiver: ReceiverConfig) -> list[str]:
    """Strings that must never reach a log or an error message: URLs, their paths and queries, tokens."""
    url = receiver.url.get_secret_value() if receiver.kind in ("slack", "teams") else getattr(receiver, "url", "")
    parts = urlsplit(url)
    values = [url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query, parts.password or ""]
    for name in ("secret", "token"):
        value = getattr(receiver, name, None)
        if value is not None:
            values.append(value.get_secret_value())
    return sorted({v for v in values if len(v) > 1}, key=len, reverse=True)


def safe_target(receiver: ReceiverConfig) -> str:
    """Where a receiver posts, fit for logs: scheme, host and port only."""
    if receiver.kind == "github_dispatch":
        url = receiver.api_url
    elif receiver.kind in ("slack", "teams"):
        url = receiver.url.get_secret_value()
    else:
        url = receiver.url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


def alert_document(notification: Notification) -> dict[str, Any]:
    """The generic webhook body (schema version 1, type "alert"); also what `http` templates see."""
    return _envelope(notification, "alert") | {
        "status": notification.status,
        "severity": notification.severity,
        "title": notification.title,
        "group": {"label": notification.group, "model_id": notification.model_id},
        "route": notification.route,
        "alerts": [
            {
                "id": i.alert.id,
                "reason": i.reason,
                "scope": i.alert.scope,
                "key": i.alert.key,
                "signal": i.alert.signal,
                "severity": i.alert.severity,
                "cohorts": list(i.alert.cohorts),
                "opened_at": i.alert.opened_at,
                "first_window_start": i.alert.first_window_start,
                "finding": i.alert.finding.to_json(),
            }
            for i in notification.items
        ],
    }


def drifting_items(notification: Notification) -> list[Item]:
    """The members of a notification that report new or escalated drift (what retraining is about)."""
    return [i for i in notification.items if notification.status == "firing" and i.reason in ("new", "escalated")]


def drift_start(notification: Notification) -> int | None:
    """When the new or escalated drift of a notification began (its oldest alert's first window), or None."""
    items = drifting_items(notification)
    return min(i.alert.first_window_start for i in items) if items else None


def retrain_payload(notification: Notification, field_data: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What a retraining pipeline needs, in at most 10 top-level keys (GitHub's client_payload limit): the
    model, the cohort, the signals with their effect sizes, the time range, the baseline, the devices, and
    under `data.snippets` the field data: the snippets of the model and cohort collected since the drift
    began, as the export command that fetches them plus, when the caller knows them (`field_data`, from
    the snippet index), their count, how many devices sent them and the dataset directory. None unless the
    notification reports new or escalated drift."""
    items = drifting_items(notification)
    since = drift_start(notification)
    if since is None:
        return None
    until = max(i.alert.finding.window_end for i in items)
    devices = sorted({i.alert.key for i in items if i.alert.scope == "device"})
    baselines = Counter(i.alert.finding.baseline_version for i in items if i.alert.finding.baseline_version)
    return {
        "version": SCHEMA_VERSION,
        "id": notification.id,
        "model_id": notification.model_id,
        "cohort": notification.group,
        "severity": max((i.alert.severity for i in items), key=SEVERITY_RANK.__getitem__),
        "signals": _signal_effects(items),
        "time_range": {"start": since, "end": until},
        "baseline_version": baselines.most_common(1)[0][0] if baselines else None,
        "devices": {"count": len(devices), "ids": devices[:RETRAIN_DEVICES_MAX]},
        "data": {
            "snippets": _snippets_query(notification.model_id, notification.group, since, until)
            | dict(field_data or {})
        },
    }


def slack_message(notification: Notification) -> dict[str, Any]:
    """Slack incoming webhook: a header, the facts as fields, one line per alert, a context line; `text`
    is the plain fallback for notifications."""
    label = _label(notification)
    title = f"{label}: {notification.title}"
    lines = [f"• `{_escape(key)}` {_escape(text)}" for key, text in _item_lines(notification)]
    return {
        "text": _escape(f"[{label}] {notification.title}"),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _clip(f"{_SLACK_EMOJI[_tone(notification)]} {title}", SLACK_HEADER_MAX),
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"} for name, value in _facts(notification)
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip("\n".join(lines), SLACK_TEXT_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(_footer(notification))}]},
        ],
    }


def teams_message(notification: Notification) -> dict[str, Any]:
    """Teams workflow webhook: a message whose one attachment is an Adaptive Card (1.4)."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": f"{_label(notification)}: {notification.title}",
                "weight": "Bolder",
                "size": "Medium",
                "color": _TEAMS_COLOR[_tone(notification)],
                "wrap": True,
            },
            {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in _facts(notification)]},
            {
                "type": "FactSet",
                "separator": True,
                "facts": [{"title": key, "value": text} for key, text in _item_lines(notification)],
            },
            {"type": "TextBlock", "text": _footer(notification), "isSubtle": True, "size": "Small", "wrap": True},
        ],
    }
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


def _envelope(notification: Notification, kind: str) -> dict[str, Any]:
    return {"version": SCHEMA_VERSION, "type": kind, "id": notification.id, "created_at": notification.created_at}


def _json_body(document: dict[str, Any]) -> Body:
    return Body(json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8"), "application/json")


def _signal_effects(items: list[Item]) -> list[dict[str, Any]]:
    by_signal: dict[str, list[Item]] = {}
    for item in items:
        by_signal.setdefault(item.alert.signal, []).append(item)
    out = []
    for signal, members in by_signal.items():
        effects = [m.alert.finding.effect for m in members]
        out.append(
            {
                "signal": signal,
                "effect_name": members[0].alert.finding.effect_name,
                "effect_median": round(statistics.median(effects), 4),
                "effect_max": round(max(effects, key=abs), 4),
                "alerts": len(members),
                "severity": max((m.alert.severity for m in members), key=SEVERITY_RANK.__getitem__),
            }
        )
    return out


def _snippets_query(model_id: int | None, cohort: str, since: int, until: int) -> dict[str, Any]:
    """The export command of the field data: the model's and cohort's snippets collected since the drift
    began (no upper bound: snippets requested because of this alert arrive after `until`)."""
    words = ["fleetwatch", "snippets", "export"]
    if model_id is not None:
        words += ["--model-id", str(model_id)]
    if cohort != "fleet":
        words += ["--cohort", cohort]
    words += ["--since", _iso(since), "--out", f"snippets-{_iso(since).replace(':', '')}"]
    return {"cli": shlex.join(words), "since": since, "until": until}


def _facts(notification: Notification) -> list[tuple[str, str]]:
    findings = [i.alert.finding for i in notification.items]
    window = f"{_iso(min(f.window_start for f in findings))} – {_iso(max(f.window_end for f in findings))}"
    baselines = sorted({f.baseline_version for f in findings if f.baseline_version})
    return [
        ("Severity", notification.severity),
        ("Group", notification.group),
        ("Signals", ", ".join(notification.signals)),
        ("Model", str(notification.model_id) if notification.model_id is not None else "–"),
        ("Window", window),
        ("Baseline", ", ".join(baselines) or "–"),
    ]


def _item_lines(notification: Notification) -> list[tuple[str, str]]:
    """(alert key, one-line evidence) for the first LISTED_MAX members, then how many more."""
    lines = []
    for item in notification.items[:LISTED_MAX]:
        a, f = item.alert, item.alert.finding
        if notification.status == "resolved":
            lines.append((a.key, f"{a.signal} cleared (was {a.notified_severity})"))
        else:
            lines.append(
                (a.key, f"{a.signal} {f.effect_name}={f.effect:+.2f} q={f.q:.2g} {a.severity} ({item.reason})")
            )
    if len(notification.items) > LISTED_MAX:
        lines.append(("…", f"and {len(notification.items) - LISTED_MAX} more"))
    return lines


def _tone(notification: Notification) -> str:
    return "resolved" if notification.status == "resolved" else notification.severity


def _label(notification: Notification) -> str:
    return "RESOLVED" if notification.status == "resolved" else notification.severity.upper()


def _footer(notification: Notification) -> str:
    return f"fleetwatch · route {notification.route} · notification {notification.id}"


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _escape(text: str) -> str:
    """Slack treats & < > as markup (`<!channel>` would ping everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
