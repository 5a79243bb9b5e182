"""Quarantine: every rejected frame kept with its raw bytes, device, transport, time and reason.

An operator lists it, looks at one entry, and replays entries after a fix (a new schema, a corrected
clock); what still does not decode stays, with its current reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetwatch.frames import Reject
from fleetwatch.state import Migration, StateDB

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            quarantined_at REAL NOT NULL,
            received INTEGER NOT NULL,
            device TEXT NOT NULL,
            transport TEXT NOT NULL,
            reason TEXT NOT NULL,
            byte_offset INTEGER NOT NULL,
            raw BLOB NOT NULL
        );
        CREATE INDEX quarantine_reason ON quarantine (reason);
        CREATE INDEX quarantine_time ON quarantine (quarantined_at)
        """,
    )
]


@dataclass(frozen=True)
class Entry:
    id: int
    quarantined_at: float
    received: int
    device: str
    transport: str
    reason: str
    byte_offset: int
    raw: bytes


class Quarantine:
    """The quarantine table in the state database."""

    def __init__(self, db: StateDB) -> None:
        self._db = db
        db.migrate("quarantine", MIGRATIONS)

    def add(self, rejects: Iterable[Reject], transports: Sequence[str]) -> int:
        """Keep decoder rejects; `transports[r.message]` is the transport of the message it came from."""
        return self.add_raw((r.received, r.device, transports[r.message], r.reason, r.offset, r.raw) for r in rejects)

    def add_raw(self, entries: Iterable[tuple[int, str, str, str, int, bytes]]) -> int:
        """Keep (received, device, transport, reason, byte offset, raw bytes) entries."""
        now = time.time()
        rows = [(now, *entry) for entry in entries]
        if rows:
            with self._db.transaction() as tx:
                tx.executemany(
                    "INSERT INTO quarantine (quarantined_at, received, device, transport, reason, byte_offset, raw)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def list(self, reason: str | None = None, device: str | None = None, limit: int = 100) -> list[Entry]:
        where, params = _filters(reason, device)
        rows = self._db.query(f"SELECT * FROM quarantine {where} ORDER BY id LIMIT ?", (*params, limit))
        return [Entry(*row) for row in rows]

    def get(self, entry_id: int) -> Entry | None:
        rows = self._db.query("SELECT * FROM quarantine WHERE id = ?", (entry_id,))
        return Entry(*rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        return dict(self._db.query("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"))

    def remove(self, ids: Iterable[int]) -> int:
        with self._db.transaction() as tx:
            return tx.executemany("DELETE FROM quarantine WHERE id = ?", [(i,) for i in ids]).rowcount

    def set_reason(self, entry_id: int, reason: str) -> None:
        self._db.execute("UPDATE quarantine SET reason = ? WHERE id = ?", (reason, entry_id))

    def purge(self, older_than: float) -> int:
        """Drop entries quarantined before `older_than` (Unix s); returns how many."""
        return self._db.execute("DELETE FROM quarantine WHERE quarantined_at < ?", (older_than,))


def _filters(reason: str | None, device: str | None) -> tuple[str, tuple[str, ...]]:
    clauses, params = [], []
    if reason:
        clauses.append("reason = ?")
        params.append(reason)
    if device:
        clauses.append("device = ?")
        params.append(device)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
