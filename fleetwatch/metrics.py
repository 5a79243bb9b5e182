"""The daemon's own counters, in Prometheus text on /metrics. One registry per daemon (no globals).

Nothing is lost silently: every frame ends up stored, spooled or quarantined, and each of those is
counted here by schema, transport or reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family computed when /metrics is read (alerts, outbox, rollouts): `samples` are
    (labels, value)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: tuple[tuple[dict[str, str], float], ...]


class Metrics:
    """Counters and gauges of ingest, storage and delivery."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "fleetwatch_messages_received", "Transport messages received", ["transport"], registry=r
        )
        self.frames_decoded = Counter("fleetwatch_frames_decoded", "Valid frames decoded", ["schema"], registry=r)
        self.frames_rejected = Counter(
            "fleetwatch_frames_rejected", "Frames or bytes rejected by the decoder, by reason", ["reason"], registry=r
        )
        self.frames_stored = Counter("fleetwatch_frames_stored", "Frames written to the store", registry=r)
        self.frames_spooled = Counter("fleetwatch_frames_spooled", "Frames written to the disk spool", registry=r)
        self.frames_replayed = Counter(
            "fleetwatch_frames_replayed", "Spooled frames written to the store on replay", registry=r
        )
        self.frames_quarantined = Counter(
            "fleetwatch_frames_quarantined", "Frames kept in quarantine, by reason", ["reason"], registry=r
        )
        self.sink_errors = Counter("fleetwatch_sink_errors", "Store writes that failed", ["kind"], registry=r)
        self.sink_latency = Histogram(
            "fleetwatch_sink_write_seconds",
            "Time to write one batch to the store",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge("fleetwatch_queue_depth", "Messages waiting in the ingest queue", registry=r)
        self.spool_bytes = Gauge("fleetwatch_spool_bytes", "Bytes waiting in the disk spool", registry=r)
        self.spool_full = Gauge(
            "fleetwatch_spool_full",
            "1 while ingest is held because the spool is at pipeline.spool_max_bytes",
            registry=r,
        )
        self.http_requests = Counter(
            "fleetwatch_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.snippets_received = Counter(
            "fleetwatch_snippets_received", "Snippet messages received", ["transport"], registry=r
        )
        self.snippets_stored = Counter("fleetwatch_snippets_stored", "Snippets added to the dataset", registry=r)
        self.snippets_duplicate = Counter(
            "fleetwatch_snippets_duplicate",
            "Snippets already in the dataset (same sha256), not stored again",
            registry=r,
        )
        self.snippets_quarantined = Counter(
            "fleetwatch_snippets_quarantined",
            "Malformed snippets kept in quarantine, by reason",
            ["reason"],
            registry=r,
        )
        self.snippets_pruned = Counter(
            "fleetwatch_snippets_pruned", "Snippets removed by the dataset's size and age limits", registry=r
        )
        self.up = Gauge("fleetwatch_store_up", "1 when the last store write or ping succeeded", registry=r)

    def add_families(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Also expose the families `source()` returns, computed at each scrape."""
        self.registry.register(_Families(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Families:
    """A prometheus_client collector over `Metric` families."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self.source = source

    def describe(self) -> list[Family]:
        return []  # computed at scrape time only (they read the state database)

    def collect(self) -> Iterator[Family]:
        for metric in self.source():
            names = sorted({name for labels, _ in metric.samples for name in labels})
            kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = kind(metric.name, metric.help, labels=names)
            for labels, value in metric.samples:
                family.add_metric([labels.get(name, "") for name in names], value)
            yield family
