"""The state database: small, durable, transactional state that is not telemetry.

Rollouts, the alert outbox and its dedupe keys, silences, the quarantine index and the scheduler lease
live here. SQLite (a file under the data dir) by default. Each module that keeps state declares its own
tables as a `Migration` and applies them with `StateDB.migrate`; migrations are numbered per module and
recorded, so an upgrade adds what is new and never reruns what ran.

>>> db = StateDB(":memory:")
>>> db.migrate("example", [Migration(1, "CREATE TABLE example (k TEXT PRIMARY KEY, v TEXT)")])
>>> with db.transaction() as tx:
...     _ = tx.execute("INSERT INTO example VALUES ('a', 'b')")
>>> db.query("SELECT v FROM example WHERE k = ?", ("a",))
[('b',)]
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Migration:
    """One step of a module's schema: `version` counts up from 1; `sql` may hold several statements."""

    version: int
    sql: str


class StateDB:
    """A thread-safe handle on the state database (one connection, serialised by a lock).

    `path` is a file path, or ":memory:" for tests. WAL mode lets readers (the CLI) work while the
    daemon writes; `busy_timeout` makes a second process wait for a lock instead of failing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(module TEXT, version INTEGER, PRIMARY KEY (module, version))"
            )

    def migrate(self, module: str, migrations: Sequence[Migration]) -> None:
        """Apply the migrations of `module` that have not run yet, each in its own transaction."""
        with self._lock:
            rows = self._conn.execute("SELECT version FROM schema_migrations WHERE module = ?", (module,))
            done = {version for (version,) in rows}
            for step in sorted(migrations, key=lambda m: m.version):
                if step.version in done:
                    continue
                with self.transaction() as tx:
                    for statement in _statements(step.sql):
                        tx.execute(statement)
                    tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", (module, step.version))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); holds the lock for the whole transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns the number of rows it changed."""
        with self.transaction() as tx:
            return tx.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
