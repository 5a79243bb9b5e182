"""Import from files: Notehub event exports and captures, through the same pipeline as live ingest.

- Notehub events: a JSON array of events, or JSON lines with one event per line.
- Capture: JSON lines `{"device": ..., "received": <unix s>, "payload": <base64>}`.
A line that is not a valid record is quarantined with its reason (nothing is dropped) by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fleetwatch.pipeline import Message
from fleetwatch.sources.notehub import EventError, event_message, parse_body


def notehub_event_records(path: Path) -> Iterator[dict | bytes]:
    """Events of an export file: dicts, or the raw bytes of a line that is not a JSON object."""
    text = path.read_bytes()
    if text.lstrip().startswith(b"["):
        yield from parse_body(text)
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield line
            continue
        yield record if isinstance(record, dict) else line


def read_messages(path: Path, kind: str, device_field: str) -> Iterator[Message | tuple[str, bytes]]:
    """Messages of an import file; a bad record comes out as (reason, raw bytes) for the quarantine."""
    transport = f"import:{kind}"
    records = notehub_event_records(path)
    for record in records:
        if isinstance(record, bytes):
            yield ("bad_json", record)
            continue
        try:
            yield event_message(record, "device" if kind == "capture" else device_field, transport)
        except EventError as exc:
            yield (exc.reason, json.dumps(record).encode())
