"""What every store must do, as checks on a `Store`: test_sinks_influx.py and test_sinks_embedded.py run
them on a real influxd and a real DuckDB file. Expected values come from the golden vectors' JSON (encoded
independently of the project) or are written out literally, never from `sinks.model`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.frames import FrameBatch, Registry, decode_messages, encode_frames
from fleetwatch.sinks import SinkRejected, Store

SCHEMA = Registry.builtin().get(1)
GOLDEN_RECEIVED = 1_795_000_000
#: Tag values that need escaping in line protocol or quoting in InfluxQL/SQL, and one injection attempt.
AWKWARD_TAGS = ["it's", 'say "hi"', "a,b=c d", "back\\slash", "ünï cödé", "' OR 1=1 --", "x' OR 'a'='a"]


def decode(frames: list[bytes], devices: list[str], received: list[int]) -> FrameBatch:
    result = decode_messages(frames, devices, received, Registry.builtin())
    assert not result.rejects, result.rejects
    return result.batches[1]


def golden_batch(golden_path: Path) -> tuple[FrameBatch, list[dict]]:
    """Every valid golden frame, message i from device `golden-i`; and the expected rows from the JSON."""
    vectors = [json.loads(line) for line in (golden_path / "frames-v1.jsonl").read_text().splitlines() if line]
    messages = [bytes.fromhex(v["hex"]) for v in vectors]
    devices = [f"golden-{i}" for i in range(len(vectors))]
    result = decode_messages(messages, devices, [GOLDEN_RECEIVED] * len(vectors), Registry.builtin())
    expected = [{**e["ok"], "device": devices[i]} for i, v in enumerate(vectors) for e in v["expect"] if "ok" in e]
    return result.batches[1], expected


def check_golden_round_trip(store: Store, golden_path: Path) -> None:
    """Golden frames come back exactly: tags, time, integers, floats bit for bit, types."""
    batch, expected = golden_batch(golden_path)
    assert store.write_frames(batch) == len(expected) == 13
    got = store.read_frames(0, 2**32, schema=SCHEMA)
    expected.sort(key=lambda e: (e["device"], e["window_start"]))
    assert got["device"].tolist() == [e["device"] for e in expected]
    assert got["time"].tolist() == [e["window_start"] for e in expected]
    assert got["fw_version"].tolist() == [e["fw_version"] for e in expected]
    assert got["model_id"].tolist() == [str(e["model_id"]) for e in expected]
    assert got["received"].tolist() == [GOLDEN_RECEIVED] * len(expected)
    assert got["clock_estimated"].tolist() == [False] * len(expected)
    for name in ("seq", "window_s", "inference_count", "anomaly_count", "mem_peak_pct", "flags", "battery_mv"):
        assert got[name].dtype == np.int64 and got[name].tolist() == [e[name] for e in expected], name
    for name in ("latency_p50_ms", "latency_p95_ms"):
        assert_bit_exact(got[name], [e[name] for e in expected])
    for name, count in (("input_mean", 3), ("input_var", 3), ("conf_hist", 10), ("class_counts", 4)):
        for i in range(count):
            values = [e[name][i] for e in expected]
            column = got[f"{name}_{i}"]
            if name.startswith("input"):
                assert_bit_exact(column, values)
            else:
                assert column.dtype == np.int64 and column.tolist() == values, f"{name}_{i}"
    assert [k for k in got if k not in ("time", "device", "fw_version", "model_id")][:4] == [
        "seq",
        "window_s",
        "received",
        "clock_estimated",
    ]


def check_clock_estimated(store: Store) -> None:
    """window_start == 0: time = received - window_s and clock_estimated true; false otherwise."""
    rows = encode_frames(SCHEMA, {"window_start": [0, 1_795_000_000], "window_s": [600, 600], "seq": [7, 8]})
    batch = decode([r.tobytes() for r in rows], ["clockless", "clocked"], [1_795_010_000, 1_795_010_000])
    assert store.write_frames(batch) == 2
    got = store.read_frames(0, 2**32, schema=SCHEMA)
    assert got["device"].tolist() == ["clocked", "clockless"]
    assert got["time"].tolist() == [1_795_000_000, 1_795_010_000 - 600]
    assert got["clock_estimated"].tolist() == [False, True]
    assert got["seq"].tolist() == [8, 7]


def check_rewrite_overwrites(store: Store) -> None:
    """A re-sent frame is the same point: writing twice keeps one row per frame, with the last values."""
    first = fleet_batch(devices=3, windows=4, p50=1.5)
    assert store.write_frames(first) == 12
    assert store.write_frames(first) == 12
    assert store.write_frames(fleet_batch(devices=3, windows=4, p50=2.5)) == 12
    got = store.read_frames(0, 2**32, schema=SCHEMA)
    assert len(got["time"]) == 12
    assert got["latency_p50_ms"].tolist() == [2.5] * 12
    assert got["device"].tolist() == sorted(got["device"].tolist())
    only = store.read_frames(1_795_000_000, 1_795_000_000 + 2 * 3600, schema=SCHEMA, devices=["dev-1"])
    assert only["device"].tolist() == ["dev-1", "dev-1"]
    assert only["time"].tolist() == [1_795_000_000, 1_795_003_600]


def check_read_frames_columns(store: Store) -> None:
    """`columns` reads time, the three tags and only the columns named, in the order of the whole read and
    as it has them; a name that is not a column of the schema is the caller's mistake."""
    assert store.write_frames(fleet_batch(devices=3, windows=2)) == 6
    whole = store.read_frames(0, 2**32, schema=SCHEMA)
    some = store.read_frames(0, 2**32, schema=SCHEMA, columns=["input_mean_1", "seq"])
    assert list(some) == ["time", "device", "fw_version", "model_id", "seq", "input_mean_1"]
    assert some["seq"].tolist() == [0, 1, 0, 1, 0, 1]
    for name, values in some.items():
        assert values.dtype == whole[name].dtype and values.tolist() == whole[name].tolist(), name
    bare = store.read_frames(0, 2**32, schema=SCHEMA, columns=[])
    assert list(bare) == ["time", "device", "fw_version", "model_id"]
    assert bare["device"].tolist() == ["dev-0", "dev-0", "dev-1", "dev-1", "dev-2", "dev-2"]
    with pytest.raises(ValueError, match="no columns"):
        store.read_frames(0, 2**32, schema=SCHEMA, columns=["seq", "no_such_field"])


