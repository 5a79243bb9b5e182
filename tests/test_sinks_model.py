"""The data model in code (sinks.model) and its line protocol (sinks._lineprotocol), without a server."""

from __future__ import annotations

import numpy as np
import pytest
import store_contract as contract

from fleetwatch.frames import encode_frames
from fleetwatch.sinks import SinkRejected
from fleetwatch.sinks._lineprotocol import encode, encode_lines
from fleetwatch.sinks.influx import line_protocol
from fleetwatch.sinks.model import column, frame_kinds, frame_points, table_points


def test_a_frame_is_one_point_with_the_models_tags_time_and_fields() -> None:
    rows = encode_frames(
        contract.SCHEMA,
        {
            "window_start": [0, 1_795_000_000],
            "window_s": [900, 900],
            "fw_version": ["2.10.300", "2.10.300"],
            "model_id": [4294967295, 7],
            "latency_p50_ms": [0.1, 6553.5],
            "latency_p95_ms": [6553.5, 6553.5],
            "input_mean": [[-32.768, 0.001, 32.767]] * 2,
        },
    )
    points = frame_points(contract.decode([r.tobytes() for r in rows], ["a", "b"], [1_795_001_000] * 2))
    assert points.measurement == "telemetry" and points.key == ("device", "schema")
    assert points.tags["device"].tolist() == ["a", "b"]
    assert points.tags["fw_version"].tolist() == ["2.10.300"] * 2
    assert points.tags["model_id"].tolist() == ["4294967295", "7"]
    assert points.tags["schema"].tolist() == ["1", "1"]
    assert points.time.tolist() == [1_795_001_000 - 900, 1_795_000_000]
    assert points.fields["clock_estimated"].tolist() == [True, False]
    assert points.fields["received"].tolist() == [1_795_001_000] * 2
    assert points.fields["latency_p50_ms"].tolist() == [0.1, 6553.5]
    assert points.fields["input_mean_0"].tolist() == [-32.768] * 2
    flat = [name for f in contract.SCHEMA.fields for name in f.column_names]
    assert list(points.fields) == ["seq", "window_s", "received", "clock_estimated", *flat]
    kinds = points.kinds()
    assert kinds["latency_p50_ms"] == kinds["input_var_2"] == "float"
    assert kinds["conf_hist_9"] == kinds["flags"] == kinds["seq"] == "integer"
    assert list(frame_kinds(contract.SCHEMA)) == ["time", "device", "fw_version", "model_id", *points.fields]


def test_frames_without_a_device_or_with_an_unsendable_one_are_rejected() -> None:
    rows = encode_frames(contract.SCHEMA, {"window_start": [1_795_000_000], "window_s": [60]})
    for device in ("", "line\nbreak", "ends\\"):
        with pytest.raises(SinkRejected):
            frame_points(contract.decode([rows[0].tobytes()], [device], [1_795_000_100]))


def test_table_points_check_names_lengths_and_values() -> None:
    t = np.array([1, 2])
    with pytest.raises(ValueError, match="plain name"):
        table_points("bad name", t, {}, {"x": np.ones(2)})
    with pytest.raises(ValueError, match="plain name"):
        table_points("m", t, {"time": np.array(["a", "b"])}, {"x": np.ones(2)})
    with pytest.raises(ValueError, match="3 values for 2 times"):
        table_points("m", t, {}, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="both tags and fields"):
        table_points("m", t, {"x": np.array(["a", "b"])}, {"x": np.ones(2)})
    with pytest.raises(SinkRejected, match="infinite"):
        table_points("m", t, {}, {"x": np.array([1.0, np.inf])})
    with pytest.raises(SinkRejected, match="control character"):
        table_points("m", t, {"k": np.array(["ok", "tab\there"])}, {"x": np.ones(2)})


