"""Blues Notehub: events as a general HTTP route sends them, and backfill from the Notehub events API.

An event is a JSON object; fleetwatch reads three of its fields: `payload` (the frame bytes, base64), the
device (`device`, `sn` or `best_id`, as configured) and `received` (Unix seconds, float). A route may send
one event or a JSON array of them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from fleetwatch.pipeline import Message

TRANSPORT = "notehub"


class EventError(ValueError):
    """An event (or a request body) that cannot be turned into a message; `reason` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_body(body: bytes) -> list[Any]:
    """A route's request body -> the list of events in it (one object or an array)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError("bad_json", str(exc)) from None
    events = data if isinstance(data, list) else [data]
    if not all(isinstance(e, dict) for e in events):
        raise EventError("bad_json", "expected an event object or an array of event objects")
    return events


def event_message(event: dict[str, Any], device_field: str, transport: str = TRANSPORT) -> Message:
    """One Notehub event -> one transport message (payload bytes, device, receive time)."""
    device = event.get(device_field)
    if not isinstance(device, str) or not device:
        raise EventError("no_device", f"event has no string field {device_field!r}")
    payload = event.get("payload")
    if not isinstance(payload, str):
        raise EventError("no_payload", "event has no base64 `payload` field")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError("bad_base64", f"payload is not base64: {exc}") from None
    received = event.get("received")
    if not isinstance(received, int | float) or isinstance(received, bool):
        raise EventError("no_received", "event has no numeric `received` field")
    return Message(raw, device, int(received), transport)


@dataclass(frozen=True)
class EventsPage:
    events: list[dict[str, Any]]
    has_more: bool


class NotehubClient:
    """The part of the Notehub API fleetwatch uses: project events, paged (backfill)."""

    def __init__(self, api_url: str, token: str, timeout: float = 30.0, session: requests.Session | None = None):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json"

    def events_page(self, project: str, since: int, page: int, page_size: int, files: str | None) -> EventsPage:
        params: dict[str, Any] = {
            "pageNum": page,
            "pageSize": page_size,
            "startDate": since,
            "dateType": "uploaded",
            "sortBy": "captured",
            "sortOrder": "asc",
        }
        if files:
            params["files"] = files
        response = self.session.get(f"{self.api_url}/v1/projects/{project}/events", params=params, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"Notehub events API answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        return EventsPage(list(data.get("events") or []), bool(data.get("has_more")))

    def events(self, project: str, since: int, page_size: int = 500, files: str | None = None) -> Iterator[dict]:
        """Every event uploaded since `since` (Unix s), oldest first, page by page."""
        page = 1
        while True:
            result = self.events_page(project, since, page, page_size, files)
            yield from result.events
            if not result.has_more or not result.events:
                return
            page += 1
