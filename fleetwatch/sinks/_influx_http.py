"""The v1-compatible HTTP API of InfluxDB (`/write`, `/query`, `/ping`): URL, pooled client, error classes.

The same API is served by influxd 1.x, and by 2.x and 3.x for a database mapped to a bucket (DBRP) with a
token, so one client covers them all.

>>> target = parse_url("influxdb://ops:s3cret@db.example:8086/fleet?rp=week&timeout=5")
>>> target.base_url, target.database, target.rp, target.username, target.timeout
('http://db.example:8086', 'fleet', 'week', 'ops', 5.0)
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from fleetwatch.sinks.base import SinkRejected, SinkUnavailable

DEFAULT_CHUNK_POINTS = 5000
DEFAULT_TIMEOUT_S = 10.0
#: Database and retention policy names: what `store.url` allows, and nothing that needs quoting.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_OPTIONS = {"rp", "token", "tls", "timeout", "chunk"}
#: 4xx answers about the store rather than the data: the data would be taken once the store is fixed.
_STORE_NOT_READY = {401, 403, 404, 429}


@dataclass(frozen=True)
class InfluxTarget:
    """Where and how to reach one database: the parsed `influxdb://` store URL."""

    base_url: str
    database: str
    rp: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    chunk_points: int = DEFAULT_CHUNK_POINTS


def parse_url(url: str) -> InfluxTarget:
    """`influxdb://[user:password@]host:port/database[?rp=&token=&tls=1&timeout=s&chunk=points]`."""
    parts = urlsplit(url)
    if parts.scheme != "influxdb" or not parts.hostname:
        raise ValueError(f"expected influxdb://host:port/database, got {_masked(url)!r}")
    database = parts.path.lstrip("/")
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"{_masked(url)}: unknown options {sorted(unknown)} (known: {sorted(_OPTIONS)})")
    rp = options.get("rp") or None
    for what, name in (("database", database), ("retention policy", rp)):
        if name is not None and not _IDENTIFIER.match(name):
            raise ValueError(f"{_masked(url)}: {what} {name!r} must be letters, digits, _ or - (at most 64)")
    scheme = "https" if options.get("tls", "0") in ("1", "true", "yes") else "http"
    port = parts.port or 8086
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    chunk = int(options.get("chunk", DEFAULT_CHUNK_POINTS))
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
    if chunk < 1 or timeout <= 0:
        raise ValueError(f"{_masked(url)}: chunk and timeout must be positive")
    return InfluxTarget(
        base_url=f"{scheme}://{host}:{port}",
        database=database,
        rp=rp,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        token=options.get("token") or None,
        timeout=timeout,
        chunk_points=chunk,
    )


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxHTTP:
    """A pooled HTTP client for one database. Thread-safe (requests' connection pool is)."""

    def __init__(self, target: InfluxTarget) -> None:
        self.target = target
        self._session = requests.Session()
        # One quiet retry of a request whose pooled connection the server had closed (e.g. after a restart);
        # safe because every write is idempotent.
        retry = Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False)
        self._session.mount(target.base_url, HTTPAdapter(pool_connections=1, pool_maxsize=8, max_retries=retry))
        if target.token:
            self._session.headers["Authorization"] = f"Token {target.token}"
        elif target.username:
            self._session.auth = (target.username, target.password or "")

    def write(self, lines: bytes) -> None:
        """POST line protocol (gzip, precision s) to the database."""
        params = {"db": self.target.database, "precision": "s"}
        if self.target.rp:
            params["rp"] = self.target.rp
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
        self._check(self._request("POST", "/write", params=params, data=gzip.compress(lines, 1), headers=headers))

    def query(self, statement: str, *, database: bool = True) -> Iterator[tuple[int, dict]]:
        """Run InfluxQL (chunked, epoch=s); yields (statement id, series) as the answer streams in."""
        form = {"q": statement, "epoch": "s", "chunked": "true", "chunk_size": "20000"}
        if database:
            form["db"] = self.target.database
        response = self._request("POST", "/query", data=form, stream=True)
        with response:
            self._check(response)
            try:
                for document in _json_lines(response):
                    yield from _series(document)
            except requests.RequestException as exc:
                raise SinkUnavailable(f"InfluxDB at {self.target.base_url}: {exc}") from exc

    def ping(self) -> None:
        """GET /ping: raises SinkUnavailable unless the server answers 204."""
        self._check(self._request("GET", "/ping"))

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: object) -> requests.Response:
        try:
            return self._session.request(method, self.target.base_url + path, timeout=self.target.timeout, **kwargs)
        except requests.RequestException as exc:
            raise SinkUnavailable(f"InfluxDB at {self.target.base_url}: {exc}") from exc

    def _check(self, response: requests.Response) -> None:
        if response.status_code < 300:
            return
        reason = _error_text(response)
        where = f"InfluxDB at {self.target.base_url} ({response.status_code})"
        if response.status_code >= 500 or response.status_code in _STORE_NOT_READY:
            hint = " (run `fleetwatch influx setup`)" if "database not found" in reason else ""
            raise SinkUnavailable(f"{where}: {reason}{hint}")
        raise SinkRejected(reason, partial=reason.startswith("partial write"))


def _json_lines(response: requests.Response) -> Iterator[dict]:
    """The JSON documents of a chunked answer, one a line; each received byte is scanned once
    (requests' iter_lines rescans a long line for every piece of it)."""
    pending = bytearray()
    for piece in response.iter_content(chunk_size=1 << 20):
        newline = piece.rfind(b"\n")
        if newline == -1:
            pending += piece
            continue
        pending += piece[:newline]
        for line in pending.split(b"\n"):
            if line.strip():
                yield json.loads(line)
        pending = bytearray(piece[newline + 1 :])
    if pending.strip():
        yield json.loads(pending)


def _series(document: dict) -> Iterator[tuple[int, dict]]:
    if "error" in document:
        _raise_statement_error(document["error"])
    for result in document.get("results", []):
        if "error" in result:
            _raise_statement_error(result["error"])
        for series in result.get("series", []):
            yield result.get("statement_id", 0), series


def _raise_statement_error(message: str) -> None:
    if "database not found" in message:
        raise SinkUnavailable(f"InfluxDB: {message} (run `fleetwatch influx setup`)")
    raise SinkRejected(message)


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text)).strip()
    except ValueError:
        return response.text.strip() or response.reason


def _masked(url: str) -> str:
    """The URL without its password or token (for messages)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    query = re.sub(r"(token=)[^&]*", r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()