def check_where_with_awkward_tags(store: Store) -> None:
    """Tag values with quotes, separators, backslashes and unicode round-trip and filter exactly."""
    n = len(AWKWARD_TAGS)
    store.write_table(
        "findings",
        np.arange(n, dtype=np.int64) + 100,
        {"key": np.array(AWKWARD_TAGS, dtype=object), "scope": np.array(["device"] * n, dtype=object)},
        {"effect": np.arange(n) / 4, "note": np.array([f'{t} "quoted"\\' for t in AWKWARD_TAGS], dtype=object)},
    )
    for i, value in enumerate(AWKWARD_TAGS):
        got = store.read_table("findings", 0, 1000, where={"key": [value]})
        assert got["key"].tolist() == [value] and got["time"].tolist() == [100 + i], value
        assert got["note"].tolist() == [f'{value} "quoted"\\']
    both = store.read_table("findings", 0, 1000, columns=["effect"], where={"key": AWKWARD_TAGS[:2]})
    assert sorted(both) == ["effect", "key", "scope", "time"]
    assert both["effect"].tolist() == [0.0, 0.25]
    assert store.read_table("findings", 0, 1000, where={"key": []})["time"].tolist() == []
    assert store.read_table("findings", 0, 1000, where={"key": ["nobody"]})["time"].tolist() == []


def check_field_type_conflict(store: Store) -> None:
    """A field written as another kind than it has is rejected with the store's reason."""
    store.write_table("ingest", np.array([1_795_000_000]), {"site": np.array(["a"])}, {"frames": np.array([5])})
    with pytest.raises(SinkRejected) as info:
        store.write_table("ingest", np.array([1_795_000_001]), {"site": np.array(["a"])}, {"frames": np.array([1.5])})
    assert "field type conflict" in info.value.reason


def check_new_field_and_missing_values(store: Store) -> None:
    """A field that appears later is added; rows without it read as missing (NaN / None)."""
    store.write_table(
        "rollout", np.array([10, 20]), {"cohort": np.array(["canary", "control"])}, {"n": np.array([1, 2])}
    )
    store.write_table(
        "rollout",
        np.array([30]),
        {"cohort": np.array(["canary"])},
        {"n": np.array([3]), "state": np.array(["judging"], dtype=object), "score": np.array([0.1])},
    )
    got = store.read_table("rollout", 0, 100)
    assert got["time"].tolist() == [10, 20, 30]
    assert got["n"].tolist() == [1, 2, 3] and got["n"].dtype == np.int64
    assert got["state"].tolist() == [None, None, "judging"]
    assert np.isnan(got["score"][:2]).all() and got["score"][2] == 0.1
    nothing = store.read_table("never_written", 0, 100, columns=["x"])
    assert nothing["time"].tolist() == [] and nothing["x"].tolist() == []


def fleet_batch(devices: int, windows: int, p50: float = 1.5, start: int = 1_795_000_000) -> FrameBatch:
    n = devices * windows
    device = np.tile(np.arange(devices), windows)
    window = np.repeat(np.arange(windows), devices)
    rows = encode_frames(
        SCHEMA,
        {
            "seq": window,
            "window_start": start + 3600 * window,
            "window_s": np.full(n, 3600),
            "latency_p50_ms": np.full(n, p50),
            "latency_p95_ms": np.full(n, 9.5),
            "input_mean": np.stack([device / 1000, -window / 1000, np.full(n, -32.768)], axis=1),
        },
    )
    return decode([r.tobytes() for r in rows], [f"dev-{d}" for d in device], [start + 10**6] * n)


def assert_bit_exact(got: np.ndarray, expected: list[float]) -> None:
    assert got.dtype == np.float64
    assert got.view(np.int64).tolist() == np.array(expected, dtype=np.float64).view(np.int64).tolist()
