"""The snippet dataset: one raw file per snippet under a directory, indexed in the state database.

Layout: `<dir>/<device>/<YYYYmmddTHHMMSSZ>-<sha256[:16]>.snip`, the snippet's bytes exactly as the device
sent them (wire format v1, docs/wire-format.md), so nothing is lost to a conversion; `export` writes Edge
Impulse JSON or CSV from them. The index (table `snippets`, module "snippets" of the state database) holds
per snippet: device, time, model_id, reason, label, transport, shape, sha256 checksum, size, file and what
was forwarded where.

A snippet whose sha256 is already indexed is a duplicate (a retried route, a re-published message) and is
not stored again (also when another process, the CLI replaying the quarantine say, added it meanwhile).
The limits are enforced oldest received first (the daemon prunes after each new snippet and hourly):
snippets older than `max_age_days`, then as many as it takes to bring the dataset under `max_bytes`.

>>> import tempfile, numpy as np
>>> from fleetwatch.frames.snippet import encode_snippet
>>> raw = encode_snippet(np.ones((4, 3), dtype=np.float32), interval_ms=10.0, start_time=1_795_000_000)
>>> store = SnippetStore(StateDB(":memory:"), Path(tempfile.mkdtemp()))
>>> first, created = store.add(raw, "dev-1", 1_795_000_005, "mqtt")
>>> second, again = store.add(raw, "dev-1", 1_795_000_009, "mqtt")
>>> created, again, first.id == second.id, store.read(first) == raw
(True, False, True, True)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetwatch.config import Settings
from fleetwatch.frames.snippet import Snippet, decode_snippet
from fleetwatch.state import Migration, StateDB

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE snippets (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            checksum TEXT NOT NULL UNIQUE,
            device TEXT NOT NULL,
            time INTEGER NOT NULL,
            received INTEGER NOT NULL,
            start_time INTEGER NOT NULL,
            model_id INTEGER NOT NULL,
            reason TEXT NOT NULL,
            label TEXT,
            transport TEXT NOT NULL,
            channels INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            interval_ms REAL NOT NULL,
            bytes INTEGER NOT NULL,
            path TEXT NOT NULL,
            forwarded_at REAL,
            forward_category TEXT,
            forward_error TEXT
        );
        CREATE INDEX snippets_device_time ON snippets (device, time);
        CREATE INDEX snippets_time ON snippets (time);
        CREATE INDEX snippets_received ON snippets (received)
        """,
    )
]
_COLUMNS = (
    "id, checksum, device, time, received, start_time, model_id, reason, label, transport, channels, samples, "
    "interval_ms, bytes, path, forwarded_at, forward_category, forward_error"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@\-]")


@dataclass(frozen=True)
class Record:
    """One indexed snippet. `time` is the device's start time, or the receive time when it had no clock;
    `path` is relative to the dataset directory."""

    id: int
    checksum: str
    device: str
    time: int
    received: int
    start_time: int
    model_id: int
    reason: str
    label: str | None
    transport: str
    channels: int
    samples: int
    interval_ms: float
    bytes: int
    path: str
    forwarded_at: float | None
    forward_category: str | None
    forward_error: str | None


@dataclass(frozen=True)
class Query:
    """Which snippets: every field narrows (None: no condition); `since`/`until` bound `time` (Unix s,
    until exclusive)."""

    devices: Sequence[str] | None = None
    since: int | None = None
    until: int | None = None
    model_id: int | None = None
    reason: str | None = None
    forwarded: bool | None = None
    limit: int | None = None


