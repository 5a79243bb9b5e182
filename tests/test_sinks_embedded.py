"""The embedded store on a real DuckDB file: the store contract, upserts, schema evolution, threads, locks."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest
import store_contract as contract

from fleetwatch.frames import Registry, decode_messages, encode_frames
from fleetwatch.frames.schema import parse_schema
from fleetwatch.sinks import SinkUnavailable, StoreLocked, open_store
from fleetwatch.sinks.embedded import DB_FILE, EmbeddedStore


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"embedded://{tmp_path / 'store'}"


@pytest.fixture
def store(url: str) -> Iterator[EmbeddedStore]:
    s = open_store(url)
    assert isinstance(s, EmbeddedStore)
    yield s
    s.close()


def test_golden_frames_round_trip_exactly(store: EmbeddedStore, golden_path: Path) -> None:
    contract.check_golden_round_trip(store, golden_path)


def test_clockless_frames_get_the_estimated_time(store: EmbeddedStore) -> None:
    contract.check_clock_estimated(store)


def test_a_rewritten_frame_overwrites_itself(store: EmbeddedStore) -> None:
    contract.check_rewrite_overwrites(store)


def test_read_frames_of_some_columns(store: EmbeddedStore) -> None:
    contract.check_read_frames_columns(store)


def test_where_on_tag_values_that_need_quoting(store: EmbeddedStore) -> None:
    contract.check_where_with_awkward_tags(store)


def test_field_type_conflict_is_rejected_with_the_reason(store: EmbeddedStore) -> None:
    contract.check_field_type_conflict(store)


def test_new_fields_and_missing_values(store: EmbeddedStore) -> None:
    contract.check_new_field_and_missing_values(store)


def test_duplicates_within_one_batch_keep_the_last(store: EmbeddedStore) -> None:
    store.write_frames(contract.fleet_batch(devices=2, windows=1, p50=1.0))
    rows = encode_frames(
        contract.SCHEMA,
        {
            "window_start": [1_795_000_000] * 3,
            "window_s": [3600] * 3,
            "latency_p50_ms": [2, 3, 4],
            "latency_p95_ms": [9] * 3,
        },
    )
    batch = contract.decode([r.tobytes() for r in rows], ["dev-0", "dev-0", "dev-9"], [1_795_010_000] * 3)
    assert store.write_frames(batch) == 3
    got = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert got["device"].tolist() == ["dev-0", "dev-1", "dev-9"]
    assert got["latency_p50_ms"].tolist() == [3.0, 1.0, 4.0]


def test_a_firmware_or_model_first_seen_after_a_read_comes_back_right(store: EmbeddedStore) -> None:
    """read_frames reads fw_version and model_id as numbers into the values it read before: a new value
    must make it read them again, not come back as another one."""
    store.write_frames(contract.fleet_batch(devices=3, windows=1))
    first = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert set(first["fw_version"].tolist()) == {"0.0.0"} and set(first["model_id"].tolist()) == {"0"}
    values = {"window_start": [1_795_003_600] * 2, "window_s": [3600] * 2, "latency_p95_ms": [9, 9]}
    rows = encode_frames(contract.SCHEMA, {**values, "fw_version": [0x01020000, 0x01030000], "model_id": [7, 8]})
    store.write_frames(contract.decode([r.tobytes() for r in rows], ["dev-1", "dev-0"], [1_795_010_000] * 2))
    got = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert got["device"].tolist() == ["dev-0", "dev-0", "dev-1", "dev-1", "dev-2"]
    assert got["fw_version"].tolist() == ["0.0.0", "1.3.0", "0.0.0", "1.2.0", "0.0.0"]
    assert got["model_id"].tolist() == ["0", "8", "0", "7", "0"]
    assert store.read_table("telemetry", 0, 2**32, columns=[])["schema"].tolist() == ["1"] * 5


def test_a_new_schema_adds_its_columns_and_reads_stay_per_schema(store: EmbeddedStore) -> None:
    extra = parse_schema(
        {
            "id": 9,
            "name": "vibration",
            "fields": [
                {"name": "rms", "type": "u16", "scale": 0.01, "unit": "g"},
                {"name": "peaks", "type": "u8", "count": 2},
            ],
        }
    )
    registry = Registry([contract.SCHEMA, extra])
    store.write_frames(contract.fleet_batch(devices=2, windows=1))
    rows = encode_frames(extra, {"window_start": [1_795_000_000], "window_s": [60], "rms": [1.23], "peaks": [[4, 5]]})
    batch = decode_messages([rows[0].tobytes()], ["dev-0"], [1_795_000_100], registry).batches[9]
    assert store.write_frames(batch) == 1
    nine = store.read_frames(0, 2**32, schema=extra)
    assert list(nine)[-3:] == ["rms", "peaks_0", "peaks_1"]
    assert nine["device"].tolist() == ["dev-0"] and nine["rms"].tolist() == [1.23]
    assert nine["peaks_1"].tolist() == [5] and nine["peaks_1"].dtype == np.int64
    one = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert one["device"].tolist() == ["dev-0", "dev-1"] and "rms" not in one


#: Device ids whose order differs between byte-wise, case-insensitive and naive orders.
ODD_DEVICES = ["dev-10", "dev-9", "Dev-1", "dev-1", "ünï", "zz", "z", "\U0001f600", "\uffef", "a b", "a"]


def _rows(columns: dict[str, np.ndarray], *names: str) -> list[tuple]:
    return list(zip(*(columns[n].tolist() for n in names), strict=True))


def test_rows_written_in_any_order_come_back_sorted_by_device_then_time(store: EmbeddedStore) -> None:
    """Rows are stored in the order they arrive and sorted when read: by device id (code point order, as
    Python sorts str), then time; re-sent frames keep their place."""
    rng = np.random.default_rng(7)
    written = []
    for window in rng.permutation(4):
        order = rng.permutation(len(ODD_DEVICES))
        devices = [ODD_DEVICES[i] for i in order]
        start = 1_795_000_000 + 3600 * int(window)
        rows = encode_frames(
            contract.SCHEMA,
            {
                "window_start": [start] * len(devices),
                "window_s": [3600] * len(devices),
                "seq": order,
                "latency_p95_ms": [9] * len(devices),
            },
        )
        batch = contract.decode([r.tobytes() for r in rows], devices, [start + 4000] * len(devices))
        store.write_frames(batch)
        if window == 2:
            store.write_frames(batch)  # re-sent: the upsert keeps one row per frame
        written += [(d, start, int(q)) for d, q in zip(devices, order, strict=True)]
    got = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert _rows(got, "device", "time", "seq") == sorted(written)
    assert got["seq"].dtype == np.int64 and got["latency_p95_ms"].tolist() == [9.0] * len(written)
    some = store.read_frames(0, 2**32, schema=contract.SCHEMA, devices=ODD_DEVICES[::3])
    assert _rows(some, "device", "time") == sorted((d, t) for d, t, _ in written if d in ODD_DEVICES[::3])
    table = store.read_table("telemetry", 0, 2**32)
    assert not [name for name in table if name.startswith("_")]
    assert _rows(table, "device", "time") == sorted((d, t) for d, t, _ in written)


def test_devices_first_written_after_a_read_come_back_in_order(url: str, store: EmbeddedStore) -> None:
    """A reader knows the device ids it has read; ids written later, sorting between them, are read right,
    through this store and through a read-only handle of the same database."""
    times = np.array([10, 10], dtype=np.int64)
    tags = {"device": np.array(["b", "d"]), "other": np.array(["", ""])}
    store.write_table("band", times, tags, {"x": np.array([1.0, 2.0])})
    reader = open_store(url, read_only=True)
    for handle in (store, reader):
        assert handle.read_table("band", 0, 100)["device"].tolist() == ["b", "d"]
    store.write_table("band", times + 1, {"device": np.array(["c", "a"])}, {"x": np.array([3.0, 4.0])})
    # a point without a device: "" (the tag's default), which sorts first
    store.write_table("band", np.array([12]), {"other": np.array(["o"])}, {"x": np.array([5.0])})
    for handle in (store, reader):
        got = handle.read_table("band", 0, 100)
        assert _rows(got, "device", "time", "x") == [
            ("", 12, 5.0),
            ("a", 11, 4.0),
            ("b", 10, 1.0),
            ("c", 11, 3.0),
            ("d", 10, 2.0),
        ]
        assert got["other"].tolist() == ["o", "", "", "", ""]
    reader.close()


def test_times_too_far_apart_for_one_sort_key_are_sorted_too(store: EmbeddedStore) -> None:
    store.write_table(
        "far",
        np.array([2**62, 0, 5, 2**62 + 1], dtype=np.int64),
        {"device": np.array(["b", "b", "a", "a"])},
        {"x": np.arange(4.0)},
    )
    got = store.read_table("far", 0, 2**63 - 1)
    assert _rows(got, "device", "time", "x") == [("a", 5, 2.0), ("a", 2**62 + 1, 3.0), ("b", 0, 1.0), ("b", 2**62, 0.0)]


def test_a_store_written_before_devices_had_codes_is_read_then_upgraded(url: str, tmp_path: Path) -> None:
    """A file in the earlier layout (no device codes) reads the same, read-only too; the store's first write
    to the table codes its rows."""
    first = open_store(url)
    first.write_frames(contract.fleet_batch(devices=3, windows=2))
    first.close()
    path = tmp_path / "store" / DB_FILE
    old = duckdb.connect(str(path))
    old.execute('ALTER TABLE telemetry DROP COLUMN "_device_code"')
    old.execute("DROP TABLE _devices")
    old.execute("DROP SEQUENCE _device_code_sequence")
    old.close()
    expected = [(f"dev-{d}", 1_795_000_000 + 3600 * w) for d in range(3) for w in range(2)]
    reader = open_store(url, read_only=True)
    assert _rows(reader.read_frames(0, 2**32, schema=contract.SCHEMA), "device", "time") == expected
    reader.close()
    store = open_store(url)
    assert _rows(store.read_frames(0, 2**32, schema=contract.SCHEMA), "device", "time") == expected
    store.write_frames(contract.fleet_batch(devices=5, windows=1, start=1_795_100_000))
    got = store.read_frames(0, 2**32, schema=contract.SCHEMA)
    assert _rows(got, "device", "time") == sorted([*expected, *((f"dev-{d}", 1_795_100_000) for d in range(5))])
    store.close()
    upgraded = duckdb.connect(str(path), read_only=True)
    coded = upgraded.execute(
        "SELECT count(*), count(DISTINCT code) FROM telemetry JOIN _devices d ON d.code = telemetry._device_code "
        "WHERE d.device = telemetry.device"
    ).fetchone()
    assert coded == (11, 5)
    upgraded.close()


def test_readers_see_whole_batches_while_the_writer_writes(store: EmbeddedStore) -> None:
    batches = [contract.fleet_batch(devices=100, windows=1, start=1_795_000_000 + 3600 * k) for k in range(20)]
    seen: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    done = threading.Event()

    def read(counts: list[int]) -> None:
        try:
            while not done.is_set():
                counts.append(len(store.read_frames(0, 2**32, schema=contract.SCHEMA)["time"]))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(counts,)) for counts in seen]
    for reader in readers:
        reader.start()
    for batch in batches:
        store.write_frames(batch)
        reads = [len(counts) for counts in seen]
        while not errors and any(len(counts) < n + 2 for counts, n in zip(seen, reads, strict=True)):
            done.wait(0.001)  # let every reader finish a read that started after this write
    done.set()
    for reader in readers:
        reader.join(30)
    assert not errors
    for counts in seen:
        assert all(c % 100 == 0 for c in counts) and counts == sorted(counts)
        assert set(range(100, 2001, 100)) <= set(counts)
    assert len(store.read_frames(0, 2**32, schema=contract.SCHEMA)["time"]) == 2000


def test_another_process_cannot_open_the_store_while_it_is_open(url: str, store: EmbeddedStore) -> None:
    store.write_frames(contract.fleet_batch(devices=3, windows=1))
    code = (
        "import sys\nfrom fleetwatch.sinks import open_store, StoreLocked\n"
        f"try:\n    s = open_store({url!r}, read_only=True)\nexcept StoreLocked as exc:\n    sys.exit(str(exc))\n"
        "print(len(s.read_table('telemetry', 0, 2**32)['time']))\n"
    )
    locked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert locked.returncode == 1 and "in use by another process" in locked.stderr and "PID" in locked.stderr
    store.close()
    readable = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert readable.returncode == 0 and readable.stdout.strip() == "3"


def test_the_same_process_may_read_through_a_read_only_handle(url: str, store: EmbeddedStore) -> None:
    store.write_frames(contract.fleet_batch(devices=2, windows=1))
    reader = open_store(url, read_only=True)
    assert len(reader.read_frames(0, 2**32, schema=contract.SCHEMA)["time"]) == 2
    with pytest.raises(PermissionError):
        reader.write_frames(contract.fleet_batch(devices=1, windows=1))
    reader.close()
    store.ping()


def test_read_only_before_anything_was_written_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SinkUnavailable, match="nothing has been written"):
        open_store(f"embedded://{tmp_path / 'empty'}", read_only=True)


def test_data_survives_a_reopen_and_a_closed_store_is_unavailable(url: str) -> None:
    first = open_store(url)
    first.write_frames(contract.fleet_batch(devices=2, windows=2))
    first.close()
    with pytest.raises(SinkUnavailable):
        first.ping()
    again = open_store(url)
    assert len(again.read_frames(0, 2**32, schema=contract.SCHEMA)["time"]) == 4
    again.close()


def test_store_locked_is_retryable() -> None:
    assert issubclass(StoreLocked, SinkUnavailable)
