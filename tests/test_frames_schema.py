"""Schema files: parsing, errors that name the key, user schema directories, and generated docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.frames import Registry, SchemaError, decode_messages, encode_frames
from fleetwatch.frames.doc import schema_markdown
from fleetwatch.frames.schema import parse_schema

ROOT = Path(__file__).resolve().parents[1]

VIBRATION = """
id = 7
name = "vibration-health"
[[fields]]
name = "rms"
type = "u16"
count = 3
scale = 0.001
unit = "g"
role = "input_mean"
[[fields]]
name = "peak"
type = "f32"
[[fields]]
name = "events"
type = "u8"
role = "counter"
[[invariants]]
name = "events_small"
check = "events <= 100"
"""


def test_schema_1_matches_the_wire_format() -> None:
    schema = Registry.builtin().get(1)
    assert (schema.body_len, schema.frame_len) == (52, 74)
    offsets = {f.name: off for off, f in schema.field_offsets()}
    assert offsets == {
        "inference_count": 0,
        "anomaly_count": 2,
        "latency_p50": 4,
        "latency_p95": 6,
        "mem_peak_pct": 8,
        "flags": 9,
        "battery_mv": 10,
        "input_mean": 12,
        "input_var": 18,
        "conf_hist": 24,
        "class_counts": 44,
    }
    assert schema.frame_dtype.itemsize == 74
    assert schema.field("flags").bits == {"time_synced": 0, "saturated": 1, "low_battery": 2, "rebooted": 3}
    assert schema.by_role("confidence_histogram").bin_edges == tuple(round(0.1 * i, 1) for i in range(11))


def test_user_schema_directory_adds_a_schema_that_decodes(decoder: str, tmp_path: Path) -> None:
    (tmp_path / "vibration.toml").write_text(VIBRATION)
    registry = Registry.with_dirs([tmp_path])
    schema = registry.get(7)
    assert schema.body_len == 3 * 2 + 4 + 1
    rows = encode_frames(
        schema,
        {
            "window_start": [1_795_000_000] * 2,
            "window_s": [60, 60],
            "rms": [[0.5, 1.25, 2.0], [0, 0, 0]],
            "peak": [3.5, -1.0],
            "events": [3, 101],
        },
    )
    messages = [r.tobytes() for r in rows]
    result = decode_messages(messages, ["a", "b"], [1_795_000_100] * 2, registry)
    assert result.batches[7].records()[0]["rms"] == [0.5, 1.25, 2.0]
    assert result.batches[7].records()[0]["peak"] == 3.5
    assert [r.reason for r in result.rejects] == ["invariant:events_small"]
    assert decode_messages(messages, ["a", "b"], [0, 0], Registry.builtin()).reject_counts() == {"unknown_schema": 2}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (("id = 7", "id = 300"), "id: must be an integer 0..255"),
        (('type = "f32"', 'type = "f64"'), "fields[1].type: must be one of"),
        (('name = "peak"', 'name = "seq"'), "clash with the envelope"),
        (('check = "events <= 100"', 'check = "nope <= 100"'), "'nope' is neither an integer nor a field"),
        (('check = "events <= 100"', 'check = "events ~ 100"'), "invariants[0].check"),
        (('check = "events <= 100"', 'check = "rms <= 100"'), "'rms' is an array of 3 values; compare sum(rms)"),
        (('check = "events <= 100"', 'check = "sum(peak) <= 100"'), "sums an f32 field"),
        (('check = "events <= 100"', 'check = "1 <= 100"'), "compares two integers"),
        (('check = "events <= 100"', f'check = "events <= {2**53 + 1}"'), "is beyond ±2**53"),
        (('role = "counter"', 'role = "banana"'), "fields[2].role: must be one of"),
    ],
)
def test_bad_schema_files_name_the_file_and_key(tmp_path: Path, patch: tuple[str, str], message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(VIBRATION.replace(*patch))
    with pytest.raises(SchemaError) as info:
        Registry.with_dirs([tmp_path])
    assert str(path) in str(info.value) and message in str(info.value)


def test_duplicate_schema_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dup.toml").write_text(VIBRATION.replace("id = 7", "id = 1"))
    with pytest.raises(SchemaError, match="schema id 1 is already taken by 'tinyml-health'"):
        Registry.with_dirs([tmp_path])


def test_a_schema_has_at_most_240_invariants() -> None:
    fields = [{"name": "n", "type": "u8"}]
    invariants = [{"name": f"rule_{k}", "check": f"n != {k}"} for k in range(241)]
    with pytest.raises(SchemaError, match="241 invariants; a schema may have 240 at most"):
        parse_schema({"id": 9, "name": "x", "fields": fields, "invariants": invariants})
    assert len(parse_schema({"id": 9, "name": "x", "fields": fields, "invariants": invariants[:240]}).invariants) == 240


def test_a_confidence_histogram_needs_bin_edges() -> None:
    with pytest.raises(SchemaError, match="bin_edges"):
        parse_schema(
            {"id": 9, "name": "x", "fields": [{"name": "h", "type": "u16", "count": 2, "role": "confidence_histogram"}]}
        )


def test_docs_table_is_generated_from_the_schema_file() -> None:
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    block = doc.split("<!-- generated: fleetwatch schema show 1 -->\n", 1)[1].split("<!-- end generated -->", 1)[0]
    assert block == schema_markdown(Registry.builtin().get(1)), "docs/wire-format.md is stale: regenerate it"


def test_schema_cli_list_and_show(tmp_path: Path) -> None:
    (tmp_path / "vibration.toml").write_text(VIBRATION)
    listing = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "schema", "list", "--schema-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tinyml-health" in listing and "vibration-health" in listing
    shown = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "schema", "show", "1", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"frame_len": 74' in shown
    missing = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "schema", "show", "99"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no schema with id 99" in missing.stderr


def test_dtype_views_agree_with_the_packer() -> None:
    schema = Registry.builtin().get(1)
    rows = encode_frames(schema, {"latency_p50_ms": [827.1], "input_mean": [[-20.466, 31.176, -29.053]]})
    raw = rows.view(schema.frame_dtype).reshape(-1)
    assert raw["latency_p50"][0] == 8271
    assert np.array_equal(raw["input_mean"][0], [-20466, 31176, -29053])
