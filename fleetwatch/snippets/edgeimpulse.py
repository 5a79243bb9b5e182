"""Edge Impulse: snippets as data acquisition JSON, and the forwarder to the ingestion service.

The document (Edge Impulse "data acquisition format", JSON encoding):

    {"protected": {"ver": "v1", "alg": "HS256", "iat": <unix>},
     "signature": "<hex HMAC-SHA256>",
     "payload": {"device_name": <device>, "device_type": <snippets.device_type>, "interval_ms": <float>,
                 "sensors": [{"name": "accX", "units": "m/s2"}, ...], "values": [[x, y, z], ...]}}

Signing follows Edge Impulse's reference: serialise the document with a signature of 64 zeros, take the
HMAC-SHA256 of those bytes with the project's HMAC key, put its hex in `signature` and serialise again.
Without an HMAC key `alg` is `none` and the signature stays zeros. `iat` is the snippet's own time (its
start time, or its receive time when the device had no clock), so a document is the same every time it
is built. Samples are written in the shortest decimal form that reads back as the same float32.

The forwarder POSTs each document to `{ingestion_url}/api/{training|testing}/data` with `x-api-key`,
`x-label`, `x-file-name` and `Content-Type: application/json`. 2xx: recorded as forwarded (a later run
skips it: forwarding is idempotent). 408, 429, 5xx, timeouts and connection errors: retried with
exponential backoff and full jitter, honouring `Retry-After` (capped at `backoff_max_s`). Other 4xx:
given up at once, with Edge Impulse's reason recorded on the snippet. Keys never reach a log or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from fleetwatch.actions.webhooks import Outcome, attempt, backoff_delay
from fleetwatch.config import SensorConfig, SnippetsConfig
from fleetwatch.frames.snippet import Snippet, decode_snippet
from fleetwatch.snippets.store import Record, SnippetStore

ZERO_SIGNATURE = "0" * 64
CATEGORIES = ("training", "testing")


def sensors_for(channels: int, sensors: Sequence[SensorConfig]) -> list[dict[str, str]]:
    """Name and units of each channel: the configured ones in order, then `ch<N>` in `N/A`."""
    named = [{"name": s.name, "units": s.units} for s in sensors[:channels]]
    return named + [{"name": f"ch{i}", "units": "N/A"} for i in range(len(named), channels)]


def shortest_values(samples: np.ndarray) -> list[list[float]]:
    """float32 samples as Python floats in the shortest decimal form that reads back as the same float32
    (9.81 rather than 9.8100004196167)."""
    return [[float(str(v)) for v in row] for row in samples.astype(np.float32)]


def acquisition_document(
    snippet: Snippet,
    device: str,
    device_type: str,
    sensors: Sequence[SensorConfig],
    iat: int,
    hmac_key: str | None = None,
) -> bytes:
    """The data acquisition JSON of one snippet, signed with `hmac_key` (HS256) or unsigned (alg none)."""
    document: dict[str, Any] = {
        "protected": {"ver": "v1", "alg": "HS256" if hmac_key else "none", "iat": iat},
        "signature": ZERO_SIGNATURE,
        "payload": {
            "device_name": device,
            "device_type": device_type,
            "interval_ms": snippet.interval_ms,
            "sensors": sensors_for(snippet.channels, sensors),
            "values": shortest_values(snippet.samples),
        },
    }
    encoded = _dumps(document)
    if hmac_key:
        document["signature"] = hmac.new(hmac_key.encode("utf-8"), encoded, hashlib.sha256).hexdigest()
        encoded = _dumps(document)
    return encoded


def csv_document(snippet: Snippet, sensors: Sequence[SensorConfig]) -> str:
    """Edge Impulse CSV: a `timestamp` column (ms from the first sample), then one column per channel."""
    names = [s["name"] for s in sensors_for(snippet.channels, sensors)]
    lines = [",".join(["timestamp", *names])]
    for i, row in enumerate(shortest_values(snippet.samples)):
        timestamp = f"{i * snippet.interval_ms:.6f}".rstrip("0").rstrip(".")
        lines.append(",".join([timestamp, *(repr(v) for v in row)]))
    return "\n".join(lines) + "\n"


def file_name(record: Record, extension: str = "json") -> str:
    """`<device>.<sha256[:12]>.<extension>`: unique per snippet, stable across runs."""
    device = "".join(c if c.isalnum() or c in "-_" else "_" for c in record.device)
    return f"{device}.{record.checksum[:12]}.{extension}"


@dataclass(frozen=True)
class Upload:
    """One request to the ingestion service. `headers` hold the API key: print them only masked."""

    record: Record
    url: str
    headers: dict[str, str]
    body: bytes

    def describe(self) -> dict[str, Any]:
        """What a dry run prints: the request without the key, the document's metadata, not its values."""
        document = json.loads(self.body)
        payload = dict(document["payload"])
        values = payload.pop("values")
        headers = {k: ("***" if k == "x-api-key" else v) for k, v in self.headers.items()}
        return {
            "id": self.record.id,
            "method": "POST",
            "url": self.url,
            "headers": headers,
            "bytes": len(self.body),
            "protected": document["protected"],
            "payload": payload | {"values": f"{len(values)} x {len(values[0])}"},
        }


