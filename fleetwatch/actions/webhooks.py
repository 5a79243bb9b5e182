"""Delivery: a durable outbox in the state database, and a worker that sends what is due.

A message is queued (`Outbox.enqueue`) inside the caller's transaction, the one that records the alert
decision, so a crash either keeps both or neither. The worker then sends due messages one by one:

- 2xx: sent. 429 and 503 with `Retry-After` (seconds or an HTTP date): wait that long (a 429 also holds
  back the receiver's other messages). 408, 429, 5xx, timeouts, connection errors: retry with exponential
  backoff and full jitter (a uniform wait in [0, min(max, base * 2^(attempt-1))]). Other 4xx, 3xx and
  requests that cannot be built: permanent, straight to dead letters.
- A message not delivered by its deadline goes to dead letters (`fleetwatch alerts deadletters`, and
  `retry ID` puts it back).
- Before sending, the worker claims the message (bumps `attempts` and pushes `next_attempt_at` past the
  request timeout), so two workers never send it at once, and a crash mid-request retries it later.
  Delivery is at least once; the `Idempotency-Key` header (stable across retries) lets receivers dedupe.

Time comes from an injected clock, randomness from an injected `random.Random`; retries are scheduled in
the database, never slept on, so tests of the backoff need no real waiting.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from sqlite3 import Connection
from typing import Literal

import requests

from fleetwatch.actions.config import AlertsConfig, ReceiverConfig
from fleetwatch.actions.receivers import Body, Request, request_for, safe_target, secrets_of
from fleetwatch.metrics import Metric
from fleetwatch.state import Migration, StateDB

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL UNIQUE,
            receiver TEXT NOT NULL,
            title TEXT NOT NULL,
            body BLOB NOT NULL,
            content_type TEXT NOT NULL,
            created_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
            last_status INTEGER,
            last_error TEXT,
            finished_at REAL
        );
        CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at)
        """,
    )
]
_COLUMNS = (
    "id, idempotency_key, receiver, title, body, content_type, created_at, deadline_at, next_attempt_at, "
    "attempts, status, last_status, last_error, finished_at"
)
ERROR_MAX = 300
CLAIM_MARGIN_S = 30.0