class SnippetStore:
    """The dataset directory and the `snippets` index table. Thread-safe (the MQTT thread and the HTTP
    workers add at the same time)."""

    def __init__(
        self,
        db: StateDB,
        directory: Path,
        max_bytes: int = 1 << 30,
        max_age_days: float = 180.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_days * 86400
        self._clock = clock
        self._lock = threading.Lock()
        db.migrate("snippets", MIGRATIONS)

    def add(
        self, raw: bytes, device: str, received: int, transport: str, label: str | None = None
    ) -> tuple[Record, bool]:
        """Index and keep a snippet (ValueError when it does not decode); returns its record and whether it is new.
        The file is written and fsync'd before the index row is committed."""
        snippet = decode_snippet(raw)
        if not isinstance(snippet, Snippet):
            raise ValueError(f"not a valid snippet: {snippet.reason}")
        checksum = hashlib.sha256(raw).hexdigest()
        with self._lock:
            existing = self._select("WHERE checksum = ?", (checksum,))
            if existing:
                return existing[0], False
            when = snippet.start_time or received
            relative = f"{_safe(device)}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}-{checksum[:16]}.snip"
            _write_durably(self.directory / relative, raw)
            with self.db.transaction() as tx:
                cursor = tx.execute(
                    f"INSERT INTO snippets ({_COLUMNS}) VALUES (NULL, {', '.join('?' * 14)}, NULL, NULL, NULL) "
                    "ON CONFLICT (checksum) DO NOTHING",
                    (
                        checksum,
                        device,
                        when,
                        received,
                        snippet.start_time,
                        snippet.model_id,
                        snippet.reason,
                        label or None,
                        transport,
                        snippet.channels,
                        snippet.count,
                        snippet.interval_ms,
                        len(raw),
                        relative,
                    ),
                )
                created = cursor.rowcount == 1
            record = self._select("WHERE checksum = ?", (checksum,))[0]
            if not created and record.path != relative:
                (self.directory / relative).unlink(missing_ok=True)
        return record, created

    def prune(self) -> int:
        """Enforce the age and size limits, oldest received first; returns how many snippets went."""
        with self._lock:
            cutoff = self._clock() - self.max_age_s
            doomed = self._select("WHERE received < ? ORDER BY received, id", (cutoff,))
            total = self.total_bytes() - sum(r.bytes for r in doomed)
            if total > self.max_bytes:
                kept = self._select("WHERE received >= ? ORDER BY received, id", (cutoff,))
                for record in kept:
                    if total <= self.max_bytes:
                        break
                    doomed.append(record)
                    total -= record.bytes
            if doomed:
                with self.db.transaction() as tx:
                    tx.executemany("DELETE FROM snippets WHERE id = ?", [(r.id,) for r in doomed])
                for record in doomed:
                    (self.directory / record.path).unlink(missing_ok=True)
            return len(doomed)

    def query(self, query: Query = Query()) -> list[Record]:
        """Snippets matching `query`, oldest first."""
        clauses: list[str] = []
        params: list[object] = []
        if query.devices is not None:
            clauses.append(f"device IN ({', '.join('?' * len(query.devices))})")
            params += list(query.devices)
        for column, op, value in (
            ("time", ">=", query.since),
            ("time", "<", query.until),
            ("model_id", "=", query.model_id),
            ("reason", "=", query.reason),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if query.forwarded is not None:
            clauses.append("forwarded_at IS NOT NULL" if query.forwarded else "forwarded_at IS NULL")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        limit = f" LIMIT {int(query.limit)}" if query.limit is not None else ""
        return self._select(f"{where} ORDER BY time, id{limit}", tuple(params))

    def get(self, snippet_id: int) -> Record | None:
        rows = self._select("WHERE id = ?", (snippet_id,))
        return rows[0] if rows else None

    def read(self, record: Record) -> bytes:
        """The snippet's bytes as the device sent them."""
        return (self.directory / record.path).read_bytes()

    def total_bytes(self) -> int:
        return int(self.db.query("SELECT COALESCE(SUM(bytes), 0) FROM snippets")[0][0])

    def mark_forwarded(self, snippet_id: int, category: str, at: float) -> None:
        self.db.execute(
            "UPDATE snippets SET forwarded_at = ?, forward_category = ?, forward_error = NULL WHERE id = ?",
            (at, category, snippet_id),
        )

    def mark_forward_failed(self, snippet_id: int, error: str) -> None:
        self.db.execute("UPDATE snippets SET forward_error = ? WHERE id = ?", (error, snippet_id))

    def _select(self, tail: str, params: Sequence[object]) -> list[Record]:
        return [Record(*row) for row in self.db.query(f"SELECT {_COLUMNS} FROM snippets {tail}", params)]


def _safe(device: str) -> str:
    """A device id as one directory name: other characters become `_`; never empty, `.` or `..`."""
    name = _UNSAFE.sub("_", device)[:128]
    return name if name.strip(".") else f"_{name}"


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def store_from_settings(settings: Settings, db: StateDB) -> SnippetStore:
    """The dataset the configuration describes (`snippets.dir`, `max_bytes`, `max_age_days`)."""
    config = settings.snippets
    return SnippetStore(db, settings.snippets_dir, config.max_bytes, config.max_age_days)