@dataclass(frozen=True)
class Result:
    """What became of one snippet: `sent`, `skipped` (forwarded before), `failed`, or `dry_run`."""

    id: int
    status: str
    detail: str = ""
    attempts: int = 0


class Forwarder:
    """Sends snippets from the store to Edge Impulse and records what was sent."""

    def __init__(
        self,
        config: SnippetsConfig,
        store: SnippetStore,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._secrets = [s.get_secret_value() for s in (config.api_key, config.hmac_key) if s is not None]

    def upload(self, record: Record, label: str | None = None, category: str | None = None) -> Upload:
        """The request for one stored snippet; `label` overrides the snippet's own label."""
        snippet = decode_snippet(self.store.read(record))
        if not isinstance(snippet, Snippet):
            raise ValueError(f"snippet #{record.id} no longer decodes: {snippet.reason}")
        hmac_key = self.config.hmac_key.get_secret_value() if self.config.hmac_key else None
        body = acquisition_document(
            snippet, record.device, self.config.device_type, self.config.sensors, record.time, hmac_key
        )
        headers = {
            "x-api-key": self.config.api_key.get_secret_value() if self.config.api_key else "",
            "x-label": label or record.label or self.config.default_label,
            "x-file-name": file_name(record),
            "Content-Type": "application/json",
        }
        url = f"{self.config.ingestion_url}/api/{category or self.config.category}/data"
        return Upload(record, url, headers, body)

    def forward(
        self, records: Sequence[Record], label: str | None = None, category: str | None = None, dry_run: bool = False
    ) -> list[Result]:
        """Forward each record not forwarded before; a dry run builds the requests and sends nothing."""
        if not dry_run and self.config.api_key is None:
            raise ValueError("snippets.api_key is not set: Edge Impulse needs the project's API key")
        results = []
        for record in records:
            if record.forwarded_at is not None:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.forwarded_at))
                results.append(Result(record.id, "skipped", f"forwarded to {record.forward_category} at {when}"))
                continue
            upload = self.upload(record, label, category)
            if dry_run:
                results.append(Result(record.id, "dry_run", json.dumps(upload.describe())))
                continue
            results.append(self._send(upload, category or self.config.category))
        return results

    def _send(self, upload: Upload, category: str) -> Result:
        attempts = 0
        while True:
            attempts += 1
            outcome = self._attempt(upload)
            if outcome.action == "sent":
                self.store.mark_forwarded(upload.record.id, category, self._clock())
                return Result(upload.record.id, "sent", f"HTTP {outcome.status}", attempts)
            if outcome.action == "dead" or attempts > self.config.retries:
                error = outcome.error or "failed"
                if outcome.action != "dead":
                    error = f"gave up after {attempts} attempts: {error}"
                self.store.mark_forward_failed(upload.record.id, error)
                return Result(upload.record.id, "failed", error, attempts)
            wait = outcome.retry_after
            if wait is None:
                wait = backoff_delay(attempts, self.config.backoff_base_s, self.config.backoff_max_s, self._rng)
            self._sleep(min(wait, self.config.backoff_max_s))

    def _attempt(self, upload: Upload) -> Outcome:
        return attempt(
            lambda: self.session.post(
                upload.url,
                data=upload.body,
                headers=upload.headers,
                timeout=self.config.timeout_s,
                allow_redirects=False,
            ),
            self._secrets,
            self._clock,
        )


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")
