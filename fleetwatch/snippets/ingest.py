"""Snippet messages in: decode, then store in the dataset (or find a duplicate) or quarantine with a reason.

Every transport hands in the same thing: the bytes, the device, the receive time, the transport name and
maybe a label. Nothing is dropped silently: a message that is not a valid snippet goes to the quarantine
as `snippet:<reason>` with its raw bytes, and each outcome is counted on /metrics
(`fleetwatch_snippets_received_total{transport}`, `..._stored_total`, `..._duplicate_total`,
`..._quarantined_total{reason}`, `..._pruned_total`). A call returns once the outcome is durable (file
fsync'd and index committed, or quarantine committed), so an MQTT ack or an HTTP 200 after it is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fleetwatch.frames.snippet import Snippet, decode_snippet
from fleetwatch.metrics import Metrics
from fleetwatch.pipeline import Message, acknowledge
from fleetwatch.quarantine import Entry, Quarantine
from fleetwatch.snippets.store import Record, SnippetStore

log = logging.getLogger(__name__)

#: Quarantine reasons of snippets are this prefix + the decoder's reason (`snippet:bad_crc`).
QUARANTINE_PREFIX = "snippet:"


@dataclass(frozen=True)
class Outcome:
    """What became of one snippet message: `stored`, `duplicate` (with the record) or `quarantined`
    (with the reason)."""

    status: str
    record: Record | None = None
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        if self.record is None:
            return {"status": self.status, "reason": self.reason}
        return {"status": self.status, "id": self.record.id, "checksum": self.record.checksum}


class SnippetIngest:
    """Decodes snippet messages and makes each outcome durable."""

    def __init__(self, store: SnippetStore, quarantine: Quarantine, metrics: Metrics) -> None:
        self.store = store
        self.quarantine = quarantine
        self.metrics = metrics

    def handle(self, raw: bytes, device: str, received: int, transport: str, label: str | None = None) -> Outcome:
        self.metrics.snippets_received.labels(transport).inc()
        result = decode_snippet(raw, received)
        if not isinstance(result, Snippet):
            reason = QUARANTINE_PREFIX + result.reason
            self.quarantine.add_raw([(received, device, transport, reason, 0, raw)])
            self.metrics.snippets_quarantined.labels(result.reason).inc()
            log.info("snippet from %s quarantined: %s (%s)", device, reason, result.detail)
            return Outcome("quarantined", reason=reason)
        record, created = self.store.add(raw, device, received, transport, label)
        if not created:
            self.metrics.snippets_duplicate.inc()
            return Outcome("duplicate", record)
        self.metrics.snippets_stored.inc()
        self.prune()
        return Outcome("stored", record)

    def prune(self) -> int:
        """Enforce the dataset's age and size limits; returns (and counts) how many snippets went."""
        pruned = self.store.prune()
        self.metrics.snippets_pruned.inc(pruned)
        return pruned

    def replay(self, entries: Sequence[Entry]) -> tuple[list[int], dict[int, str]]:
        """Decode quarantined snippets again (after a fix) and store those that are now valid.

        Returns the ids stored (and removed from quarantine) and, for the others, their reason now (the
        entry keeps it)."""
        stored: list[int] = []
        still_bad: dict[int, str] = {}
        for entry in entries:
            result = decode_snippet(entry.raw, entry.received)
            if isinstance(result, Snippet):
                self.store.add(entry.raw, entry.device, entry.received, entry.transport)
                self.quarantine.remove([entry.id])
                stored.append(entry.id)
                continue
            still_bad[entry.id] = QUARANTINE_PREFIX + result.reason
            if still_bad[entry.id] != entry.reason:
                self.quarantine.set_reason(entry.id, still_bad[entry.id])
        return stored, still_bad

    def submit(self, message: Message, timeout: float | None = None) -> None:
        """The MQTT source's callback: handle the message, then acknowledge it."""
        self.handle(message.payload, message.device, message.received, message.transport)
        acknowledge([message])