@dataclass(frozen=True)
class OutboxMessage:
    """One message to one receiver. `status`: pending, sent or dead (a dead letter)."""

    id: int
    idempotency_key: str
    receiver: str
    title: str
    body: bytes
    content_type: str
    created_at: float
    deadline_at: float
    next_attempt_at: float
    attempts: int
    status: str
    last_status: int | None
    last_error: str | None
    finished_at: float | None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: `sent`, `retry` (after `retry_after` seconds if the server said) or `dead`."""

    action: Literal["sent", "retry", "dead"]
    status: int | None = None
    error: str = ""
    retry_after: float | None = None


class Outbox:
    """The `alert_outbox` table: queue, claim, settle, list, retry."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        db.migrate("outbox", MIGRATIONS)

    def enqueue(
        self,
        tx: Connection,
        *,
        key: str,
        receiver: str,
        title: str,
        body: Body,
        now: float,
        deadline_s: float,
        error: str | None = None,
    ) -> None:
        """Queue one message inside the caller's transaction `tx`. With `error` it is a dead letter from
        the start (its body could not be built) so that it is visible, not lost."""
        tx.execute(
            "INSERT INTO alert_outbox (idempotency_key, receiver, title, body, content_type, created_at, "
            "deadline_at, next_attempt_at, status, last_error, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                receiver,
                title,
                body.data,
                body.content_type,
                now,
                now + deadline_s,
                now,
                "dead" if error else "pending",
                error,
                now if error else None,
            ),
        )

    def due(self, now: float, limit: int = 100) -> list[OutboxMessage]:
        """Pending messages whose next attempt is due, oldest first."""
        return self._select(
            "WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?", (now, limit)
        )

    def next_due(self) -> float | None:
        """When the next pending message is due (None: nothing pending)."""
        return self.db.query("SELECT MIN(next_attempt_at) FROM alert_outbox WHERE status = 'pending'")[0][0]

    def oldest_pending(self) -> float | None:
        """When the oldest undelivered message was queued (None: nothing pending)."""
        return self.db.query("SELECT MIN(created_at) FROM alert_outbox WHERE status = 'pending'")[0][0]

    def claim(self, message: OutboxMessage, now: float, until: float) -> bool:
        """Take `message` for one attempt (no one else sends it before `until`); False if it was taken,
        settled or postponed (a 429 of its receiver) since it was read."""
        return (
            self.db.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ? "
                "WHERE id = ? AND status = 'pending' AND attempts = ? AND next_attempt_at <= ?",
                (until, message.id, message.attempts, now),
            )
            == 1
        )

    def settle(self, message_id: int, outcome: Outcome, now: float, next_attempt_at: float | None = None) -> None:
        """Record an attempt: sent or dead (finished), or pending again from `next_attempt_at`."""
        status = "pending" if next_attempt_at is not None else ("sent" if outcome.action == "sent" else "dead")
        self.db.execute(
            "UPDATE alert_outbox SET status = ?, last_status = ?, last_error = ?, next_attempt_at = "
            "COALESCE(?, next_attempt_at), finished_at = ? WHERE id = ?",
            (
                status,
                outcome.status,
                outcome.error or None,
                next_attempt_at,
                None if status == "pending" else now,
                message_id,
            ),
        )

    def hold_receiver(self, receiver: str, until: float) -> None:
        """Nothing more to `receiver` before `until` (it answered 429)."""
        self.db.execute(
            "UPDATE alert_outbox SET next_attempt_at = ? WHERE receiver = ? AND status = 'pending' "
            "AND next_attempt_at < ?",
            (until, receiver, until),
        )

    def retry(self, message_id: int, now: float, deadline_s: float) -> bool:
        """Put a dead letter back in the queue, due now, with a fresh deadline and the same idempotency key."""
        return (
            self.db.execute(
                "UPDATE alert_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?, deadline_at = ?, "
                "finished_at = NULL WHERE id = ? AND status = 'dead'",
                (now, now + deadline_s, message_id),
            )
            == 1
        )

    def get(self, message_id: int) -> OutboxMessage | None:
        rows = self._select("WHERE id = ?", (message_id,))
        return rows[0] if rows else None

    def list(self, status: str, limit: int = 100) -> list[OutboxMessage]:
        """Messages in one state, newest first."""
        return self._select("WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit))

    def counts(self) -> dict[str, int]:
        """Messages by state (pending, sent, dead)."""
        counts = dict.fromkeys(("pending", "sent", "dead"), 0)
        counts.update(dict(self.db.query("SELECT status, COUNT(*) FROM alert_outbox GROUP BY status")))
        return counts

    def prune(self, before: float) -> int:
        """Forget delivered messages finished before `before`; dead letters stay until retried."""
        return self.db.execute("DELETE FROM alert_outbox WHERE status = 'sent' AND finished_at < ?", (before,))

    def _select(self, where: str, params: tuple[object, ...]) -> list[OutboxMessage]:
        return [OutboxMessage(*row) for row in self.db.query(f"SELECT {_COLUMNS} FROM alert_outbox {where}", params)]


def classify(status: int, retry_after: str | None, now: float) -> Outcome:
    """What an HTTP status means for delivery (see the module docstring)."""
    if 200 <= status < 300:
        return Outcome("sent", status)
    wait = parse_retry_after(retry_after, now) if status in (429, 503) else None
    if status in (408, 429) or status >= 500:
        return Outcome("retry", status, f"HTTP {status}", wait)
    if 300 <= status < 400:
        return Outcome("dead", status, f"HTTP {status}: redirects are not followed (fix the URL)")
    return Outcome("dead", status, f"HTTP {status}: permanent")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, base_s * 2**(attempt - 1))] for attempt 1, 2, ..."""
    return rng.uniform(0.0, min(max_s, base_s * 2 ** (attempt - 1)))


def attempt(send: Callable[[], requests.Response], secrets: list[str], clock: Callable[[], float]) -> Outcome:
    """One HTTP request, classified as `classify` says; transport errors and the response's text are
    redacted of `secrets` (also used by the Edge Impulse forwarder)."""
    try:
        response = send()
    except (requests.Timeout, requests.ConnectionError) as exc:
        return Outcome("retry", error=redact(f"{type(exc).__name__}: {exc}", secrets))
    except requests.RequestException as exc:
        return Outcome("dead", error=redact(f"{type(exc).__name__}: {exc}", secrets))
    outcome = classify(response.status_code, response.headers.get("Retry-After"), clock())
    detail = redact(response.text.strip().replace("\n", " "), secrets)
    if outcome.action == "sent" or not detail:
        return outcome
    return Outcome(outcome.action, outcome.status, f"{outcome.error}: {detail}", outcome.retry_after)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***, cut to ERROR_MAX characters."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:ERROR_MAX]


class OutboxWorker:
    """Sends due outbox messages: `run_once()` from a scheduler, or `start()`/`stop()` as a thread.

    `clock` (unix seconds) and `rng` are injectable for tests; `session` is a requests.Session.
    """

    def __init__(
        self,
        config: AlertsConfig,
        db: StateDB,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.outbox = Outbox(db)
        self._clock = clock
        self._rng = rng or random.Random()
        self._session = session or requests.Session()
        self._deliveries: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, limit: int = 100) -> int:
        """Attempt every message due now (up to `limit`); returns how many were attempted."""
        self.outbox.prune(self._clock() - self.config.delivery.keep_sent_days * 86400)
        return sum(self._attempt(message) for message in self.outbox.due(self._clock(), limit))

    def start(self) -> None:
        """Run in a background thread until `stop()`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fleetwatch-alert-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current request (each request is bounded by the timeouts)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Look for due messages now (call after queueing notifications)."""
        self._wake.set()

    def metrics(self) -> list[Metric]:
        """Delivery counters of this process and outbox gauges from the database."""
        with self._lock:
            deliveries = tuple(
                ({"receiver": r, "outcome": o}, float(n)) for (r, o), n in sorted(self._deliveries.items())
            )
        counts = self.outbox.counts()
        oldest = self.outbox.oldest_pending()
        return [
            Metric(
                "fleetwatch_alert_deliveries_total",
                "counter",
                "Alert delivery attempts by receiver and outcome (sent, retry, dead = dead-lettered)",
                deliveries,
            ),
            Metric(
                "fleetwatch_alert_outbox_messages",
                "gauge",
                "Alert outbox messages by state (pending, sent, dead = dead letters)",
                tuple(({"state": s}, float(n)) for s, n in counts.items()),
            ),
            Metric(
                "fleetwatch_alert_outbox_oldest_pending_seconds",
                "gauge",
                "Age of the oldest undelivered alert message (0: none)",
                (({}, max(0.0, self._clock() - oldest) if oldest is not None else 0.0),),
            ),
        ]

    def _loop(self) -> None:
        poll = self.config.delivery.poll_interval_s
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a database hiccup must not end delivery for good
                log.exception("alert outbox round failed; trying again in %.0f s", poll)
            next_due = self.outbox.next_due()
            wait = poll if next_due is None else min(poll, max(0.05, next_due - self._clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def _attempt(self, message: OutboxMessage) -> bool:
        """Claim and send one message, record the outcome; False if it was not ours to send."""
        receiver = self.config.receiver(message.receiver)
        now = self._clock()
        delivery = self.config.delivery
        if not self.outbox.claim(
            message, now, now + delivery.connect_timeout_s + delivery.read_timeout_s + CLAIM_MARGIN_S
        ):
            return False
        if receiver is None:
            outcome = Outcome("dead", error=f"receiver {message.receiver!r} is not configured")
        else:
            request = request_for(receiver, Body(message.body, message.content_type), message.idempotency_key, int(now))
            outcome = self._send(request, message.body, receiver)
        self._settle(message, receiver, outcome)
        return True

    def _send(self, request: Request, body: bytes, receiver: ReceiverConfig) -> Outcome:
        delivery = self.config.delivery
        return attempt(
            lambda: self._session.request(
                request.method,
                request.url,
                data=body,
                headers=request.headers,
                timeout=(delivery.connect_timeout_s, delivery.read_timeout_s),
                allow_redirects=False,
            ),
            secrets_of(receiver),
            self._clock,
        )

    def _settle(self, message: OutboxMessage, receiver: ReceiverConfig | None, outcome: Outcome) -> None:
        now = self._clock()
        target = safe_target(receiver) if receiver is not None else "?"
        attempts = message.attempts + 1
        action = outcome.action
        next_attempt_at = None
        if action == "retry":
            delivery = self.config.delivery
            wait = outcome.retry_after
            if wait is None:
                wait = backoff_delay(attempts, delivery.backoff_base_s, delivery.backoff_max_s, self._rng)
            if now + wait > message.deadline_at:
                action = "dead"
                outcome = Outcome(
                    "dead", outcome.status, f"deadline passed after {attempts} attempts; last: {outcome.error}"
                )
            else:
                next_attempt_at = now + wait
                if outcome.status == 429:
                    self.outbox.hold_receiver(message.receiver, next_attempt_at)
        self.outbox.settle(message.id, outcome, now, next_attempt_at)
        with self._lock:
            self._deliveries[(message.receiver, action)] += 1
        if action == "sent":
            log.info("alert #%d sent to %s (%s)", message.id, message.receiver, target)
        elif next_attempt_at is not None:
            wait = next_attempt_at - now
            log.warning(
                "alert #%d to %s (%s): %s; retry in %.1f s", message.id, message.receiver, target, outcome.error, wait
            )
        else:
            log.error("alert #%d to %s (%s) dead-lettered: %s", message.id, message.receiver, target, outcome.error)
