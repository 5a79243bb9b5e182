"""Ingest pipeline: bounded queue -> batch -> decode -> store, spool or quarantine -> acknowledge.

Sources hand in transport messages with a callback; the callback runs only once every frame of the
message is durable: stored, spooled (fsync'd) or quarantined (committed). MQTT acknowledges the message
then, an HTTP route answers then; so a crash at any point loses nothing a sender was told it delivered.

Backpressure: the queue is bounded. When it is full, `submit` blocks, which stops the MQTT network
thread from reading its socket (the broker holds the rest) and makes HTTP requests wait.

Wakeups: a source's thread wakes the worker only for the first message of a batch and for a full batch,
and MQTT acknowledges a batch with one write (`Message.ack_to`): the network thread and the worker share
the interpreter lock, so a wakeup or an acknowledgement per message costs the network thread time.

Order: while anything is spooled, new frames go to the spool behind it, and the spool replays oldest
first, so the store sees frames in the order they arrived.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter

from fleetwatch.frames import FrameBatch, Registry, decode_messages
from fleetwatch.metrics import Metrics
from fleetwatch.quarantine import Entry, Quarantine
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, Store
from fleetwatch.spool import Spool

log = logging.getLogger(__name__)


class SpoolFull(Exception):
    """The spool is at its cap and the pipeline is stopping: the batch was not made durable or acknowledged."""


@dataclass(slots=True)
class Message:
    """One transport message (one or several frames back to back) and where it came from.

    Once it is durable, `on_durable()` runs, and `ack_to` gets its `ack_id` in one call with those of the
    other messages of the batch that have the same `ack_to` (see `acknowledge`).
    """

    payload: bytes
    device: str
    received: int
    transport: str
    on_durable: Callable[[], None] | None = None
    ack_to: Callable[[list[int]], None] | None = None
    ack_id: int = 0


def acknowledge(messages: Iterable[Message]) -> None:
    """Tell the sources that `messages` are durable: each one's `on_durable`, one `ack_to` call per source.

    A callback that raises is logged and the others still run: the frames are stored or quarantined by now,
    so nothing may undo that. A sender that misses its acknowledgement sends again, and writes are
    idempotent (one row per device and window).
    """
    ids: dict[Callable[[list[int]], None], list[int]] = {}
    for message in messages:
        if message.on_durable is not None:
            _guarded(message.on_durable)
        if message.ack_to is not None:
            ids.setdefault(message.ack_to, []).append(message.ack_id)
    for ack_to, batch in ids.items():
        _guarded(ack_to, batch)


def _guarded(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception(
            "acknowledgement callback %r failed; the frames are kept, the sender may send them again", callback
        )


@dataclass
class Report:
    """What happened to a batch (or a whole import)."""

    messages: int = 0
    stored: int = 0
    spooled: int = 0
    quarantined: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, other: Report) -> None:
        self.messages += other.messages
        self.stored += other.stored
        self.spooled += other.spooled
        self.quarantined += other.quarantined
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count


class Pipeline:
    """Decodes batches of messages and makes their frames durable; one worker thread owns the writes."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        quarantine: Quarantine,
        spool: Spool,
        metrics: Metrics,
        *,
        queue_max: int = 20_000,
        batch_max: int = 5_000,
        batch_wait_s: float = 0.2,
        replay_interval_s: float = 2.0,
        spool_max_bytes: int = 10 << 30,
    ) -> None:
        self.store = store
        self.registry = registry
        self.quarantine = quarantine
        self.spool = spool
        self.metrics = metrics
        self._inbox = _Inbox(queue_max, batch_max)
        self._received: dict[str, Counter] = {}
        self._batch_wait = batch_wait_s
        self._replay_interval = replay_interval_s
        self._spool_max = spool_max_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics.spool_bytes.set(spool.pending_bytes())
        self.metrics.queue_depth.set_function(self._inbox.__len__)

    # -- sources call these -------------------------------------------------------------------
    def submit(self, message: Message, timeout: float | None = None) -> None:
        """Queue a message; blocks while the queue is full (raises queue.Full after `timeout`)."""
        received = self._received.get(message.transport)
        if received is None:
            received = self._received[message.transport] = self.metrics.messages_received.labels(message.transport)
        received.inc()
        self._inbox.put(message, timeout)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fleetwatch-pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 8.0) -> None:
        """Process what is queued, then stop the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the work ---------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> Report:
        """Decode, quarantine rejects, store or spool frames, then run each message's callback."""
        result = decode_messages(
            [m.payload for m in messages], [m.device for m in messages], [m.received for m in messages], self.registry
        )
        transports = [m.transport for m in messages]
        report = Report(messages=len(messages), rejected=result.reject_counts())
        for reason, count in report.rejected.items():
            self.metrics.frames_rejected.labels(reason).inc(count)
            self.metrics.frames_quarantined.labels(reason).inc(count)
        report.quarantined += self.quarantine.add(result.rejects, transports)
        for schema_id, batch in sorted(result.batches.items()):
            self.metrics.frames_decoded.labels(str(schema_id)).inc(len(batch))
            self._store_or_spool(batch, transports, report)
        acknowledge(messages)
        return report

    def replay_spool(self) -> int:
        """Write spooled frames to the store, oldest first; stops (keeping the rest) when it is down."""
        replayed = 0
        while (spooled := self.spool.oldest()) is not None:
            n = len(spooled.frames)
            result = decode_messages(spooled.frames, spooled.devices, spooled.received, self.registry)
            self.quarantine.add(result.rejects, ["spool"] * n)
            for batch in result.batches.values():
                try:
                    self._write(batch)
                except SinkUnavailable:
                    return replayed
                except SinkRejected as exc:
                    self._quarantine_batch(batch, ["spool"] * n, exc)
            self.spool.drop(spooled)
            replayed += n
            self.metrics.frames_replayed.inc(n)
            self.metrics.spool_bytes.set(self.spool.pending_bytes())
            log.info("replayed %d spooled frames", n)
        return replayed

    def replay_quarantined(self, entries: Sequence[Entry]) -> tuple[list[int], dict[int, str]]:
        """Decode quarantined entries again (after a fix) and store those that are now valid.

        Returns the ids stored (and removed from quarantine) and, for the others, their reason now (the
        entry keeps it). Raises SinkUnavailable when the store is down (nothing is removed then).
        """
        stored: list[int] = []
        still_bad: dict[int, str] = {}
        for entry in entries:
            result = decode_messages([entry.raw], [entry.device], [entry.received], self.registry)
            if result.rejects:
                still_bad[entry.id] = result.rejects[0].reason
                if still_bad[entry.id] != entry.reason:
                    self.quarantine.set_reason(entry.id, still_bad[entry.id])
                continue
            try:
                for batch in result.batches.values():
                    self._write(batch)
            except SinkRejected as exc:
                still_bad[entry.id] = f"sink_rejected:{exc.reason}"[:500]
                self.quarantine.set_reason(entry.id, still_bad[entry.id])
                continue
            self.quarantine.remove([entry.id])
            stored.append(entry.id)
        return stored, still_bad

    def _store_or_spool(self, batch: FrameBatch, transports: list[str], report: Report) -> None:
        rows = batch.raw.view(np.uint8).reshape(len(batch), batch.schema.frame_len)
        held = False
        try:
            while True:
                if self.spool.is_empty():
                    try:
                        report.stored += self._write(batch)
                        return
                    except SinkUnavailable as exc:
                        log.warning("store unavailable (%s): spooling", exc)
                    except SinkRejected as exc:
                        report.quarantined += self._quarantine_batch(batch, transports, exc)
                        return
                if self.spool.is_empty() or self.spool.pending_bytes() + rows.nbytes <= self._spool_max:
                    break
                if not held:
                    self._hold()
                    held = True
                if self._stop.wait(self._replay_interval):
                    raise SpoolFull("stopped while the spool was full")
                self._replay_safely()
        finally:
            if held:
                self.metrics.spool_full.set(0)
        self.spool.append([r.tobytes() for r in rows], batch.device.tolist(), batch.received.tolist())
        report.spooled += len(batch)
        self.metrics.frames_spooled.inc(len(batch))
        self.metrics.spool_bytes.set(self.spool.pending_bytes())

    def _hold(self) -> None:
        """The spool is at `spool_max_bytes` (the store has been down that long): this batch waits.

        Nothing is acknowledged meanwhile: the queue fills, MQTT stops delivering (the broker keeps the
        messages) and Notehub routes answer 503 and retry. The spool drains by replay once the store is
        back; a batch is spooled when it fits or the spool is empty (the cap is exceeded by at most one
        batch). Stopping meanwhile raises `SpoolFull`: the batch stays unacknowledged.
        """
        log.warning("spool full (pipeline.spool_max_bytes = %d): ingest held until the store is back", self._spool_max)
        self.metrics.spool_full.set(1)

    def _write(self, batch: FrameBatch) -> int:
        started = time.perf_counter()
        try:
            written = self.store.write_frames(batch)
        except SinkUnavailable:
            self.metrics.sink_errors.labels("unavailable").inc()
            self.metrics.up.set(0)
            raise
        except SinkRejected:
            self.metrics.sink_errors.labels("rejected").inc()
            raise
        self.metrics.sink_latency.observe(time.perf_counter() - started)
        self.metrics.frames_stored.inc(len(batch))
        self.metrics.up.set(1)
        return written

    def _quarantine_batch(self, batch: FrameBatch, transports: list[str], exc: SinkRejected) -> int:
        reason = f"sink_rejected:{exc.reason}"[:500]
        log.error("store rejected %d frames: %s", len(batch), exc.reason)
        rows = batch.raw.view(np.uint8).reshape(len(batch), batch.schema.frame_len)
        entries = [
            (
                int(batch.received[i]),
                str(batch.device[i]),
                transports[int(batch.message[i])],
                reason,
                int(batch.offset[i]),
                rows[i].tobytes(),
            )
            for i in range(len(batch))
        ]
        self.metrics.frames_quarantined.labels("sink_rejected").inc(len(entries))
        return self.quarantine.add_raw(entries)

    def _run(self) -> None:
        next_replay = 0.0
        while True:
            batch = self._inbox.take(self._batch_wait)
            if batch:
                self._process_safely(batch)
            elif self._stop.is_set():
                return
            if not self.spool.is_empty() and time.monotonic() >= next_replay:
                self._replay_safely()
                next_replay = time.monotonic() + self._replay_interval

    def _process_safely(self, batch: list[Message]) -> None:
        try:
            self.process(batch)
        except SpoolFull:
            log.warning("stopping with %d messages unacknowledged (spool full): their senders keep them", len(batch))
        except Exception as exc:  # a bug must not lose messages or kill the worker: keep them for replay
            log.exception("batch of %d messages failed; quarantining them", len(batch))
            reason = f"internal_error:{type(exc).__name__}"
            self.quarantine.add_raw((m.received, m.device, m.transport, reason, 0, m.payload) for m in batch)
            self.metrics.frames_quarantined.labels("internal_error").inc(len(batch))
            acknowledge(batch)

    def _replay_safely(self) -> None:
        try:
            self.replay_spool()
        except Exception:
            log.exception("spool replay failed; will retry")


