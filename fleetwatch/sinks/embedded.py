"""The embedded store (the default): one DuckDB file in a directory, no server to run.

Layout: a table per measurement, created on first write: `time` BIGINT (Unix s), one VARCHAR NOT NULL
DEFAULT '' column per tag, and nullable typed columns for the fields (BIGINT, DOUBLE, BOOLEAN, VARCHAR).
Tags are the NOT NULL VARCHAR columns, so the file describes itself. A field seen for the first time is
added with ALTER TABLE; a field written with another kind than it has is a `field type conflict`
(SinkRejected), as in InfluxDB. The primary key is the measurement's key tags and time — (device, schema,
time) for `telemetry`, every tag of the first write for other measurements, whose tag set is then fixed
— and a rewrite updates the row: the fields it carries are overwritten, the others kept (as InfluxDB
merges a point written twice), so a re-sent frame overwrites itself.

Writes scan the numpy columns directly (DuckDB's replacement scan of a dict of arrays; no pandas, no
per-row Python). The common case, new points, is a plain INSERT; only when that meets an existing key
(a re-sent frame) does the batch go in again as an upsert (INSERT ... ON CONFLICT DO UPDATE), deduplicated
first (the last point of a key in the batch wins). The plain INSERT is about twice as fast as the upsert.

Threads: the store holds one DuckDB database per file and process. The writer (the pipeline) uses its own
cursor under a write lock; every read opens a fresh cursor (a connection to the same database), so reads
run in parallel with the writer and see the last committed writes (DuckDB's MVCC).

Processes: DuckDB lets one process open a file read-write, and then no other process may open it at all,
not even read-only. While the daemon runs, a second process (a CLI command) gets StoreLocked naming the
process that holds the file: run the command through the daemon, stop the daemon first, or use InfluxDB
when several processes need the store. `read_only=True` works when no process writes (several readers may
share the file, e.g. reports while the daemon is stopped); within one process it shares the database the
process already has open, and this store refuses writes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    empty_column,
    frame_points,
    frame_query,
    frames_from_table,
    sort_order,
    table_points,
)

DB_FILE = "fleetwatch.duckdb"
_SQL_TYPE: dict[Kind, str] = {"integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN", "string": "VARCHAR"}
_KIND: dict[str, Kind] = {sql: kind for kind, sql in _SQL_TYPE.items()}
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")
#: Telemetry tags with a few distinct values in any window (a fleet runs a few firmware versions and models).
FEW_VALUED_TAGS = ("fw_version", "model_id", "schema")
_UNAVAILABLE = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.ConnectionException, duckdb.FatalException)


class _Table:
    """What the store knows of one table: the kind of every column, its tags, its primary key."""

    def __init__(self, kinds: dict[str, Kind], tags: list[str], key: list[str]) -> None:
        self.kinds = kinds
        self.tags = tags
        self.key = key


class EmbeddedStore:
    """The `Store` on a DuckDB file in `directory` (`embedded:///path/to/dir`)."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path, read_only)
        self._write_lock = threading.Lock()
        self._cursor_lock = threading.Lock()
        self._writer = None if read_only else self._db.cursor()
        self._tables: dict[str, _Table] = {}
        #: (measurement, tag) -> the tag's values read so far, for the tags `_read` reads as numbers
        self._values: dict[tuple[str, str], np.ndarray] = {}

    def write_frames(self, batch: FrameBatch) -> int:
        """One `telemetry` point per frame (upsert on device, schema, time); returns the number written."""
        return self._write(frame_points(batch))

    def write_table(
        self,
        measurement: str,
        time: np.ndarray,
        tags: Mapping[str, np.ndarray],
        fields: Mapping[str, np.ndarray],
    ) -> int:
        """Points of any measurement from columns (see `sinks.model.table_points`)."""
        return self._write(table_points(measurement, time, tags, fields))

    def read_table(
        self,
        measurement: str,
        start: int,
        end: int,
        *,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows with start <= time < end: time, every tag, and the fields in `columns` (all when None)."""
        return self._read(measurement, start, end, columns, where, few=())

    def read_frames(
        self, start: int, end: int, *, schema: Schema, devices: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Telemetry of one schema as columns (`sinks.model.frame_kinds`), sorted by (device, time)."""
        columns, where = frame_query(schema, devices)
        table = self._read(TELEMETRY, start, end, columns, where, few=FEW_VALUED_TAGS)
        return frames_from_table(table, schema)

    def _read(
        self,
        measurement: str,
        start: int,
        end: int,
        columns: Sequence[str] | None,
        where: Mapping[str, Sequence[str]] | None,
        few: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """`read_table`; the tags in `few` (a few distinct values in any window) are read as numbers into
        their values, and a tag that `where` fixes to one value is not read at all: a string column of a
        100,000-row window costs DuckDB 100,000 new Python strings."""
        check_name(measurement, "measurement")
        with self._reader() as cursor:
            table = _describe(cursor, measurement)
            fields = [name for name in table.kinds if name != TIME and name not in table.tags]
            wanted = fields if columns is None else [check_name(c, "column") for c in columns if c not in table.tags]
            if not table.kinds:
                return {TIME: empty_column("integer"), **{name: empty_column("float") for name in wanted}}
            clauses = ['"time" >= ?', '"time" < ?']
            params: list[object] = [int(start), int(end)]
            fixed: dict[str, str] = {}
            for tag, values in (where or {}).items():
                allowed = [str(v) for v in values]
                if tag in table.tags:
                    clauses.append(f'"{check_name(tag, "tag")}" IN (SELECT unnest(?::VARCHAR[]))')
                    params.append(allowed)
                    if len(set(allowed)) == 1:
                        fixed[tag] = allowed[0]
                elif "" not in allowed:
                    clauses.append("false")
            rows = f'FROM "{measurement}" WHERE {" AND ".join(clauses)}'
            selected = [TIME, *table.tags, *(name for name in wanted if name in table.kinds)]
            coded = [tag for tag in table.tags if tag in few and tag not in fixed]
            # numbers into the values read before; a value not among them comes back NULL, and then the
            # distinct values are read and the rows again, in one transaction (one snapshot of the table)
            for fresh in (False, True):
                if fresh:
                    cursor.begin()
                    distinct = cursor.execute(f"SELECT {_distinct_lists(coded)} {rows}", params).fetchone()
                    for tag, found in zip(coded, distinct, strict=True):
                        self._values[(measurement, tag)] = np.array(sorted(found or []), dtype=object)
                values = {tag: self._values.get((measurement, tag), np.array([], dtype=object)) for tag in coded}
                expressions = [
                    f'list_position(?::VARCHAR[], "{name}") AS "{name}"' if name in values else f'"{name}"'
                    for name in selected
                    if name not in fixed
                ]
                sql = f"SELECT {', '.join(expressions)} {rows} ORDER BY {_quoted(sort_order(table.tags))}"
                raw = cursor.execute(sql, [*(v.tolist() for v in values.values()), *params]).fetchnumpy()
                if fresh:
                    cursor.commit()
                if not any(np.ma.is_masked(raw[tag]) for tag in coded):
                    break
        n = len(raw[TIME])
        # Tags are NOT NULL: they come back as object arrays of str already.
        result = {}
        for name in selected:
            if name in fixed:
                result[name] = np.full(n, fixed[name], dtype=object)
            elif name in values:
                result[name] = values[name][np.asarray(raw[name], dtype=np.int64) - 1]
            else:
                result[name] = raw[name] if name in table.tags else column(raw[name], table.kinds[name])
        for name in wanted:
            if name not in table.kinds:
                result[name] = np.full(n, np.nan)
        return result

    def ping(self) -> None:
        """Raises SinkUnavailable when the database cannot answer (closed, or its file failed)."""
        with self._reader() as cursor:
            cursor.execute("SELECT 1").fetchall()

    def close(self) -> None:
        """Close the database (DuckDB checkpoints the file when the last connection of the process closes)."""
        with self._write_lock, self._cursor_lock:
            self._db.close()

    def _write(self, points: Points) -> int:
        if self.read_only:
            raise PermissionError(f"{self.path} was opened read-only")
        if not len(points):
            return 0
        with self._write_lock, _classified():
            cursor = self._writer
            table = self._prepare(cursor, points)
            # Read by DuckDB's replacement scan (`FROM _fleetwatch_points`); no table name starts with "_".
            columns = {TIME: points.time, **points.tags, **points.fields}
            _fleetwatch_points = {name: _scannable(values) for name, values in columns.items()}
            names = _quoted([TIME, *points.tags, *points.fields])
            try:
                cursor.execute(f'INSERT INTO "{points.measurement}" ({names}) SELECT {names} FROM _fleetwatch_points')
            except duckdb.ConstraintException:
                key = _quoted(table.key)
                update = ", ".join(
                    f'"{c}" = excluded."{c}"' for c in (*points.tags, *points.fields) if c not in table.key
                )
                cursor.execute(
                    f'INSERT INTO "{points.measurement}" ({names}) SELECT {names} FROM '
                    f"(SELECT *, row_number() OVER () AS _row FROM _fleetwatch_points) "
                    f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _row DESC) = 1 "
                    f"ON CONFLICT ({key}) DO UPDATE SET {update}"
                )
        return len(points)

    def _prepare(self, cursor: duckdb.DuckDBPyConnection, points: Points) -> _Table:
        """The table of `points`, created or widened as needed; raises SinkRejected on a conflict."""
        name = points.measurement
        kinds = points.kinds()
        table = self._tables.get(name)
        if table is None or not set(kinds) <= set(table.kinds):
            table = _describe(cursor, name)
        if not table.kinds:
            _create(cursor, points, kinds)
            table = _describe(cursor, name)
        new_tags = [t for t in points.tags if t not in table.tags]
        if new_tags:
            raise SinkRejected(f"{name}: tags {new_tags} are not among its tags {table.tags} (fixed at first write)")
        for field, kind in kinds.items():
            stored = table.kinds.get(field)
            if field in table.tags or field == TIME:
                raise SinkRejected(f"field type conflict: {name}.{field} is a tag in the store, written as a field")
            if stored is None:
                cursor.execute(f'ALTER TABLE "{name}" ADD COLUMN IF NOT EXISTS "{field}" {_SQL_TYPE[kind]}')
                table.kinds[field] = kind
            elif stored != kind:
                raise SinkRejected(f"field type conflict: {name}.{field} is {stored} in the store, written as {kind}")
        self._tables[name] = table
        return table

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._cursor_lock, _classified():
            cursor = self._db.cursor()
        try:
            with _classified():
                yield cursor
        finally:
            with self._cursor_lock:
                cursor.close()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.ConnectionException:
        if read_only:  # this process already has the file open read-write: share that database
            return duckdb.connect(str(path))
        raise
    except duckdb.IOException as exc:
        holder = _LOCK_HOLDER.search(str(exc))
        if holder:
            raise StoreLocked(
                f"{path} is in use by another process ({holder.group(1)}, PID {holder.group(2)}; usually the "
                "fleetwatch daemon). DuckDB lets one process open the file: run this through the daemon, stop "
                "the daemon first, or use InfluxDB for a store that several processes share."
            ) from None
        if read_only and not path.exists():
            raise SinkUnavailable(f"no embedded store at {path} yet (nothing has been written)") from None
        raise SinkUnavailable(f"cannot open {path}: {exc}") from None


def _create(cursor: duckdb.DuckDBPyConnection, points: Points, kinds: dict[str, Kind]) -> None:
    columns = [f'"{TIME}" BIGINT NOT NULL']
    columns += [f"\"{tag}\" VARCHAR NOT NULL DEFAULT ''" for tag in points.tags]
    columns += [f'"{field}" {_SQL_TYPE[kind]}' for field, kind in kinds.items()]
    key = _quoted([*points.key, TIME])
    cursor.execute(f'CREATE TABLE IF NOT EXISTS "{points.measurement}" ({", ".join(columns)}, PRIMARY KEY ({key}))')


def _describe(cursor: duckdb.DuckDBPyConnection, measurement: str) -> _Table:
    """Column kinds and tags of a table (empty when it does not exist)."""
    rows = cursor.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [measurement],
    ).fetchall()
    kinds = {name: _KIND.get(sql_type, "string") for name, sql_type, _ in rows}
    tags = [name for name, sql_type, nullable in rows if sql_type == "VARCHAR" and nullable == "NO"]
    key = cursor.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE schema_name = 'main' AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [measurement],
    ).fetchall()
    return _Table(kinds, tags, list(key[0][0]) if key else [])


def _scannable(values: np.ndarray) -> np.ndarray:
    """Strings as fixed-width unicode when none is missing: for object arrays duckdb 1.5 tries
    `import pandas` once per value (10x slower inserts when pandas is not installed)."""
    if values.dtype != object or not np.all(np.not_equal(values, None)):
        return values
    return values.astype(str)


def _distinct_lists(names: Sequence[str]) -> str:
    """SQL for the distinct values of each of the columns `names` (checked plain names), as lists."""
    return ", ".join(f'list(DISTINCT "{name}")' for name in names)


def _quoted(names: Sequence[str]) -> str:
    """Column names (checked plain names) as a quoted SQL list."""
    return ", ".join(f'"{name}"' for name in names)


@contextmanager
def _classified() -> Iterator[None]:
    """DuckDB errors -> SinkUnavailable (I/O, memory, closed) or SinkRejected (data the table refuses)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise SinkUnavailable(f"embedded store: {exc}") from exc
    except (duckdb.ConversionException, duckdb.ConstraintException, duckdb.InvalidInputException) as exc:
        raise SinkRejected(str(exc)) from exc
