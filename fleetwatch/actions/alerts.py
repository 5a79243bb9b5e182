"""Alert decisions, pure: findings and the current alert state in, alert transitions and notifications out.

One alert per (scope, key, signal) is open at a time (dedupe). Each evaluation round:

1. Every finding at or above its rule's minimum severity opens an alert or updates the open one; a clear
   finding ("ok", or below the minimum) counts towards resolving it (after `resolve_after` in a row).
2. Each alert that is not silenced and has something to say becomes *due*: `new` (never notified),
   `escalated` (more severe than last notified; bypasses the cooldown), `reminder` (still open a cooldown
   after the last notification) or `resolved` (resolved after having been notified).
3. Due alerts are grouped by (status, group, model): the group is the device's first `group_by` inventory
   tag (`site=north`), the cohort for cohort alerts, else `fleet`. A group is sent `group_window_s` after
   its first member became due, as one notification per matching route: "12 devices at site=north drifted
   on input_mean_0".

No I/O and no clock: the caller passes `now` and persists what comes out (`fleetwatch.actions.alertdb`).

>>> from fleetwatch.actions.config import AlertsConfig
>>> cfg = AlertsConfig.model_validate({"receivers": [{"name": "s", "kind": "slack", "url": "https://x"}],
...                                    "routes": [{"receivers": ["s"]}], "group_window_s": 0})
>>> f = Finding(scope="device", key="dev-1", signal="input_mean_0", statistic=5.1, p=3e-7, q=2e-4,
...             effect=1.3, effect_name="z", severity="critical", baseline_version="b1",
...             window_start=0, window_end=3600, model_id=7)
>>> decision = evaluate([f], [], [], cfg, now=3900.0)
>>> [n.title for n in decision.notifications]
['device dev-1 in the fleet drifted on input_mean_0']
>>> evaluate([f], decision.changed, [], cfg, now=7500.0).notifications
()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Literal

from fleetwatch.findings import SEVERITY_RANK, Finding

if TYPE_CHECKING:
    from fleetwatch.actions.config import AlertsConfig, Route

Status = Literal["firing", "resolved"]
Reason = Literal["new", "escalated", "reminder", "resolved"]
Inventory = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Alert:
    """One alert: an identity (scope, key, signal) from the moment it fires until it is resolved.

    `finding` is the latest finding that kept it firing. `notified_severity`/`notified_at` say what was
    last sent (None: never). `due_since` is when it started waiting in its group window. `closed` marks a
    resolved alert with nothing left to send (history).
    """

    id: str
    scope: str
    key: str
    signal: str
    status: Status
    severity: str
    finding: Finding
    cohorts: tuple[str, ...]
    group: str
    opened_at: float
    updated_at: float
    first_window_start: int
    clear_count: int = 0
    resolved_at: float | None = None
    notified_severity: str | None = None
    notified_at: float | None = None
    due_since: float | None = None
    closed: bool = False

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.scope, self.key, self.signal)

    @property
    def model_id(self) -> int | None:
        return self.finding.model_id


@dataclass(frozen=True)
class Silence:
    """Mutes matching alerts from `starts_at` until `ends_at`. Patterns are globs; `cohort` matches any of
    the alert's cohorts (a device's inventory tags as `tag=value`, and `model_id=<id>`)."""

    id: int
    scope: str
    key: str
    signal: str
    cohort: str
    starts_at: float
    ends_at: float
    reason: str
    created_by: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, alert: Alert) -> bool:
        return (
            fnmatchcase(alert.scope, self.scope)
            and fnmatchcase(alert.key, self.key)
            and fnmatchcase(alert.signal, self.signal)
            and _cohort_matches(alert.cohorts, self.cohort)
        )


@dataclass(frozen=True)
class Item:
    """One alert in a notification, with why it is in it."""

    alert: Alert
    reason: Reason


@dataclass(frozen=True)
class Notification:
    """One message for one route: the due alerts of one group. `id` is stable and unique per message."""

    id: str
    status: Status
    group: str
    model_id: int | None
    route: str
    receivers: tuple[str, ...]
    items: tuple[Item, ...]
    created_at: float

    @property
    def severity(self) -> str:
        """The most severe member (for a resolved notification: what was last notified)."""
        return max((_notified_or_current(i.alert) for i in self.items), key=SEVERITY_RANK.__getitem__)

    @property
    def signals(self) -> list[str]:
        """Signals of the members, in order of first appearance."""
        return list(dict.fromkeys(i.alert.signal for i in self.items))

    @property
    def title(self) -> str:
        """E.g. "12 devices at site=north drifted on input_mean_0"."""
        return describe(self)


@dataclass(frozen=True)
class Decision:
    """What one round decided: alerts to write back (new or changed), notifications to enqueue, and how
    many due alerts matched no route (they are marked notified; count them on /metrics)."""

    changed: tuple[Alert, ...]
    notifications: tuple[Notification, ...]
    unrouted: int


def evaluate(
    findings: Iterable[Finding],
    alerts: Sequence[Alert],
    silences: Sequence[Silence],
    config: AlertsConfig,
    now: float,
    inventory: Inventory | None = None,
) -> Decision:
    """One round. `alerts` are the alerts not yet closed; `inventory` maps device -> {tag: value}."""
    before = {a.id: a for a in alerts}
    state = dict(before)
    firing = {a.identity: a.id for a in alerts if a.status == "firing"}
    for finding in _strongest(findings):
        current = state.get(firing.get(finding.identity, ""))
        updated = _apply(finding, current, config, now, inventory or {})
        if updated is not None:
            state[updated.id] = updated
    active = [s for s in silences if s.active(now)]
    due: dict[str, Reason] = {}
    for a_id, alert in list(state.items()):
        state[a_id], reason = _schedule(alert, active, config, now)
        if reason is not None:
            due[a_id] = reason
    notifications, flushed, unrouted = _flush([(state[a_id], reason) for a_id, reason in due.items()], config, now)
    state.update(flushed)
    changed = tuple(a for a_id, a in state.items() if before.get(a_id) != a)
    return Decision(changed=changed, notifications=tuple(notifications), unrouted=unrouted)


def min_severity_for(config: AlertsConfig, scope: str, signal: str) -> str:
    """The first matching rule's minimum severity, else the section's `min_severity`."""
    for rule in config.rules:
        if fnmatchcase(scope, rule.scope) and fnmatchcase(signal, rule.signal):
            return rule.min_severity
    return config.min_severity


def routes_for(config: AlertsConfig, alert: Alert) -> list[Route]:
    """Routes an alert takes: in order, stopping at the first match unless it says `continue_matching`."""
    severity = SEVERITY_RANK[_notified_or_current(alert)]
    matched = []
    for route in config.routes:
        if (
            fnmatchcase(alert.scope, route.scope)
            and fnmatchcase(alert.signal, route.signal)
            and _cohort_matches(alert.cohorts, route.cohort)
            and severity >= SEVERITY_RANK[route.min_severity]
        ):
            matched.append(route)
            if not route.continue_matching:
                break
    return matched


def describe(notification: Notification) -> str:
    """A one-line summary: who, where, what happened, on which signals."""
    items = notification.items
    place = "in the fleet" if notification.group == "fleet" else f"at {notification.group}"
    if len(items) == 1:
        alert = items[0].alert
        who = {"device": f"device {alert.key} {place}", "cohort": f"cohort {alert.key}", "fleet": "the fleet"}.get(
            alert.scope, f"{alert.scope} {alert.key}"
        )
    elif all(i.alert.scope == "device" for i in items):
        who = f"{len({i.alert.key for i in items})} devices {place}"
    else:
        who = f"{len(items)} alerts {place}"
    verb = "recovered on" if notification.status == "resolved" else "drifted on"
    return f"{who} {verb} {_listing(notification.signals)}"


def alert_id(identity: tuple[str, str, str], opened_at: float) -> str:
    """Stable id of one alert (one identity, opened at one time)."""
    digest = hashlib.sha256(json.dumps([*identity, opened_at]).encode()).hexdigest()
    return f"a{digest[:15]}"


def cohorts_of(finding: Finding, inventory: Inventory) -> tuple[str, ...]:
    """Cohorts a finding belongs to: a device's inventory tags and model, else the finding's own key."""
    if finding.scope != "device":
        return (finding.key,)
    tags = inventory.get(finding.key, {})
    names = [f"{tag}={value}" for tag, value in sorted(tags.items())]
    if finding.model_id is not None:
        names.append(f"model_id={finding.model_id}")
    return tuple(names)


def _group_of(scope: str, key: str, cohorts: tuple[str, ...], group_by: Sequence[str]) -> str:
    if scope != "device":
        return key
    for tag in group_by:
        for cohort in cohorts:
            if cohort.startswith(f"{tag}="):
                return cohort
    return "fleet"


def _strongest(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per identity (the most severe; the later on a tie)."""
    best: dict[tuple[str, str, str], Finding] = {}
    for finding in findings:
        seen = best.get(finding.identity)
        if seen is None or SEVERITY_RANK[finding.severity] >= SEVERITY_RANK[seen.severity]:
            best[finding.identity] = finding
    return list(best.values())


