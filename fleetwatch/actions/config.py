"""The `[alerts]` configuration section: receivers, routes, rules, cooldown, grouping and delivery deadlines.

The root configuration embeds `AlertsConfig` as `alerts`. In TOML:

    [alerts]
    group_by = ["site"]
    cooldown_minutes = 240

    [[alerts.receivers]]
    name = "ops-slack"
    kind = "slack"
    url_file = "/run/credentials/fleetwatch/slack_url"   # or url = "https://hooks.slack.com/services/..."

    [[alerts.routes]]
    cohort = "site=*"
    receivers = ["ops-slack"]

Secrets (`url` of Slack and Teams receivers, `secret`, `token`) are `SecretStr`: they print masked and never
reach the logs. Each may instead be read from a file at load time: `<name>_file = "/path"`.

>>> cfg = AlertsConfig.model_validate({"receivers": [{"name": "s", "kind": "slack", "url": "https://x/y"}],
...                                    "routes": [{"receivers": ["s"]}]})
>>> cfg.receiver("s").url
SecretStr('**********')
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from jinja2 import TemplateSyntaxError
from pydantic import Field, SecretStr, field_validator, model_validator

from fleetwatch.actions.receivers import template_environment
from fleetwatch.configbase import Section

AlertSeverity = Literal["warning", "critical"]


class AlertsModel(Section):
    """Base of the alerts models: unknown keys are errors, and `<secret>_file` reads a secret from a file."""


class _ReceiverBase(AlertsModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$", description="Unique name that routes refer to (letters, digits, _ . -)."
    )


class SlackReceiver(_ReceiverBase):
    kind: Literal["slack"] = Field(description="Slack incoming webhook: Block Kit `blocks` plus a fallback `text`.")
    url: SecretStr = Field(description="Incoming webhook URL (https://hooks.slack.com/services/...); a secret.")


class TeamsReceiver(_ReceiverBase):
    kind: Literal["teams"] = Field(
        description="Microsoft Teams workflow webhook ('Post to a channel when a webhook request is received'): "
        "an Adaptive Card in the `attachments` envelope."
    )
    url: SecretStr = Field(description="Workflow URL (its `sig` parameter is the credential); a secret.")


class WebhookReceiver(_ReceiverBase):
    kind: Literal["webhook"] = Field(
        description="Generic JSON webhook (schema in docs/alerting.md), signed with X-Fleetwatch-Signature."
    )
    url: str = Field(description="Endpoint URL (http:// or https://).")
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of X-Fleetwatch-Signature. Unset: requests are not signed."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (not secret).")
    payload: Literal["alert", "retrain"] = Field(
        "alert", description="`alert`: every notification; `retrain`: the retraining payload, on new or escalated."
    )


class GithubDispatchReceiver(_ReceiverBase):
    kind: Literal["github_dispatch"] = Field(
        description="GitHub repository_dispatch that starts a retraining workflow (payload: the retraining payload)."
    )
    repository: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$", description="owner/repo that receives the dispatch."
    )
    token: SecretStr = Field(description="Token with contents:write on the repository; a secret.")
    event_type: str = Field(
        "fleetwatch-retrain", min_length=1, max_length=100, description="`on: repository_dispatch: types:` value."
    )
    api_url: str = Field("https://api.github.com", description="API base URL (GitHub Enterprise: https://HOST/api/v3).")


class HttpReceiver(_ReceiverBase):
    kind: Literal["http"] = Field(description="Any HTTP endpoint; the body is a sandboxed Jinja2 template.")
    url: str = Field(description="Endpoint URL (http:// or https://).")
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method.")
    body_template: str = Field(
        description="Jinja2 template of the body (sandboxed); sees `notification` (the webhook schema) and "
        "`retrain` (the retraining payload or none). E.g. '{{ notification | tojson }}'."
    )
    content_type: str = Field("application/json", description="Content-Type of the rendered body.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (not secret).")
    token: SecretStr | None = Field(None, description="Sent as `Authorization: Bearer <token>`; a secret.")
    payload: Literal["alert", "retrain"] = Field(
        "alert", description="`alert`: every notification; `retrain`: only new or escalated drift (retraining)."
    )

    @field_validator("body_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            template_environment().parse(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"not a valid Jinja2 template (line {exc.lineno}): {exc.message}") from None
        return value


ReceiverConfig = SlackReceiver | TeamsReceiver | WebhookReceiver | GithubDispatchReceiver | HttpReceiver
Receiver = Annotated[ReceiverConfig, Field(discriminator="kind")]


class Rule(AlertsModel):
    scope: str = Field("*", description="Glob over the finding scope (device, cohort, fleet).")
    signal: str = Field("*", description="Glob over the signal name (e.g. input_mean_*).")
    min_severity: Literal["warning", "critical", "never"] = Field(
        "warning", description="Lowest severity that opens an alert; `never` mutes the matching findings."
    )


class Route(AlertsModel):
    name: str = Field("", description="Shown in messages and logs (default: route-<index>).")
    scope: str = Field("*", description="Glob over the alert scope (device, cohort, fleet).")
    signal: str = Field("*", description="Glob over the signal name.")
    cohort: str = Field(
        "*", description="Glob over the alert's cohorts (site=north, model_id=..., fleet); `*` matches all."
    )
    min_severity: AlertSeverity = Field("warning", description="Only alerts at least this severe take the route.")
    receivers: list[str] = Field(min_length=1, description="Receiver names that get the route's notifications.")
    continue_matching: bool = Field(
        False, description="Also try the routes after this one (default: the first matching route wins)."
    )


class DeliveryConfig(AlertsModel):
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP/TLS connect timeout of each request.")
    read_timeout_s: float = Field(10.0, gt=0, description="Time to wait for the response of each request.")
    backoff_base_s: float = Field(2.0, gt=0, description="First retry waits up to this long (full jitter).")
    backoff_max_s: float = Field(600.0, gt=0, description="Longest wait between retries (cap of the doubling).")
    deadline_s: float = Field(
        6 * 3600.0, gt=0, description="A message not delivered this long after it was queued goes to dead letters."
    )
    poll_interval_s: float = Field(5.0, gt=0, description="How often the worker looks for due messages.")
    keep_sent_days: float = Field(7.0, gt=0, description="Delivered messages are kept this long (for the CLI).")


class AlertsConfig(AlertsModel):
    enabled: bool = Field(True, description="Turn findings into alerts and deliver them.")
    receivers: list[Receiver] = Field(default_factory=list, description="Where notifications go (see `kind`).")
    routes: list[Route] = Field(
        default_factory=list, description="Which alerts go to which receivers, tried in order (first match wins)."
    )
    rules: list[Rule] = Field(
        default_factory=list, description="Per scope/signal minimum severity, tried in order (first match wins)."
    )
    min_severity: AlertSeverity = Field("warning", description="Minimum severity when no rule matches.")
    group_by: list[str] = Field(
        default_factory=list,
        description="Inventory tags that group device alerts into one message (first tag a device has wins, "
        "e.g. ['site'] -> '12 devices at site=north'); devices without them group as `fleet`.",
    )
    group_window_s: float = Field(
        60.0, ge=0, description="Wait this long after the first alert of a group for more before notifying."
    )
    cooldown_minutes: float = Field(
        240.0, gt=0, description="No repeat notification of an open alert within this time unless it escalates."
    )
    reminders: bool = Field(True, description="Re-notify a still-open alert once per cooldown (false: never).")
    resolve_after: int = Field(
        1, ge=1, description="Resolve an alert after this many consecutive clear evaluations of its signal."
    )
    send_resolved: bool = Field(True, description="Send a notification when a notified alert resolves.")
    keep_resolved_days: float = Field(30.0, gt=0, description="Resolved alerts are kept this long (history).")
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig, description="Retries, timeouts, deadline.")

    @field_validator("group_by")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", tag):
                raise ValueError(f"expected inventory tag names (e.g. site), got {tag!r}")
        return value

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"receivers: duplicate names {duplicates}")
        for index, route in enumerate(self.routes):
            if not route.name:
                route.name = f"route-{index}"
            unknown = [r for r in route.receivers if r not in names]
            if unknown:
                raise ValueError(f"routes[{index}].receivers: unknown receivers {unknown} (known: {names})")
        return self

    def receiver(self, name: str) -> ReceiverConfig | None:
        """The receiver called `name`, or None when the configuration no longer has it."""
        return next((r for r in self.receivers if r.name == name), None)
