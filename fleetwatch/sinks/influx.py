"""InfluxDB through the v1-compatible HTTP API: `/write` (line protocol) and `/query` (InfluxQL).

The portable data path: influxd 1.x serves it natively, InfluxDB 2.x and 3.x serve it for a database
mapped to a bucket (DBRP) with a token. URL: `influxdb://[user:password@]host:port/database[?rp=...&
token=...&tls=1&timeout=10&batch=5000]`.

Line protocol is built from columns with numpy string operations (one pass per column, not per point),
gzip-compressed, `precision=s`, in chunks of `batch` points. Floats are written in their shortest
round-trip form, so they read back bit-exact.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import requests

from fleetwatch.frames import FrameBatch, Schema
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable
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
    present,
    sort_order,
    table_points,
)

_S = np.dtypes.StringDType()
_INFLUX_KIND: dict[str, Kind] = {"float": "float", "integer": "integer", "boolean": "boolean", "string": "string"}


def _escape(values: np.ndarray, chars: str) -> np.ndarray:
    """Backslash-escape each of `chars` (list a backslash first when it must be escaped too)."""
    out = values.astype(_S)
    for ch in chars:
        out = np.strings.replace(out, ch, "\\" + ch)
    return out


def _field_text(values: np.ndarray) -> np.ndarray:
    """Line protocol values of one field column ("" where the point has no value)."""
    kind = np.asarray(values).dtype.kind
    if kind == "f":
        text = values.astype(_S)
    elif kind in "iu":
        text = np.strings.add(values.astype(_S), "i")
    elif kind == "b":
        text = np.where(values, "true", "false").astype(_S)
    else:
        filled = np.where(np.equal(values, None), "", values).astype(_S)
        text = np.strings.add(np.strings.add('"', _escape(filled, '\\"')), '"')
    return np.where(present(values), text, np.array("", dtype=_S))


def line_protocol(points: Points) -> np.ndarray:
    """One line per point (StringDType array), built column by column."""
    n = len(points)
    lines = np.full(n, _escape(np.array([points.measurement]), ", ")[0], dtype=_S)
    for name, values in points.tags.items():
        piece = np.strings.add(f",{name}=", _escape(np.asarray(values), ",= "))
        lines = np.strings.add(lines, np.where(np.asarray(values) != "", piece, np.array("", dtype=_S)))
    fields = np.full(n, "", dtype=_S)
    for name, values in points.fields.items():
        text = _field_text(values)
        piece = np.where(text != "", np.strings.add(f"{name}=", text), text)
        sep = np.where((fields != "") & (piece != ""), ",", "").astype(_S)
        fields = np.strings.add(np.strings.add(fields, sep), piece)
    times = points.time.astype(_S)
    return np.strings.add(np.strings.add(np.strings.add(lines, " "), np.strings.add(fields, " ")), times)


class InfluxStore:
    """The `Store` on an InfluxDB v1-compatible HTTP API."""

    def __init__(self, url: str, session: requests.Session | None = None) -> None:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        scheme = "https" if query.get("tls") in ("1", "true") else "http"
        self.base = f"{scheme}://{parts.hostname}:{parts.port or 8086}"
        self.database = parts.path.strip("/")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.database):
            raise ValueError(f"influxdb database {self.database!r}: use letters, digits, _ and - only")
        self.rp = query.get("rp")
        self.timeout = float(query.get("timeout", 10))
        self.batch = int(query.get("batch", 5000))
        self.session = session or requests.Session()
        self.params: dict[str, str] = {"db": self.database}
        if self.rp:
            self.params["rp"] = self.rp
        if query.get("token"):
            self.session.headers["Authorization"] = f"Token {query['token']}"
        elif parts.username:
            self.params["u"] = unquote(parts.username)
            self.params["p"] = unquote(parts.password or "")
        self._field_kinds: dict[str, dict[str, Kind]] = {}
        self._tag_keys: dict[str, list[str]] = {}

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
        lines = line_protocol(points)
        for start in range(0, len(lines), self.batch):
            body = "\n".join(lines[start : start + self.batch].tolist()).encode("utf-8")
            response = self._request(
                "POST",
                "/write",
                params={**self.params, "precision": "s"},
                data=gzip.compress(body, compresslevel=1),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
            )
            if response.status_code != 204:
                message = _error(response)
                if response.status_code == 400:
                    raise SinkRejected(message, partial="partial write" in message)
                raise SinkUnavailable(f"influxdb answered {response.status_code}: {message}")
        self._field_kinds.pop(points.measurement, None)
        return len(points)

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
        kinds = self._kinds(measurement)
        tags = self._tag_keys.get(measurement, [])
        wanted_fields = [c for c in (columns if columns is not None else kinds) if c in kinds and c not in tags]
        clauses = [f"time >= {int(start)}s", f"time < {int(end)}s"]
        for tag, values in (where or {}).items():
            check_name(tag, "tag")
            if not values:
                clauses.append("false")
                continue
            clauses.append("(" + " OR ".join(f'"{tag}" = {_quote(v)}' for v in values) + ")")
        out: dict[str, list[Any]] = {TIME: [], **{t: [] for t in tags}, **{f: [] for f in wanted_fields}}
        if kinds:
            select = ", ".join(f'"{c}"' for c in wanted_fields) or "*"
            q = f'SELECT {select} FROM "{measurement}" WHERE {" AND ".join(clauses)} GROUP BY *'
            for series in self._query(q):
                n = len(series.get("values", []))
                rows = series.get("values", [])
                names = series["columns"]
                for i, name in enumerate(names):
                    if name in out:
                        out[name].extend(row[i] for row in rows)
                for tag in tags:
                    out[tag].extend([series.get("tags", {}).get(tag, "")] * n)
        result: dict[str, np.ndarray] = {TIME: np.asarray(out[TIME], dtype=np.int64)}
        result.update({t: np.asarray(out[t], dtype=object) for t in tags})
        result.update({f: column(out[f], kinds[f]) for f in wanted_fields})
        keys = [result[c] for c in reversed(sort_order(tags))]
        order = np.lexsort([k.astype(str) if k.dtype == object else k for k in keys]) if len(result[TIME]) else []
        return {k: v[order] for k, v in result.items()}

    def read_frames(
        self, start: int, end: int, *, schema: Schema, devices: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        columns, where = frame_query(schema, devices)
        return frames_from_table(self.read_table(TELEMETRY, start, end, columns=columns, where=where), schema)

    def _kinds(self, measurement: str) -> dict[str, Kind]:
        if measurement not in self._field_kinds:
            kinds: dict[str, Kind] = {}
            for series in self._query(f'SHOW FIELD KEYS FROM "{measurement}"'):
                for name, influx_type in series.get("values", []):
                    kinds[name] = _INFLUX_KIND.get(influx_type, "string")
            tags = [row[0] for s in self._query(f'SHOW TAG KEYS FROM "{measurement}"') for row in s.get("values", [])]
            self._field_kinds[measurement] = kinds
            self._tag_keys[measurement] = tags
        return self._field_kinds[measurement]

    def _query(self, q: str) -> list[dict[str, Any]]:
        response = self._request(
            "POST",
            "/query",
            params={**self.params, "epoch": "s", "chunked": "true", "chunk_size": "20000"},
            data={"q": q},
        )
        if response.status_code != 200:
            raise SinkUnavailable(f"influxdb answered {response.status_code} to a query: {_error(response)}")
        series: list[dict[str, Any]] = []
        for line in response.text.splitlines():
            if not line.strip():
                continue
            for result in json.loads(line).get("results", []):
                if "error" in result:
                    raise SinkUnavailable(f"influxdb query failed: {result['error']}")
                series.extend(result.get("series", []))
        return series

    def ensure_database(self, retention: str | None = None) -> None:
        """CREATE DATABASE (and a default retention policy) on InfluxDB 1.x; idempotent."""
        self._query_admin(f'CREATE DATABASE "{self.database}"')
        if retention:
            name = self.rp or "fleetwatch"
            self._query_admin(
                f'CREATE RETENTION POLICY "{name}" ON "{self.database}" DURATION {retention} REPLICATION 1 DEFAULT'
            )

    def _query_admin(self, q: str) -> None:
        params = {k: v for k, v in self.params.items() if k in ("u", "p")}
        response = self._request("POST", "/query", params=params, data={"q": q})
        if response.status_code != 200 or "error" in response.text:
            raise SinkUnavailable(f"influxdb refused {q!r}: {_error(response)}")

    def ping(self) -> None:
        response = self._request("GET", "/ping")
        if response.status_code != 204:
            raise SinkUnavailable(f"influxdb /ping answered {response.status_code}")

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise SinkUnavailable(f"influxdb at {self.base} unreachable: {type(exc).__name__}") from None


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:500]
    except ValueError:
        return response.text[:500]