def _apply(
    finding: Finding, current: Alert | None, config: AlertsConfig, now: float, inventory: Inventory
) -> Alert | None:
    threshold = min_severity_for(config, finding.scope, finding.signal)
    alerting = threshold != "never" and SEVERITY_RANK[finding.severity] >= SEVERITY_RANK[threshold]
    if alerting:
        cohorts = cohorts_of(finding, inventory)
        group = _group_of(finding.scope, finding.key, cohorts, config.group_by)
        if current is None:
            return Alert(
                id=alert_id(finding.identity, now),
                scope=finding.scope,
                key=finding.key,
                signal=finding.signal,
                status="firing",
                severity=finding.severity,
                finding=finding,
                cohorts=cohorts,
                group=group,
                opened_at=now,
                updated_at=now,
                first_window_start=finding.window_start,
            )
        return replace(
            current,
            severity=finding.severity,
            finding=finding,
            cohorts=cohorts,
            group=group,
            updated_at=now,
            clear_count=0,
        )
    if current is None:
        return None
    clears = current.clear_count + 1
    if clears < config.resolve_after:
        return replace(current, clear_count=clears, updated_at=now)
    return replace(current, clear_count=clears, status="resolved", resolved_at=now, updated_at=now)


def _reason(alert: Alert, config: AlertsConfig, now: float) -> Reason | None:
    if alert.status == "resolved":
        return "resolved" if config.send_resolved and alert.notified_severity is not None else None
    if alert.notified_severity is None or alert.notified_at is None:
        return "new"
    if SEVERITY_RANK[alert.severity] > SEVERITY_RANK[alert.notified_severity]:
        return "escalated"
    if config.reminders and now - alert.notified_at >= config.cooldown_minutes * 60:
        return "reminder"
    return None


