"""The InfluxDB store, through the v1-compatible HTTP API (influxd 1.x; 2.x and 3.x via DBRP + token).

Writes: the points of `sinks.model` as line protocol built from columns (`_lineprotocol`), gzip, precision
seconds, at most `chunk` points per request. A point is identified by its series (measurement + tags) and
time, so a rewrite overwrites it: replaying a spooled or quarantined batch never duplicates anything.

Failures (see `sinks.base`): connection errors, timeouts, 5xx, 429 and the 4xx that are about the store
(401/403 credentials, 404 database not found) raise SinkUnavailable; other 4xx raise SinkRejected with
InfluxDB's message. A 400 for a batch is often partial: influxd keeps the good points of the request and
drops the bad ones (`partial write: field type conflict ... dropped=N`). The store then still sends the
remaining chunks, and raises SinkRejected(partial=True) at the end; the pipeline quarantines the whole
batch, and a replay after the fix rewrites the good points identically.

Reads: InfluxQL over `/query` (chunked, epoch=s), parsed into numpy columns. Tag filters are quoted
string literals; names are checked plain names; so no caller text reaches InfluxQL unquoted. Long filters
(over `_MAX_LITERALS` values) are applied on the client instead of growing the statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fleetwatch.frames import FrameBatch, Schema
from fleetwatch.sinks._influx_http import InfluxHTTP, parse_url, quote_identifier, quote_string
from fleetwatch.sinks._lineprotocol import encode, encode_lines
from fleetwatch.sinks.base import SinkRejected
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
    tag_column,
)

_MAX_LITERALS = 100
_NS = 1_000_000_000
_MAX_NS = 2**63 - 2
_KINDS: dict[str, Kind] = {"float": "float", "integer": "integer", "boolean": "boolean", "string": "string"}


def line_protocol(points: Points) -> np.ndarray:
    """The line protocol this store sends for `points`, one str per point (for tests, benchmarks, tools)."""
    return encode_lines(points)


class InfluxStore:
    """A `Store` on one InfluxDB database (and retention policy), from an `influxdb://` URL."""

    def __init__(self, url: str) -> None:
        self.target = parse_url(url)
        self._http = InfluxHTTP(self.target)

    def write_frames(self, batch: FrameBatch) -> int:
        """One `telemetry` point per frame; returns the number written."""
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
        check_name(measurement, "measurement")
        tags, fields = self._catalog(measurement)
        wanted = list(fields) if columns is None else [check_name(c, "column") for c in columns if c not in tags]
        if not fields:
            return {TIME: empty_column("integer"), **{c: empty_column("float") for c in wanted}}
        where = {check_name(k, "tag"): [str(v) for v in values] for k, values in (where or {}).items()}
        conditions = [f"time >= {_ns(start)}", f"time < {_ns(end)}"]
        conditions += [_any_of(tag, values) for tag, values in where.items() if len(values) <= _MAX_LITERALS]
        selected = [name for name in wanted if name in fields]
        text = ", ".join(
            [
                *(f"{quote_identifier(f)}::field" for f in selected or fields),
                *(f"{quote_identifier(t)}::tag" for t in tags),
            ]
        )
        statement = f"SELECT {text} FROM {self._source(measurement)} WHERE {' AND '.join(conditions)}"
        names, rows = self._rows(statement)
        raw = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {}
        result = {TIME: column(list(raw.get(TIME, ())), "integer")}
        result.update({t: tag_column(list(raw.get(t, ()))) for t in tags})
        for name in wanted:
            kind = fields.get(name, "float")
            result[name] = column(list(raw[name]), kind) if name in raw else _missing(kind, len(result[TIME]))
        keep = np.ones(len(result[TIME]), dtype=bool)
        for tag, values in where.items():
            keep &= np.isin(result[tag] if tag in result else np.full(len(keep), ""), values)
        return _sorted({k: v[keep] for k, v in result.items()} if not keep.all() else result)

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
        table = self.read_table(TELEMETRY, start, end, columns=fields, where=where)
        return frames_from_table(table, schema, columns)

    def ping(self) -> None:
        """Raises SinkUnavailable unless InfluxDB answers."""
        self._http.ping()

    def close(self) -> None:
        self._http.close()

    def _write(self, points: Points) -> int:
        rejected: list[SinkRejected] = []
        chunk = self.target.chunk_points
        for first in range(0, len(points), chunk):
            try:
                self._http.write(encode(points.take(slice(first, first + chunk))))
            except SinkRejected as exc:
                rejected.append(exc)
        if rejected:
            requests = -(-len(points) // chunk)
            raise SinkRejected(
                f"{rejected[0].reason} ({len(rejected)} of {requests} write requests rejected)",
                partial=len(rejected) < requests or any(r.partial for r in rejected),
            )
        return len(points)

    def _source(self, measurement: str) -> str:
        if self.target.rp:
            return f"{quote_identifier(self.target.rp)}.{quote_identifier(measurement)}"
        return quote_identifier(measurement)

    def _catalog(self, measurement: str) -> tuple[list[str], dict[str, Kind]]:
        """The measurement's tag keys and field kinds (empty when it holds no data yet)."""
        source = self._source(measurement)
        tags: list[str] = []
        fields: dict[str, Kind] = {}
        for statement, series in self._http.query(f"SHOW TAG KEYS FROM {source}; SHOW FIELD KEYS FROM {source}"):
            for value in series.get("values", []):
                if statement == 0:
                    tags.append(value[0])
                else:
                    fields.setdefault(value[0], _KINDS[value[1]])
        return tags, fields

    def _rows(self, statement: str) -> tuple[list[str], list[list]]:
        names: list[str] = []
        rows: list[list] = []
        for _, series in self._http.query(statement):
            names = series["columns"]
            rows.extend(series.get("values", []))
        return names, rows


def _ns(seconds: int) -> int:
    """Unix seconds -> InfluxQL nanoseconds, within the int64 range InfluxDB keeps."""
    return max(min(int(seconds) * _NS, _MAX_NS), -_MAX_NS)


def _any_of(tag: str, values: Sequence[str]) -> str:
    if not values:
        return "false"
    return "(" + " OR ".join(f"{quote_identifier(tag)} = {quote_string(v)}" for v in values) + ")"


def _missing(kind: Kind, n: int) -> np.ndarray:
    return column([None] * n, kind)


def _sorted(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = [
        columns[k] if k == TIME else np.asarray(columns[k], dtype=np.dtypes.StringDType()) for k in sort_order(columns)
    ]
    order = np.lexsort(keys[::-1])
    return {name: values[order] for name, values in columns.items()}
