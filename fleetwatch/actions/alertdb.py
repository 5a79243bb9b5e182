"""Alert state in the state database, and the one transaction that applies a round of decisions.

`AlertManager.process(findings, now)` reads the alerts that are not closed and the silences, lets the pure
`alerts.evaluate` decide, then writes the changed alerts and queues the notifications in the outbox, all in
one transaction: after a crash either the decision and its messages are both there, or neither is.

>>> alerts = AlertDB(StateDB(":memory:"))
>>> alerts.add_silence(now=0.0, duration_s=7200, reason="site visit", key="dev-*").id
1
>>> [(s.key, s.ends_at) for s in alerts.silences(now=60.0)]
[('dev-*', 7200.0)]
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from sqlite3 import Connection
from typing import Any

from fleetwatch.actions.alerts import Alert, Decision, Inventory, Notification, Silence, evaluate
from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.receivers import Body, RenderError, drift_start, render
from fleetwatch.actions.webhooks import Outbox
from fleetwatch.findings import Finding
from fleetwatch.metrics import Metric
from fleetwatch.state import Migration, StateDB

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE alerts (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            signal TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
            severity TEXT NOT NULL,
            finding TEXT NOT NULL,
            cohorts TEXT NOT NULL,
            grp TEXT NOT NULL,
            opened_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            first_window_start INTEGER NOT NULL,
            clear_count INTEGER NOT NULL,
            resolved_at REAL,
            notified_severity TEXT,
            notified_at REAL,
            due_since REAL,
            closed INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX alerts_one_firing ON alerts (scope, key, signal) WHERE status = 'firing';
        CREATE INDEX alerts_open ON alerts (closed);
        CREATE TABLE alert_silences (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            signal TEXT NOT NULL,
            cohort TEXT NOT NULL,
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
    )
]
# In the order of the fields of `Alert` (`grp` holds `group`, a keyword in SQL).
_ALERT_COLUMNS = (
    "id, scope, key, signal, status, severity, finding, cohorts, grp, opened_at, updated_at, first_window_start, "
    "clear_count, resolved_at, notified_severity, notified_at, due_since, closed"
)
_SILENCE_COLUMNS = "id, scope, key, signal, cohort, starts_at, ends_at, reason, created_by, created_at"


class AlertDB:
    """The `alerts` and `alert_silences` tables (module "alerts" of the state database)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        db.migrate("alerts", MIGRATIONS)

    def active(self, tx: Connection | None = None) -> list[Alert]:
        """Alerts not yet closed: firing ones, and resolved ones with a resolve notification to send."""
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE closed = 0 ORDER BY opened_at, id"
        rows = tx.execute(sql).fetchall() if tx is not None else self.db.query(sql)
        return [_alert(row) for row in rows]

    def save(self, tx: Connection, alerts: Iterable[Alert]) -> None:
        """Insert or update alerts by id."""
        assignments = ", ".join(f"{c} = excluded.{c}" for c in _ALERT_COLUMNS.split(", ")[1:])
        tx.executemany(
            f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
            f"ON CONFLICT (id) DO UPDATE SET {assignments}",
            [_row(a) for a in alerts],
        )

    def firing_counts(self) -> dict[str, int]:
        """Firing alerts by severity."""
        counts = dict.fromkeys(("warning", "critical"), 0)
        counts.update(self.db.query("SELECT severity, COUNT(*) FROM alerts WHERE status = 'firing' GROUP BY severity"))
        return counts

    def prune(self, tx: Connection, before: float) -> int:
        """Forget closed alerts resolved before `before`."""
        return tx.execute("DELETE FROM alerts WHERE closed = 1 AND resolved_at < ?", (before,)).rowcount

    def add_silence(
        self,
        *,
        now: float,
        duration_s: float,
        reason: str,
        scope: str = "*",
        key: str = "*",
        signal: str = "*",
        cohort: str = "*",
        created_by: str = "",
    ) -> Silence:
        """Silence matching alerts (glob patterns) from `now` for `duration_s` seconds."""
        with self.db.transaction() as tx:
            cursor = tx.execute(
                f"INSERT INTO alert_silences ({_SILENCE_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (scope, key, signal, cohort, now, now + duration_s, reason, created_by, now),
            )
            silence_id = cursor.lastrowid
        return Silence(silence_id or 0, scope, key, signal, cohort, now, now + duration_s, reason, created_by, now)

    def end_silence(self, silence_id: int, now: float) -> bool:
        """End a silence now (kept as history); False if there is no such active silence."""
        return (
            self.db.execute(
                "UPDATE alert_silences SET ends_at = ? WHERE id = ? AND ends_at > ?", (now, silence_id, now)
            )
            == 1
        )

    def silences(self, now: float, tx: Connection | None = None) -> list[Silence]:
        """Silences that have not ended at `now` (active, or starting later)."""
        sql = f"SELECT {_SILENCE_COLUMNS} FROM alert_silences WHERE ends_at > ? ORDER BY id"
        rows = tx.execute(sql, (now,)).fetchall() if tx is not None else self.db.query(sql, (now,))
        return [Silence(*row) for row in rows]


