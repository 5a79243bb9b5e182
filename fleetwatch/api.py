"""HTTP endpoints: Notehub routes in, health and metrics out. A plain WSGI app, served by waitress.

- `POST /notehub`: one Notehub event or a JSON array of them (a general HTTP route).
- `POST /notehub/binary`: the raw frame bytes of a `web.post` binary proxy route
  (`application/octet-stream`); the device comes from the `X-Fleetwatch-Device` header (configurable) or
  the `device` query parameter, the receive time is the server's clock.
- `POST /notehub/snippet`: the raw bytes of one snippet from a `web.post` binary proxy route; the device
  as for `/notehub/binary`, the label (optional) in `X-Notecard-Label` (configurable) or `?label=`. Events of the
  snippet notefile (`snippets.qo`, configurable) that reach `POST /notehub` carry a snippet too (label:
  the note body's `label`). A malformed snippet is quarantined with its reason and answered 200 with
  `{"status": "quarantined", "reason": ...}` (a retry would not mend it). See docs/snippets.md.
- `GET /healthz` (live and ready), `/healthz/live`, `/healthz/ready`; `GET /metrics` (Prometheus text).

The routes need the shared secret in `X-Fleetwatch-Secret` (configurable; compared in constant time):
missing or wrong -> 401. A body over the limit -> 413. Bad JSON or base64 -> 400 with the reason, and
nothing of that request is ingested (all or nothing, so the route's retry means something). A 200 is
sent only once every frame of the request is durable (stored, spooled or quarantined); when the
pipeline cannot take the request in time -> 503 with Retry-After.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from fleetwatch.config import HttpConfig, NotehubConfig, SnippetsConfig
from fleetwatch.metrics import CONTENT_TYPE, Metrics
from fleetwatch.pipeline import Message
from fleetwatch.snippets.ingest import Outcome, SnippetIngest
from fleetwatch.sources.notehub import TRANSPORT, EventError, event_message, parse_body

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Content Too Large",
    503: "503 Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.status, self.reason, self.detail = status, reason, detail


class App:
    """The WSGI application. `submit` queues a message (raising queue.Full on timeout); `health` says
    whether each part of the daemon is ready."""

    def __init__(
        self,
        http: HttpConfig,
        notehub: NotehubConfig,
        metrics: Metrics,
        submit: Callable[[Message, float], None],
        health: Callable[[], dict[str, bool]],
        ack_timeout_s: float = 30.0,
        snippets: SnippetIngest | None = None,
        snippets_config: SnippetsConfig | None = None,
    ) -> None:
        self.http = http
        self.notehub = notehub
        self.snippets = snippets
        self.snippets_config = snippets_config or SnippetsConfig()
        self.metrics = metrics
        self._submit = submit
        self._health = health
        self._ack_timeout = ack_timeout_s
        self.routes: dict[tuple[str, str], Callable[[dict], tuple[int, dict[str, Any] | bytes]]] = {
            ("POST", "/notehub"): self._notehub_events,
            ("POST", "/notehub/binary"): self._notehub_binary,
            ("POST", "/notehub/snippet"): self._notehub_snippet,
            ("GET", "/healthz"): lambda env: self._healthz(env, ("live", "ready")),
            ("GET", "/healthz/live"): lambda env: self._healthz(env, ("live",)),
            ("GET", "/healthz/ready"): lambda env: self._healthz(env, ("ready",)),
            ("GET", "/metrics"): lambda env: (200, self.metrics.render()),
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        handler = self.routes.get((method, path))
        try:
            if handler is None:
                known = any(p == path for _, p in self.routes)
                raise HttpError(405 if known else 404, "method_not_allowed" if known else "not_found")
            status, body = handler(environ)
        except HttpError as exc:
            status, body = exc.status, {"error": exc.reason, "detail": exc.detail}
        self.metrics.http_requests.labels(path if handler else "other", str(status)).inc()
        if isinstance(body, bytes):
            payload, content_type = body, CONTENT_TYPE
        else:
            payload, content_type = json.dumps(body).encode(), "application/json"
        headers = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        if status == 503:
            headers.append(("Retry-After", "5"))
        start_response(_STATUS[status], headers)
        return [payload]

    # -- routes -------------------------------------------------------------------------------------
    def _notehub_events(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = self._authorised_body(environ)
        snippet_file = self.snippets_config.notefile if self.snippets is not None else None
        try:
            events = parse_body(body)
            messages, snippets = [], []
            for index, event in enumerate(events):
                try:
                    message = event_message(event, self.notehub.device_field)
                except EventError as exc:
                    raise EventError(exc.reason, f"event {index}: {exc}") from None
                if snippet_file is not None and event.get("file") == snippet_file:
                    note = event.get("body")
                    label = note.get("label") if isinstance(note, dict) else None
                    snippets.append((message, label if isinstance(label, str) else None))
                else:
                    messages.append(message)
        except EventError as exc:
            raise HttpError(400, exc.reason, str(exc)) from None
        outcomes = [self._snippet(m.payload, m.device, m.received, m.transport, label) for m, label in snippets]
        self._ingest(messages)
        if not outcomes:
            return 200, {"accepted": len(messages)}
        return 200, {"accepted": len(messages) + len(outcomes), "snippets": [o.to_json() for o in outcomes]}

    def _notehub_binary(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = self._authorised_body(environ)
        self._ingest([Message(body, self._device(environ), int(time.time()), f"{TRANSPORT}:binary")])
        return 200, {"accepted": 1}

    def _notehub_snippet(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = self._authorised_body(environ)
        device = self._device(environ)
        label = environ.get(_environ_key(self.snippets_config.label_header))
        label = label or parse_qs(environ.get("QUERY_STRING", "")).get("label", [""])[0] or None
        outcome = self._snippet(body, device, int(time.time()), f"{TRANSPORT}:snippet", label)
        return 200, outcome.to_json()

    def _healthz(self, environ: dict[str, Any], which: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
        checks = self._health()
        ready = all(checks.values())
        body: dict[str, Any] = {"live": True, "ready": ready, "checks": checks}
        ok = "ready" not in which or ready
        return (200 if ok else 503), body

    # -- helpers ------------------------------------------------------------------------------------
    def _device(self, environ: dict[str, Any]) -> str:
        """The device of a binary route: the device header, else the `device` query parameter."""
        device = environ.get(_environ_key(self.notehub.device_header))
        device = device or parse_qs(environ.get("QUERY_STRING", "")).get("device", [""])[0]
        if not device:
            raise HttpError(400, "no_device", f"name the device in {self.notehub.device_header} or ?device=")
        return device

    def _snippet(self, raw: bytes, device: str, received: int, transport: str, label: str | None) -> Outcome:
        if self.snippets is None:
            raise HttpError(404, "not_found", "snippets are disabled (snippets.enabled = false)")
        try:
            return self.snippets.handle(raw, device, received, transport, label)
        except OSError as exc:
            log.error("cannot keep a snippet from %s: %s", device, exc)
            raise HttpError(503, "storage", "the snippet dataset cannot be written; retry later") from None

    def _authorised_body(self, environ: dict[str, Any]) -> bytes:
        secret = self.notehub.secret.get_secret_value() if self.notehub.secret else ""
        given = environ.get(_environ_key(self.notehub.secret_header), "")
        if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
            raise HttpError(401, "unauthorized", f"missing or wrong {self.notehub.secret_header}")
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit():
            raise HttpError(400, "bad_length", "Content-Length is not a number")
        if int(length) > self.http.max_body_bytes:
            raise HttpError(413, "too_large", f"body over {self.http.max_body_bytes} bytes")
        return environ["wsgi.input"].read(int(length))

    def _ingest(self, messages: list[Message]) -> None:
        """Queue the messages and wait until every one is durable."""
        pending = len(messages)
        done = threading.Event()
        lock = threading.Lock()

        def durable() -> None:
            nonlocal pending
            with lock:
                pending -= 1
                if pending == 0:
                    done.set()

        deadline = time.monotonic() + self._ack_timeout
        for message in messages:
            message.on_durable = durable
            try:
                self._submit(message, max(deadline - time.monotonic(), 0.001))
            except queue.Full:
                raise HttpError(503, "busy", "ingest queue full; retry later") from None
        if messages and not done.wait(max(deadline - time.monotonic(), 0)):
            raise HttpError(503, "timeout", "frames not durable in time; retry (writes are idempotent)")


def _environ_key(header: str) -> str:
    """The WSGI environ key of an HTTP request header (`X-Notecard-Label` -> `HTTP_X_NOTECARD_LABEL`)."""
    return "HTTP_" + header.upper().replace("-", "_")
