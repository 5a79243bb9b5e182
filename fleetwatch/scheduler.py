"""Scheduled jobs (apscheduler) and the lease that makes them run once per fleet, not once per daemon.

Jobs align to window boundaries (plus a delay for late frames), coalesce missed runs into one, run one
at a time, and still run when late by less than the misfire grace. When several daemons share a fleet,
each job first takes the scheduler lease: a row in the state database held by one instance until it
expires; the holder renews it on every run, the others take it over once it lapses.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from fleetwatch.state import Migration, StateDB

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(1, "CREATE TABLE scheduler_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)")
]


class Lease:
    """A named lease in the state database (SQLite here; the same SQL works on PostgreSQL)."""

    def __init__(self, db: StateDB, name: str = "scheduler", holder: str | None = None, ttl_s: float = 600) -> None:
        db.migrate("scheduler", MIGRATIONS)
        self.db, self.name, self.ttl = db, name, ttl_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"

    def acquire(self, now: float | None = None) -> bool:
        """Take or renew the lease; False when another holder's lease has not expired."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO scheduler_lease (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
                "WHERE scheduler_lease.holder = excluded.holder OR scheduler_lease.expires < ?",
                (self.name, self.holder, now + self.ttl, now),
            )
            row = tx.execute("SELECT holder FROM scheduler_lease WHERE name = ?", (self.name,)).fetchone()
        return row is not None and row[0] == self.holder

    def release(self) -> None:
        self.db.execute("DELETE FROM scheduler_lease WHERE name = ? AND holder = ?", (self.name, self.holder))


class Jobs:
    """The daemon's scheduler: `add` a job every `period_s` seconds, aligned to multiples of it."""

    def __init__(self, lease: Lease, misfire_grace_s: int = 900) -> None:
        self.lease = lease
        self._funcs: dict[str, Callable[[int], object]] = {}
        self.scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_s}
        )

    def add(self, name: str, func: Callable[[int], object], period_s: int, delay_s: int = 0) -> None:
        """Run `func(window_end)` every period, `delay_s` after each boundary, on the lease holder only."""
        now = time.time()
        first = (int(now) // period_s + 1) * period_s + delay_s
        self._funcs[name] = func

        def scheduled() -> None:
            self.run(name, (int(time.time()) - delay_s) // period_s * period_s)

        self.scheduler.add_job(
            scheduled,
            IntervalTrigger(seconds=period_s, start_date=datetime.fromtimestamp(first, UTC)),
            id=name,
            name=name,
        )

    def run(self, name: str, window_end: int) -> bool:
        """Run job `name` for the window ending at `window_end` as the scheduler does: only while holding
        the lease (False otherwise), its errors logged, not raised."""
        if not self.lease.acquire():
            log.debug("%s: another instance holds the scheduler lease", name)
            return False
        try:
            self._funcs[name](window_end)
        except Exception:
            log.exception("job %s failed for the window ending %s", name, window_end)
        return True

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.lease.release()