def test_table_points_normalise_tags_and_skip_points_without_values() -> None:
    points = table_points(
        "m",
        np.array([1, 2, 3], dtype=np.uint32),
        {"model_id": np.array([7, 7, 8]), "site": np.array(["n", None, ""], dtype=object)},
        {"x": np.array([1.5, np.nan, np.nan]), "note": np.array([None, "y", None], dtype=object)},
    )
    assert points.time.tolist() == [1, 2] and points.time.dtype == np.int64
    assert points.tags["model_id"].tolist() == ["7", "7"]
    assert points.tags["site"].tolist() == ["n", ""]


def test_columns_read_back_follow_one_rule_for_missing_values() -> None:
    masked = np.ma.MaskedArray([1, 2, 3], mask=[False, True, False])
    assert np.isnan(column(masked, "integer")[1]) and column(masked, "integer").dtype == np.float64
    assert column(np.array([1, 2]), "integer").dtype == np.int64
    assert column([True, None], "boolean").tolist() == [True, None]
    assert column([1, None], "float")[0] == 1.0 and np.isnan(column([1, None], "float")[1])
    assert column(["a", None], "string").tolist() == ["a", None]


def test_line_protocol_escapes_omits_absent_values_and_types_fields() -> None:
    points = table_points(
        "m",
        np.array([5, 6]),
        {"t": np.array(["a b,c=d", ""], dtype=object), "u": np.array(["ü", "ü"])},
        {
            "x": np.array([np.nan, -0.25]),
            "s": np.array(['q"\\', None], dtype=object),
            "i": np.array([-(2**63), 2**63 - 1]),
            "b": np.array([True, False]),
        },
    )
    assert line_protocol(points).tolist() == [
        'm,t=a\\ b\\,c\\=d,u=ü s="q\\"\\\\",i=-9223372036854775808i,b=true 5',
        "m,u=ü x=-0.25,i=9223372036854775807i,b=false 6",
    ]
    assert encode(points) == "".join(line + "\n" for line in line_protocol(points)).encode()


def test_line_protocol_floats_parse_back_to_the_same_doubles() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000),
            rng.integers(-32768, 32768, 1000) / 1000,
            rng.integers(0, 65536, 1000) / 10,
            [0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e16, 2.0**53, 123456.789],
        ]
    )
    for chunk in (values[:3000], values[3000:4000], values[4000:5000], values[5000:]):
        lines = encode_lines(table_points("m", np.zeros(len(chunk), dtype=np.int64), {}, {"x": chunk}))
        parsed = np.array([float(line.split("=", 1)[1].split(" ")[0]) for line in lines])
        assert parsed.view(np.int64).tolist() == chunk.view(np.int64).tolist()


def test_line_protocol_of_a_frame_batch_matches_a_reference_formatter() -> None:
    batch = contract.fleet_batch(devices=5, windows=3)
    points = frame_points(batch)
    kinds = points.kinds()

    def reference(i: int) -> str:
        tags = "".join(f",{k}={v[i]}" for k, v in points.tags.items())
        fields = ",".join(
            f"{k}={'true' if v[i] else 'false'}"
            if kinds[k] == "boolean"
            else f"{k}={v[i]}i"
            if kinds[k] == "integer"
            else f"{k}={float(v[i])!r}"
            for k, v in points.fields.items()
        )
        return f"telemetry{tags} {fields} {points.time[i]}"

    got = line_protocol(points).tolist()
    assert [_normalised_floats(line) for line in got] == [_normalised_floats(reference(i)) for i in range(15)]


def _normalised_floats(line: str) -> str:
    """The line with every float field value re-printed by repr (decimal text may differ, values may not)."""
    head, fields, time = line.split(" ")
    parts = []
    for item in fields.split(","):
        key, value = item.split("=")
        is_float = not value.endswith("i") and value not in ("true", "false")
        parts.append(f"{key}={float(value)!r}" if is_float else item)
    return f"{head} {','.join(parts)} {time}"