class _Inbox:
    """The bounded queue of messages, taken by the worker a batch at a time.

    A partial batch is due `wait` after its first message arrived, not after the worker asked: messages
    that came while the worker was writing are taken at once (each message waits for its acknowledgement,
    and MQTT lets only `mqtt.receive_maximum` wait).
    """

    def __init__(self, maximum: int, batch_max: int) -> None:
        self._messages: list[Message] = []
        self._max = maximum
        self._batch_max = batch_max
        self._full_batch = min(batch_max, maximum)
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._first_at = 0.0

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: Message, timeout: float | None) -> None:
        """Append `message`, waiting while the queue is full (queue.Full after `timeout`)."""
        with self._room:
            if len(self._messages) >= self._max and not self._room.wait_for(self._has_room, timeout):
                raise queue.Full
            self._messages.append(message)
            if len(self._messages) == 1:
                self._first_at = time.monotonic()
                self._ready.notify()
            elif len(self._messages) == self._full_batch:
                self._ready.notify()

    def take(self, wait: float) -> list[Message]:
        """Up to `batch_max` messages: waits up to `wait` for a first one, then for a full batch until the
        first one has waited `wait`."""
        with self._ready:
            if not self._ready.wait_for(self._has_messages, wait):
                return []
            self._ready.wait_for(self._has_full_batch, self._first_at + wait - time.monotonic())
            batch = self._messages[: self._batch_max]
            del self._messages[: self._batch_max]
            self._room.notify_all()
        return batch

    def _has_room(self) -> bool:
        return len(self._messages) < self._max

    def _has_messages(self) -> bool:
        return bool(self._messages)

    def _has_full_batch(self) -> bool:
        return len(self._messages) >= self._full_batch


def ingest_all(
    pipeline: Pipeline,
    items: Iterable[Message | tuple[str, bytes]],
    transport: str,
    batch_size: int = 5_000,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Push a finite stream (an import or a backfill) through `pipeline` synchronously, in batches.

    Items that are not messages — (reason, raw bytes) for a record that could not be read — go straight
    to the quarantine with that reason.
    """
    report = Report()
    batch: list[Message] = []
    bad: list[tuple[int, str, str, str, int, bytes]] = []

    def flush() -> None:
        if batch:
            report.add(pipeline.process(batch))
        if bad:
            report.quarantined += pipeline.quarantine.add_raw(bad)
            for entry in bad:
                report.rejected[entry[3]] = report.rejected.get(entry[3], 0) + 1
                pipeline.metrics.frames_quarantined.labels(entry[3]).inc()
        if progress is not None:
            progress(len(batch) + len(bad))
        batch.clear()
        bad.clear()

    for item in items:
        if isinstance(item, Message):
            batch.append(item)
        else:
            bad.append((0, "", transport, item[0], 0, item[1]))
        if len(batch) + len(bad) >= batch_size:
            flush()
    flush()
    return report