def _schedule(
    alert: Alert, silences: Sequence[Silence], config: AlertsConfig, now: float
) -> tuple[Alert, Reason | None]:
    """Mark an alert due (with its reason) or not for this round; close resolved alerts with nothing to send."""
    if alert.closed:
        return alert, None
    reason = _reason(alert, config, now)
    if reason is None or any(s.matches(alert) for s in silences):
        return replace(alert, due_since=None, closed=alert.status == "resolved"), None
    return (alert if alert.due_since is not None else replace(alert, due_since=now)), reason


def _flush(
    due: list[tuple[Alert, Reason]], config: AlertsConfig, now: float
) -> tuple[list[Notification], dict[str, Alert], int]:
    """Send the groups whose window has passed: one notification per (group, route)."""
    groups: dict[tuple[Status, str, int | None], list[tuple[Alert, Reason]]] = {}
    for alert, reason in due:
        groups.setdefault((alert.status, alert.group, alert.model_id), []).append((alert, reason))
    notifications: list[Notification] = []
    flushed: dict[str, Alert] = {}
    unrouted = 0
    for (status, group, model_id), members in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        if min(a.due_since or now for a, _ in members) + config.group_window_s > now:
            continue
        by_route: dict[str, tuple[Route, list[Item]]] = {}
        for alert, reason in sorted(members, key=lambda m: (m[0].key, m[0].signal)):
            routes = routes_for(config, alert)
            unrouted += not routes
            for route in routes:
                by_route.setdefault(route.name, (route, []))[1].append(Item(alert, reason))
            flushed[alert.id] = _notified(alert, now)
        for route, items in by_route.values():
            notifications.append(
                Notification(
                    id=_notification_id(status, group, model_id, route.name, items, now),
                    status=status,
                    group=group,
                    model_id=model_id,
                    route=route.name,
                    receivers=tuple(route.receivers),
                    items=tuple(items),
                    created_at=now,
                )
            )
    return notifications, flushed, unrouted


def _notified(alert: Alert, now: float) -> Alert:
    if alert.status == "resolved":
        return replace(alert, due_since=None, closed=True)
    return replace(alert, notified_severity=alert.severity, notified_at=now, due_since=None)


def _notification_id(status: str, group: str, model_id: int | None, route: str, items: list[Item], now: float) -> str:
    members = [[i.alert.id, i.reason] for i in items]
    digest = hashlib.sha256(json.dumps([status, group, model_id, route, now, members]).encode()).hexdigest()
    return f"n{digest[:23]}"


def _notified_or_current(alert: Alert) -> str:
    if alert.status == "resolved" and alert.notified_severity is not None:
        return alert.notified_severity
    return alert.severity


def _cohort_matches(cohorts: tuple[str, ...], pattern: str) -> bool:
    return pattern == "*" or any(fnmatchcase(c, pattern) for c in cohorts)


def _listing(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) <= 3:
        return f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{', '.join(names[:2])} and {len(names) - 2} more signals"
