"""The embedded store (the default): one DuckDB file in a directory, no server to run.

Layout: a table per measurement, created on first write: `time` BIGINT (Unix s), one VARCHAR NOT NULL
DEFAULT '' column per tag, and nullable typed columns for the fields (BIGINT, DOUBLE, BOOLEAN, VARCHAR).
Tags are the NOT NULL VARCHAR columns, so the file describes itself. A field seen for the first time is
added with ALTER TABLE; a field written with another kind than it has is a `field type conflict`
(SinkRejected), as in InfluxDB. The primary key is the measurement's key tags and time — (device, schema,
time) for `telemetry`, every tag of the first write for other measurements, whose tag set is then fixed
— and a rewrite updates the row: the fields it carries are overwritten, the others kept (as InfluxDB
merges a point written twice), so a re-sent frame overwrites itself.

Device codes: a table with a `device` tag also has `_device_code` INTEGER NOT NULL, the device's code in
the dictionary `_devices` (code, device UNIQUE), one row per device id ever written, its codes from the
sequence `_device_code_sequence` and never reused. Names that start with "_" are the store's own: no
measurement, tag or field name can (`check_name`), and reads never return them. A table written before
the store coded devices (an earlier version) is read as it was, sorted by DuckDB, until the store's first
write to it codes its rows (one UPDATE of the table, in one transaction).

Writes scan the numpy columns directly (DuckDB's replacement scan of a dict of arrays; no pandas; per row,
only a dict look-up of the device's code). The common case, new points, is a plain INSERT; only when that
meets an existing key (a re-sent frame) does the batch go in again as an upsert (INSERT ... ON CONFLICT DO
UPDATE), deduplicated first (the last point of a key in the batch wins). The plain INSERT is about twice as
fast as the upsert. A device's first write also adds it to `_devices`.

Reads: one query through DuckDB's relational API (values as constants, never in SQL text), rows in table
order, numbers instead of strings where it can (the device's code; the few firmware versions, models and
schemas as their position among the values read so far); then numpy sorts the rows by (the device id's
place among all ids, time) and takes every column in that order, unless they are in that order already.
The ids and their places come from `_devices`, read again only when a row has a code this process has not
seen. DuckDB sorting a window of whole rows by device id, and handing over every id as a new Python
string, cost more than that (docs/benchmarks.md, the drift cycle).

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
from itertools import repeat
from pathlib import Path

import duckdb
import numpy as np
from duckdb import ColumnExpression, ConstantExpression, Expression, FunctionExpression

from fleetwatch.frames import FrameBatch, Schema
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, StoreLocked
from fleetwatch.sinks.model import (
    SORT_TAG,
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
#: The dictionary of device ids (a code for every device id written), the sequence its codes come from, and
#: the column with the device's code in every table with a device tag. The store's own names start with
#: "_": no measurement, tag or field name can (`check_name`).
DEVICES = "_devices"
CODE_SEQUENCE = "_device_code_sequence"
DEVICE_CODE = "_device_code"
_UNAVAILABLE = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.ConnectionException, duckdb.FatalException)


class _Table:
    """What the store knows of one table: the kind of every column, its tags, its primary key, and whether
    its rows carry their device's code (a table with a device tag written before the codes existed does
    not, until the store writes to it)."""

    def __init__(self, kinds: dict[str, Kind], tags: list[str], key: list[str], device_codes: bool) -> None:
        self.kinds = kinds
        self.tags = tags
        self.key = key
        self.device_codes = device_codes


class _Devices:
    """The store's dictionary of device ids (table `_devices`: code, device) as this process knows it.

    The writer codes the device ids of every write, adding the new ones to the table; readers turn the
    codes of the rows they read back into ids, and into each id's place among all ids in sorted order,
    reading the table again when a code is new to them. Codes are never reused or changed.
    """

    def __init__(self) -> None:
        #: the writer's: device id -> code, for the ids it has written
        self._codes: dict[str, int] = {}
        #: the readers': (device id by code, place of that id among all ids in sorted order by code), both
        #: replaced at once; -1 for a code that no device has
        self._known: tuple[np.ndarray, np.ndarray] = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64))

    def codes(self, cursor: duckdb.DuckDBPyConnection, devices: np.ndarray) -> np.ndarray:
        """The code of each of `devices` (str); ids not in the table yet are added. Under the write lock."""
        known = self._codes
        codes = np.fromiter(map(known.get, devices.tolist(), repeat(-1)), dtype=np.int64, count=len(devices))
        missing = codes < 0
        if missing.any():
            # Read by DuckDB's replacement scan, like the points of a write.
            _fleetwatch_devices = {"device": np.unique(devices[missing].astype(str))}
            cursor.execute(
                f"INSERT INTO {DEVICES} SELECT nextval('{CODE_SEQUENCE}'), device FROM _fleetwatch_devices "
                f"WHERE device NOT IN (SELECT device FROM {DEVICES})"
            )
            table = cursor.execute(
                f"SELECT device, code FROM {DEVICES} WHERE device IN (SELECT device FROM _fleetwatch_devices)"
            ).fetchnumpy()
            known.update(zip(table["device"].tolist(), table["code"].tolist(), strict=True))
            codes[missing] = [known[d] for d in devices[missing].tolist()]
        return codes

    def lookup(self, cursor: duckdb.DuckDBPyConnection, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(device id by code, place in sorted order by code) for every one of `codes`, read in `cursor`'s
        transaction (the one that read the codes) when one of them is new."""
        names, places = self._known
        if len(codes) and (codes.max() >= len(places) or (places[codes] < 0).any()):
            # in the order DuckDB sorts VARCHAR (UTF-8 bytes, that is code points)
            table = cursor.execute(f"SELECT code, device FROM {DEVICES} ORDER BY device").fetchnumpy()
            code = np.asarray(table["code"], dtype=np.int64)
            size = int(code.max()) + 1 if len(code) else 0
            names = np.full(size, None, dtype=object)
            names[code] = table["device"]
            places = np.full(size, -1, dtype=np.int64)
            places[code] = np.arange(len(code))
            self._known = (names, places)
        return names, places


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
        self._devices = _Devices()

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
        self,
        start: int,
        end: int,
        *,
        schema: Schema,
        devices: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Telemetry of one schema as columns (`sinks.model.frame_kinds`), sorted by (device, time)."""
        fields, where = frame_query(schema, devices, columns)
        table = self._read(TELEMETRY, start, end, fields, where, few=FEW_VALUED_TAGS)
        return frames_from_table(table, schema, columns)

    def _read(
        self,
        measurement: str,
        start: int,
        end: int,
        columns: Sequence[str] | None,
        where: Mapping[str, Sequence[str]] | None,
        few: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """`read_table` (see Reads in the module's docstring); the tags in `few` (a few distinct values in
        any window) are read as numbers into their values, the device as its code (`_Devices`), and a tag
        that `where` fixes to one value is not read at all: a string column of a 100,000-row window costs
        DuckDB 100,000 new Python strings."""
        check_name(measurement, "measurement")
        with self._reader() as cursor:
            table = _describe(cursor, measurement)
            fields = [name for name in table.kinds if name != TIME and name not in table.tags]
            wanted = fields if columns is None else [check_name(c, "column") for c in columns if c not in table.tags]
            if not table.kinds:
                return {TIME: empty_column("integer"), **{name: empty_column("float") for name in wanted}}
            # DuckDB's relational API, the values as constants (never in SQL text): `execute` of the same
            # query, then `fetchnumpy`, took about twice as long (duckdb 1.5)
            condition = (ColumnExpression(TIME) >= ConstantExpression(int(start))) & (
                ColumnExpression(TIME) < ConstantExpression(int(end))
            )
            fixed: dict[str, str] = {}
            for tag, values in (where or {}).items():
                allowed = sorted({str(v) for v in values})
                if tag in table.tags and allowed:
                    tag_expression = ColumnExpression(check_name(tag, "tag"))
                    if len(allowed) == 1:
                        condition &= tag_expression == ConstantExpression(allowed[0])
                        fixed[tag] = allowed[0]
                    else:
                        condition &= tag_expression.isin(*(ConstantExpression(v) for v in allowed))
                elif tag in table.tags or "" not in allowed:
                    condition &= ConstantExpression(False)
            rows = cursor.table(measurement).filter(condition)
            selected = [TIME, *table.tags, *(name for name in wanted if name in table.kinds)]
            coded = [tag for tag in table.tags if tag in few and tag not in fixed]
            # rows in table order and the device as its code, sorted here; else (a table without devices,
            # or written before the store coded them) sorted by DuckDB
            by_code = table.device_codes and SORT_TAG not in fixed
            # one transaction (one snapshot of the table and the dictionary of device ids)
            cursor.begin()
            # numbers into the values read before; a value not among them comes back NULL, and then the
            # distinct values are read and the rows again (first, when this process has read none yet)
            unread = any((measurement, tag) not in self._values for tag in coded)
            for fresh in (True,) if unread else (False, True):
                if fresh:
                    distinct = rows.aggregate(_distinct_lists(coded)).fetchone()
                    for tag, found in zip(coded, distinct, strict=True):
                        self._values[(measurement, tag)] = np.array(sorted(found or []), dtype=object)
                values = {tag: self._values.get((measurement, tag), np.array([], dtype=object)) for tag in coded}
                expressions = [
                    _position(values[name], name) if name in values else ColumnExpression(name)
                    for name in selected
                    if name not in fixed and not (by_code and name == SORT_TAG)
                ]
                if by_code:
                    raw = rows.select(*expressions, ColumnExpression(DEVICE_CODE)).fetchnumpy()
                else:
                    sort_by = [name for name in sort_order(table.tags) if name not in fixed]
                    raw = rows.select(*expressions).order(_quoted(sort_by)).fetchnumpy()
                if not any(np.ma.is_masked(raw[tag]) for tag in coded):
                    break
            if by_code:
                codes = np.asarray(raw[DEVICE_CODE], dtype=np.int64)
                names, places = self._devices.lookup(cursor, codes)
            cursor.commit()
        order = _by_device_and_time(places[codes], raw[TIME]) if by_code else slice(None)
        n = len(raw[TIME])
        # Tags are NOT NULL: they come back as object arrays of str already.
        result = {}
        for name in selected:
            if name in fixed:
                result[name] = np.full(n, fixed[name], dtype=object)
            elif by_code and name == SORT_TAG:
                result[name] = names[codes[order]]
            elif name in values:
                result[name] = values[name][np.asarray(raw[name], dtype=np.int64)[order] - 1]
            else:
                in_order = raw[name][order]
                result[name] = in_order if name in table.tags else column(in_order, table.kinds[name])
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
            # Read by DuckDB's replacement scan (`FROM _fleetwatch_points`); no table has that name.
            columns = {TIME: points.time, **points.tags, **points.fields}
            if table.device_codes:
                device = points.tags.get(SORT_TAG, np.full(len(points), "", dtype=object))
                columns[DEVICE_CODE] = self._devices.codes(cursor, device)
            _fleetwatch_points = {name: _scannable(values) for name, values in columns.items()}
            names = _quoted(list(columns))
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
        if SORT_TAG in table.tags and not table.device_codes:
            _add_device_codes(cursor, name)
            table.device_codes = True
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
    if SORT_TAG in points.tags:
        _create_devices(cursor)
        columns.append(f'"{DEVICE_CODE}" INTEGER NOT NULL')
    columns += [f'"{field}" {_SQL_TYPE[kind]}' for field, kind in kinds.items()]
    key = _quoted([*points.key, TIME])
    cursor.execute(f'CREATE TABLE IF NOT EXISTS "{points.measurement}" ({", ".join(columns)}, PRIMARY KEY ({key}))')


def _create_devices(cursor: duckdb.DuckDBPyConnection) -> None:
    """The dictionary of device ids and the sequence of its codes, unless they exist."""
    cursor.execute(f"CREATE SEQUENCE IF NOT EXISTS {CODE_SEQUENCE} START 0 MINVALUE 0")
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {DEVICES} (code INTEGER NOT NULL, device VARCHAR NOT NULL UNIQUE)")


def _add_device_codes(cursor: duckdb.DuckDBPyConnection, measurement: str) -> None:
    """Codes for the rows of a table written before the store coded devices: its ids into the dictionary,
    then every row's code, in one transaction (once, at the store's first write to the table)."""
    _create_devices(cursor)
    table, device = f'"{measurement}"', f'"{measurement}"."{SORT_TAG}"'
    cursor.begin()
    try:
        cursor.execute(f'ALTER TABLE {table} ADD COLUMN "{DEVICE_CODE}" INTEGER')
        cursor.execute(
            f"INSERT INTO {DEVICES} SELECT nextval('{CODE_SEQUENCE}'), device FROM (SELECT DISTINCT {device} "
            f"AS device FROM {table} WHERE {device} NOT IN (SELECT device FROM {DEVICES}))"
        )
        cursor.execute(f'UPDATE {table} SET "{DEVICE_CODE}" = d.code FROM {DEVICES} d WHERE {device} = d.device')
    except BaseException:
        cursor.rollback()
        raise
    cursor.commit()
    # DuckDB adds the constraint only after the update is committed
    cursor.execute(f'ALTER TABLE {table} ALTER COLUMN "{DEVICE_CODE}" SET NOT NULL')


def _describe(cursor: duckdb.DuckDBPyConnection, measurement: str) -> _Table:
    """Column kinds, tags and primary key of a table (empty when it does not exist)."""
    try:
        rows = cursor.execute('SELECT name, type, "notnull", pk FROM pragma_table_info(?)', [measurement]).fetchall()
    except duckdb.CatalogException:
        rows = []
    kinds = {name: _KIND.get(sql_type, "string") for name, sql_type, _, _ in rows if not name.startswith("_")}
    tags = [name for name, sql_type, not_null, _ in rows if sql_type == "VARCHAR" and not_null]
    key = [name for name, _, _, in_key in rows if in_key]
    return _Table(kinds, tags, key, any(name == DEVICE_CODE for name, _, _, _ in rows))


def _scannable(values: np.ndarray) -> np.ndarray:
    """Strings as fixed-width unicode when none is missing: for object arrays duckdb 1.5 tries
    `import pandas` once per value (10x slower inserts when pandas is not installed)."""
    if values.dtype != object or not np.all(np.not_equal(values, None)):
        return values
    return values.astype(str)


def _by_device_and_time(places: np.ndarray, time: np.ndarray) -> np.ndarray | slice:
    """The order of rows by (device's place, time): all of them as they are when they are in that order
    already (rows written in order), else one sort of one integer per row (faster than np.lexsort) when
    both fit in it, as they do unless times span more than 2**63 / devices s."""
    if not len(time):
        return slice(None)
    offset = time - time.min()
    span = int(offset.max()) + 1
    if span * (int(places.max()) + 1) >= 2**63:
        return np.lexsort((time, places))
    key = places * span + offset
    return slice(None) if bool(np.all(key[1:] >= key[:-1])) else np.argsort(key)


def _position(values: np.ndarray, name: str) -> Expression:
    """The position (from 1) of column `name`'s value among `values` (str), NULL when it is none of them."""
    among = ConstantExpression(values.tolist()).cast(duckdb.list_type(duckdb.sqltype("VARCHAR")))
    return FunctionExpression("list_position", among, ColumnExpression(name)).alias(name)


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