class AlertManager:
    """Findings in, alert state and queued notifications out. Call `process` after each drift check and
    `tick` every few seconds (it sends groups whose window has passed and reminders that are due)."""

    def __init__(
        self,
        config: AlertsConfig,
        db: StateDB,
        outbox: Outbox | None = None,
        on_notifications: Callable[[Sequence[Notification]], object] | None = None,
        field_data: Callable[[int | None, str, int], Mapping[str, Any]] | None = None,
    ) -> None:
        """`on_notifications` runs after each round's transaction with its notifications (the snippet
        request hook); `field_data(model_id, cohort, since)` adds what the snippet dataset holds to
        retraining payloads (`fleetwatch.snippets.capture.FieldData`)."""
        self.config = config
        self.alerts = AlertDB(db)
        self.outbox = outbox or Outbox(db)
        self.on_notifications = on_notifications
        self.field_data = field_data
        self._counts: Counter[tuple[str, ...]] = Counter()

    def process(self, findings: Iterable[Finding], now: float, inventory: Inventory | None = None) -> Decision:
        """Apply one evaluation round at `now` (unix seconds); `inventory` maps device -> {tag: value}."""
        db = self.alerts.db
        with db.transaction() as tx:
            decision = evaluate(
                findings, self.alerts.active(tx), self.alerts.silences(now, tx), self.config, now, inventory
            )
            self.alerts.save(tx, decision.changed)
            for notification in decision.notifications:
                self._enqueue(tx, notification, now)
            self.alerts.prune(tx, now - self.config.keep_resolved_days * 86400)
        for notification in decision.notifications:
            self._counts[("notification", notification.status)] += 1
        self._counts[("unrouted",)] += decision.unrouted
        if self.on_notifications is not None and decision.notifications:
            self.on_notifications(decision.notifications)
        return decision

    def tick(self, now: float) -> Decision:
        """A round without findings: flush due groups and reminders, close what silences or expiry allow."""
        return self.process((), now)

    def metrics(self, now: float) -> list[Metric]:
        """Open alerts and active silences (from the database), notifications decided by this process."""
        return [
            Metric(
                "fleetwatch_alerts_open",
                "gauge",
                "Firing alerts by severity",
                tuple(({"severity": s}, float(n)) for s, n in self.alerts.firing_counts().items()),
            ),
            Metric(
                "fleetwatch_alert_silences_active",
                "gauge",
                "Silences in force",
                (({}, float(sum(s.active(now) for s in self.alerts.silences(now)))),),
            ),
            Metric(
                "fleetwatch_alert_notifications_total",
                "counter",
                "Notifications decided, by status (firing, resolved)",
                tuple(({"status": s}, float(self._counts[("notification", s)])) for s in ("firing", "resolved")),
            ),
            Metric(
                "fleetwatch_alert_unrouted_total",
                "counter",
                "Due alerts that matched no route (nobody was told)",
                (({}, float(self._counts[("unrouted",)])),),
            ),
        ]

    def _enqueue(self, tx: Connection, notification: Notification, now: float) -> None:
        title = f"[{notification.status}] {notification.title}"
        since = drift_start(notification)
        field_data = None
        if self.field_data is not None and since is not None:
            field_data = self.field_data(notification.model_id, notification.group, since)
        for receiver in (r for r in self.config.receivers if r.name in notification.receivers):
            error = None
            try:
                body = render(notification, receiver, field_data)
            except RenderError as exc:
                log.error("%s", exc)
                body, error = Body(b"", "text/plain"), str(exc)
            if body is None:
                continue
            self.outbox.enqueue(
                tx,
                key=f"{notification.id}.{receiver.name}",
                receiver=receiver.name,
                title=title,
                body=body,
                now=now,
                deadline_s=self.config.delivery.deadline_s,
                error=error,
            )


def _row(alert: Alert) -> tuple[Any, ...]:
    values = {f.name: getattr(alert, f.name) for f in fields(Alert)}
    values["finding"] = json.dumps(alert.finding.to_json())
    values["cohorts"] = json.dumps(list(alert.cohorts))
    values["closed"] = int(alert.closed)
    return tuple(values.values())


def _alert(row: tuple[Any, ...]) -> Alert:
    values = dict(zip((f.name for f in fields(Alert)), row, strict=True))
    values["finding"] = Finding.from_json(json.loads(values["finding"]))
    values["cohorts"] = tuple(json.loads(values["cohorts"]))
    values["closed"] = bool(values["closed"])
    return Alert(**values)
