"""The daemon's ingest counters as the measurement `ingest`, written to the store every period.

Each point is one outcome's count over the period since the last point (a delta of the /metrics counters,
so the dashboards' `sum("count")` over a range is the number of frames): tags `instance` (this daemon),
`outcome` and `reason`, fields `count`, `queue_depth` and `spool_bytes` (the gauges at the time of the
point). Outcomes: `received` (transport messages), `decoded`, `stored`, `spooled`, `replayed`, and
`quarantined` once per reason the daemon has quarantined for (decoder rejects, `sink_rejected`,
`internal_error`); `reason` is `""` for the others. Every outcome is written each period, zero included,
so a stalled ingest reads as 0 stored frames, not as no data. When the store cannot take the point, the
counts carry over to the next period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from prometheus_client import Counter, Gauge

from fleetwatch.metrics import Metrics
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable, Store

log = logging.getLogger(__name__)

MEASUREMENT = "ingest"


def _values(metric: Counter | Gauge) -> list[tuple[dict[str, str], float]]:
    """The labels and current value of each child of `metric`."""
    suffix = "_total" if isinstance(metric, Counter) else ""
    return [
        (sample.labels, sample.value)
        for family in metric.collect()
        for sample in family.samples
        if sample.name == family.name + suffix
    ]


def snapshot(metrics: Metrics) -> dict[tuple[str, str], int]:
    """The counters as (outcome, reason) -> frames (or messages, for `received`) since the daemon started."""
    counters = {
        "received": metrics.messages_received,
        "decoded": metrics.frames_decoded,
        "stored": metrics.frames_stored,
        "spooled": metrics.frames_spooled,
        "replayed": metrics.frames_replayed,
    }
    totals = {(outcome, ""): int(sum(v for _, v in _values(counter))) for outcome, counter in counters.items()}
    totals |= {("quarantined", labels["reason"]): int(v) for labels, v in _values(metrics.frames_quarantined)}
    return totals


class IngestCounters:
    """Writes `ingest` points for one daemon instance every `period_s` seconds, in a thread of its own."""

    def __init__(
        self,
        metrics: Metrics,
        store: Store,
        instance: str,
        period_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics, self.store, self.instance, self.period_s, self.clock = metrics, store, instance, period_s, clock
        self._last = snapshot(metrics)
        self._last_time = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> int:
        """Write the counts since the last successful write; returns the points written (0 when the store
        cannot take them now: the counts are then written with the next period's)."""
        now = snapshot(self.metrics)
        keys = sorted(now)
        t = max(int(self.clock()), self._last_time + 1)  # one point per second and series: never overwrite
        n = len(keys)
        gauges = {"queue_depth": self.metrics.queue_depth, "spool_bytes": self.metrics.spool_bytes}
        try:
            written = self.store.write_table(
                MEASUREMENT,
                np.full(n, t, dtype=np.int64),
                {
                    "instance": np.full(n, self.instance, dtype=object),
                    "outcome": np.array([outcome for outcome, _ in keys], dtype=object),
                    "reason": np.array([reason for _, reason in keys], dtype=object),
                },
                {
                    "count": np.array([now[k] - self._last.get(k, 0) for k in keys], dtype=np.int64),
                    **{name: np.full(n, int(_values(g)[0][1]), dtype=np.int64) for name, g in gauges.items()},
                },
            )
        except (SinkUnavailable, SinkRejected) as exc:
            log.warning("ingest counters not written (%s); they carry over to the next period", exc)
            return 0
        self._last, self._last_time = now, t
        return written

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fleetwatch-ingest-counters", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then write the counts of the last, partial period."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._write_safely()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._write_safely()

    def _write_safely(self) -> None:
        try:
            self.write()
        except Exception:
            log.exception("ingest counters: write failed; the counts carry over to the next write")
