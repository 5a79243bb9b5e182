"""The embedded store (the default): one DuckDB file in a directory, no server to run.

A table per measurement, created on first write with typed columns (`time` BIGINT Unix seconds, tags
VARCHAR, fields BIGINT / DOUBLE / BOOLEAN / VARCHAR); a field seen for the first time is added with ALTER
TABLE. Every table has a primary key of its key tags and time, and writes are upserts, so a re-sent
frame overwrites itself as it does in InfluxDB. Batches go in as numpy columns through DuckDB's scan of
a dict of arrays: no per-row Python.

Concurrency: one connection per store; the pipeline's writer and the drift jobs' readers each use their
own cursor, serialised by a lock (DuckDB runs one statement per connection at a time). DuckDB lets one
process open a file read-write; a second process (a CLI command while the daemon runs) gets
`StoreLocked` — run such commands through the daemon's host, or stop the daemon, or use InfluxDB.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np

from fleetwatch.frames import FrameBatch, Schema
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, StoreLocked
from fleetwatch.sinks.model import (
    TELEMETRY,
    TIME,
    Kind,
    Points,
    check_name,
    column,
    frame_points,
    frame_query,
    frames_from_table,
    sort_order,
    table_points,
)

_SQL_TYPE: dict[Kind, str] = {"integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN", "string": "VARCHAR"}
_KIND: dict[str, Kind] = {"BIGINT": "integer", "DOUBLE": "float", "BOOLEAN": "boolean", "VARCHAR": "string"}
DB_FILE = "fleetwatch.duckdb"


class EmbeddedStore:
    """The `Store` on a local DuckDB file (`embedded:///path/to/dir`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(str(self.directory / DB_FILE))
        except duckdb.IOException as exc:
            raise StoreLocked(f"{self.directory / DB_FILE} is in use by another process: {exc}") from None
        self._lock = threading.Lock()
        self._columns: dict[str, dict[str, Kind]] = {}
        self._tags: dict[str, list[str]] = {}

    # -- writes ---------------------------------------------------------------------------------
    def write_frames(self, batch: FrameBatch) -> int:
        return self._write(frame_points(batch))

    def write_table(
        self, measurement: str, time: np.ndarray, tags: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]
    ) -> int:
        return self._write(table_points(measurement, time, tags, fields))

    def _write(self, points: Points) -> int:
        if not len(points):
            return 0
        table = points.measurement
        data: dict[str, np.ndarray] = {TIME: points.time}
        data.update({k: np.asarray(v, dtype=str) for k, v in points.tags.items()})
        for name, values in points.fields.items():
            data[name] = values
        with self._lock:
            try:
                known = self._ensure_table(points)
                for name, kind in points.kinds().items():
                    if known.get(name, kind) != kind:
                        raise SinkRejected(
                            f"field type conflict: {table}.{name} is {known[name]} in the store, got {kind}"
                        )
                names = list(data)
                quoted = ", ".join(f'"{n}"' for n in names)
                self._conn.register("_batch", data)
                try:
                    self._conn.execute(f'INSERT OR REPLACE INTO "{table}" ({quoted}) SELECT {quoted} FROM _batch')
                finally:
                    self._conn.unregister("_batch")
            except duckdb.ConstraintException as exc:
                raise SinkRejected(str(exc)) from None
            except (duckdb.IOException, duckdb.InternalException) as exc:
                raise SinkUnavailable(str(exc)) from None
        return len(points)

    def _ensure_table(self, points: Points) -> dict[str, Kind]:
        table = points.measurement
        known = self._columns.get(table) or self._describe(table)
        if not known:
            cols = [f'"{TIME}" BIGINT NOT NULL']
            cols += [f'"{t}" VARCHAR NOT NULL' for t in points.tags]
            cols += [f'"{f}" {_SQL_TYPE[k]}' for f, k in points.kinds().items()]
            key = ", ".join(f'"{k}"' for k in (*points.key, TIME))
            self._conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(cols)}, PRIMARY KEY ({key}))')
            known = self._describe(table)
        new_tags = [t for t in points.tags if t not in known]
        if new_tags:
            raise SinkRejected(f"{table}: tags {new_tags} are not in the table's key {self._tags[table]}")
        for name, kind in points.kinds().items():
            if name not in known:
                self._conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {_SQL_TYPE[kind]}')
                known[name] = kind
        self._columns[table] = known
        return known

    def _describe(self, table: str) -> dict[str, Kind]:
        """Column kinds of a table (empty when it does not exist); remembers its tags (VARCHAR NOT NULL:
        fields may be missing, a missing tag is "" instead)."""
        rows = self._conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        self._tags[table] = [name for name, sql_type, nullable in rows if sql_type == "VARCHAR" and nullable == "NO"]
        return {name: _KIND.get(sql_type, "string") for name, sql_type, _ in rows}

    # -- reads ----------------------------------------------------------------------------------
    def read_table(
        self,
        measurement: str,
        start: int,
        end: int,
        *,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, np.ndarray]:
        check_name(measurement, "measurement")
        with self._lock:
            known = self._columns.get(measurement) or self._describe(measurement)
            if not known:
                return {TIME: np.empty(0, dtype=np.int64)}
            self._columns[measurement] = known
            tags = self._tags[measurement]
            wanted = [TIME, *tags] + [c for c in (columns if columns is not None else known) if c not in (TIME, *tags)]
            wanted = [c for c in wanted if c in known]
            clauses, params = [f'"{TIME}" >= ?', f'"{TIME}" < ?'], [int(start), int(end)]
            for tag, values in (where or {}).items():
                check_name(tag, "tag")
                if tag not in known:
                    return {c: column([], known[c]) for c in wanted}
                clauses.append(f'"{tag}" IN (SELECT unnest(?))')
                params.append([str(v) for v in values])
            order = ", ".join(f'"{c}"' for c in sort_order(tags))
            selected = ", ".join(f'"{c}"' for c in wanted)
            sql = f'SELECT {selected} FROM "{measurement}" WHERE {" AND ".join(clauses)} ORDER BY {order}'
            result = self._conn.execute(sql, params).fetchnumpy()
        return {c: column(result[c], known[c]) if c in result else column([], known[c]) for c in wanted}

    def read_frames(
        self, start: int, end: int, *, schema: Schema, devices: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        columns, where = frame_query(schema, devices)
        return frames_from_table(self.read_table(TELEMETRY, start, end, columns=columns, where=where), schema)

    def ping(self) -> None:
        with self._lock:
            try:
                self._conn.execute("SELECT 1").fetchall()
            except duckdb.Error as exc:
                raise SinkUnavailable(str(exc)) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
