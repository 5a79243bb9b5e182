"""The pipeline against a real influxd: a 4xx from the store is quarantined with the server's reason; an
acknowledgement that fails after the frames are stored leaves them stored, not quarantined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetwatch.frames import Registry, encode_frames
from fleetwatch.metrics import Metrics
from fleetwatch.pipeline import Message, Pipeline
from fleetwatch.quarantine import Quarantine
from fleetwatch.sinks import open_store
from fleetwatch.spool import Spool
from fleetwatch.state import StateDB


def test_a_field_type_conflict_is_quarantined_with_the_reason_not_retried(influx_db: str, tmp_path: Path) -> None:
    store = open_store(influx_db)
    store.write_table(
        "telemetry",
        np.array([1_795_000_000]),  # same shard as the frame: InfluxDB 1.x types fields per shard
        {"device": np.array(["other"])},
        {"latency_p50_ms": np.array(["text"], dtype=object)},
    )
    pipeline = Pipeline(
        store, Registry.builtin(), Quarantine(StateDB(tmp_path / "s.db")), Spool(tmp_path / "spool"), Metrics()
    )
    frame = encode_frames(Registry.builtin().get(1), {"window_start": [1_795_000_000], "window_s": [60]})[0].tobytes()
    acked = []
    report = pipeline.process([Message(frame, "dev-1", 1_795_000_100, "mqtt", lambda: acked.append(1))])
    assert report.quarantined == 1 and report.stored == 0 and report.spooled == 0
    entry = pipeline.quarantine.list()[0]
    assert entry.reason.startswith("sink_rejected:") and "conflict" in entry.reason
    assert entry.raw == frame and entry.device == "dev-1" and entry.transport == "mqtt"
    assert acked == [1], "a quarantined message is durable, so it is acknowledged"
    assert pipeline.spool.is_empty()


def test_a_failing_acknowledgement_leaves_stored_frames_stored(influx_db: str, tmp_path: Path) -> None:
    store = open_store(influx_db)
    pipeline = Pipeline(
        store, Registry.builtin(), Quarantine(StateDB(tmp_path / "s.db")), Spool(tmp_path / "spool"), Metrics()
    )
    schema = Registry.builtin().get(1)
    frames = encode_frames(schema, {"window_start": [1_795_000_000, 1_795_000_060], "window_s": [60, 60]})

    def broken() -> None:
        raise ConnectionError("the source went away")

    acked: list[list[int]] = []
    report = pipeline.process(
        [
            Message(frames[0].tobytes(), "dev-1", 1_795_000_100, "http", broken),
            Message(frames[1].tobytes(), "dev-2", 1_795_000_100, "mqtt", ack_to=acked.append, ack_id=7),
        ]
    )
    assert report.stored == 2 and report.quarantined == 0
    assert pipeline.quarantine.list() == [] and acked == [[7]], "the other source is still acknowledged"
    stored = store.read_frames(1_794_999_000, 1_795_001_000, schema=schema)
    assert sorted(stored["device"].tolist()) == ["dev-1", "dev-2"]
