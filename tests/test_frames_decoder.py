"""The vectorised decoder against a straightforward per-frame reference, and properties on any bytes.

Each runs on both implementations (the `decoder` fixture: C routines, then the numpy fallback), and the two
are checked against each other on fuzzed frames of random user schemas.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwatch.frames import DecodeResult, Registry, Schema, decode_messages, encode_frames, native
from fleetwatch.frames.crc import crc16, crc16_check_rows, crc16_rows, crc16_rows_fallback
from fleetwatch.frames.rules import MALFORMED, reason_codes
from fleetwatch.frames.schema import TYPES, parse_schema

REGISTRY = Registry.builtin()
SCHEMA = REGISTRY.get(1)
RECEIVED = 1_795_000_000
BODY = struct.Struct("<HHHHBBH3h3H10H4H")
ENVELOPE = struct.Struct("<BBBBHIHII")


def reference_walk(message: bytes) -> list[tuple[int, str]]:
    """WIRE-FORMAT.md's walk written plainly: (offset, "ok" or reason) per frame or reject."""
    out: list[tuple[int, str]] = []
    pos = 0
    while True:
        rest = len(message) - pos
        if rest == 0 and pos:
            return out
        if rest < 22:
            return [*out, (pos, "trailing_bytes" if pos else "truncated")]
        magic, version, schema_id, body_len, _, window_start, window_s, _, _ = ENVELOPE.unpack_from(message, pos)
        if magic != 0xFB:
            return [*out, (pos, "bad_magic")]
        if version != 1:
            return [*out, (pos, "unsupported_version")]
        if 22 + body_len > rest:
            return [*out, (pos, "truncated")]
        frame = message[pos : pos + 22 + body_len]
        out.append((pos, _reference_reason(frame, schema_id, body_len, window_start, window_s)))
        pos += 22 + body_len


def _reference_reason(frame: bytes, schema_id: int, body_len: int, window_start: int, window_s: int) -> str:
    if binascii.crc_hqx(frame[:-2], 0xFFFF) != struct.unpack("<H", frame[-2:])[0]:
        return "bad_crc"
    if schema_id != 1:
        return "unknown_schema"
    if body_len != 52:
        return "body_len_mismatch"
    body = BODY.unpack_from(frame, 20)
    count, anomalies, p50, p95, mem = body[:5]
    if window_s == 0:
        return "invariant:window_s_positive"
    rules = [
        ("conf_hist_sum", sum(body[13:23]) == count),
        ("class_counts_sum", sum(body[23:27]) == count),
        ("anomaly_le_inference", anomalies <= count),
        ("latency_order", p50 <= p95),
        ("mem_peak_range", mem <= 100),
    ]
    for name, holds in rules:
        if not holds:
            return f"invariant:{name}"
    return "time_in_future" if window_start > RECEIVED + 86400 else "ok"


def decoded_walk(messages: list[bytes]) -> list[list[tuple[int, str]]]:
    result = decode_messages(messages, ["d"] * len(messages), [RECEIVED] * len(messages), REGISTRY)
    out: list[list[tuple[int, str]]] = [[] for _ in messages]
    for batch in result.batches.values():
        for m, off in zip(batch.message.tolist(), batch.offset.tolist(), strict=True):
            out[m].append((off, "ok"))
    for r in result.rejects:
        out[r.message].append((r.offset, r.reason))
    return [sorted(x) for x in out]


@st.composite
def valid_frame(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(0, 2000))
    hist = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).multinomial(count, [0.1] * 10)
    classes = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).multinomial(count, [0.25] * 4)
    p50 = draw(st.integers(0, 60000))
    values = {
        "seq": [draw(st.integers(0, 65535))],
        "window_start": [draw(st.integers(0, RECEIVED + 86400))],
        "window_s": [draw(st.integers(1, 65535))],
        "fw_version": [draw(st.integers(0, 2**32 - 1))],
        "model_id": [draw(st.integers(0, 2**32 - 1))],
        "inference_count": [count],
        "anomaly_count": [draw(st.integers(0, count))],
        "latency_p50_ms": [p50 / 10],
        "latency_p95_ms": [draw(st.integers(p50, 65535)) / 10],
        "mem_peak_pct": [draw(st.integers(0, 100))],
        "flags": [draw(st.integers(0, 15))],
        "battery_mv": [draw(st.integers(0, 65535))],
        "input_mean": [[draw(st.integers(-32768, 32767)) / 1000 for _ in range(3)]],
        "input_var": [[draw(st.integers(0, 65535)) / 10000 for _ in range(3)]],
        "conf_hist": [hist.tolist()],
        "class_counts": [classes.tolist()],
    }
    return encode_frames(SCHEMA, values)[0].tobytes()


def _recrc(frame: bytearray) -> bytes:
    frame[-2:] = struct.pack("<H", crc16(bytes(frame[:-2])))
    return bytes(frame)


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(valid_frame()))
    kind = draw(st.sampled_from(["flip", "body_byte", "schema", "body_len", "truncate", "window_s", "future"]))
    if kind == "flip":
        frame[draw(st.integers(0, len(frame) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(frame)
    if kind == "body_byte":
        frame[draw(st.integers(20, 71))] = draw(st.integers(0, 255))
        return _recrc(frame)
    if kind == "schema":
        frame[2] = draw(st.integers(2, 255))
        return _recrc(frame)
    if kind == "body_len":
        new_len = draw(st.integers(0, 120).filter(lambda n: n != 52))
        body = bytes(frame[20:72]) * 3
        return _recrc(bytearray(bytes(frame[:3]) + bytes([new_len]) + bytes(frame[4:20]) + body[:new_len] + b"\0\0"))
    if kind == "truncate":
        return bytes(frame[: draw(st.integers(0, len(frame) - 1))])
    if kind == "window_s":
        frame[10:12] = b"\0\0"
        return _recrc(frame)
    frame[6:10] = struct.pack("<I", RECEIVED + 86400 + draw(st.integers(1, 10**6)))
    return _recrc(frame)


message = st.lists(st.one_of(valid_frame(), mutated_frame(), st.binary(max_size=30)), max_size=5).map(b"".join)


#: The `decoder` fixture holds for every example of a test (it switches the implementation, nothing else).
#: Examples per implementation are half what one implementation had: the fuzz tests at the end check the two
#: implementations against each other on top.
ONE_IMPLEMENTATION = [HealthCheck.function_scoped_fixture]


@settings(max_examples=150, deadline=None, suppress_health_check=ONE_IMPLEMENTATION)
@given(st.lists(message, min_size=1, max_size=12))
def test_decoder_agrees_with_the_reference_walk(decoder: str, messages: list[bytes]) -> None:
    assert decoded_walk(messages) == [reference_walk(m) for m in messages]


@settings(max_examples=100, deadline=None, suppress_health_check=ONE_IMPLEMENTATION)
@given(st.lists(valid_frame(), min_size=1, max_size=8), st.integers(1, 6))
def test_homogeneous_batches_take_the_fast_path_and_agree(decoder: str, frames: list[bytes], per_message: int) -> None:
    messages = [b"".join(frames[i : i + per_message]) for i in range(0, len(frames), per_message)]
    assert decoded_walk(messages) == [reference_walk(m) for m in messages]
    assert all(outcome == "ok" for m in decoded_walk(messages) for _, outcome in m)


@settings(max_examples=250, deadline=None, suppress_health_check=ONE_IMPLEMENTATION)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=6))
def test_any_bytes_decode_without_exception_and_every_byte_is_accounted_for(
    decoder: str, messages: list[bytes]
) -> None:
    result = decode_messages(messages, ["d"] * len(messages), [RECEIVED] * len(messages), REGISTRY)
    spans: list[list[tuple[int, int]]] = [[] for _ in messages]
    for batch in result.batches.values():
        for m, off in zip(batch.message.tolist(), batch.offset.tolist(), strict=True):
            spans[m].append((off, batch.schema.frame_len))
    for r in result.rejects:
        spans[r.message].append((r.offset, len(r.raw)))
        assert messages[r.message][r.offset : r.offset + len(r.raw)] == r.raw
    for msg, parts in zip(messages, spans, strict=True):
        pos = 0
        for off, length in sorted(parts):
            assert off == pos
            pos += length
        assert pos == len(msg)
        assert parts, "even an empty message is accounted for (as one truncated reject)"


def test_frames_come_out_in_message_order_with_devices_and_receive_times(decoder: str) -> None:
    rng = np.random.default_rng(7)
    rows = encode_frames(SCHEMA, {"seq": list(range(6)), "window_start": [RECEIVED] * 6, "window_s": [60] * 6})
    frames = [r.tobytes() for r in rows]
    messages = [frames[0] + frames[1], b"\xfb\x01junk", frames[2], frames[3] + b"\x00" * 3, frames[4] + frames[5]]
    devices = [f"dev-{i}" for i in range(len(messages))]
    received = rng.integers(RECEIVED, RECEIVED + 100, len(messages))
    result = decode_messages(messages, devices, received, REGISTRY)
    batch = result.batches[1]
    assert batch.message.tolist() == [0, 0, 2, 3, 4, 4]
    assert batch.offset.tolist() == [0, 74, 0, 0, 0, 74]
    assert batch.device.tolist() == ["dev-0", "dev-0", "dev-2", "dev-3", "dev-4", "dev-4"]
    assert batch.received.tolist() == received[[0, 0, 2, 3, 4, 4]].tolist()
    assert [(r.message, r.offset, r.reason, r.device) for r in result.rejects] == [
        (1, 0, "truncated", "dev-1"),
        (3, 74, "trailing_bytes", "dev-3"),
    ]


def test_crc_routines_agree_with_binascii_and_the_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    rows = np.random.default_rng(3).integers(0, 256, (1003, 74), dtype=np.uint8)
    expected = np.array([binascii.crc_hqx(r[:72].tobytes(), 0xFFFF) for r in rows], dtype=np.uint16)
    assert np.array_equal(crc16_rows(rows, 72), expected)
    assert np.array_equal(crc16_rows_fallback(rows, 72), expected)
    rows[::3, 72] = expected[::3] & 0xFF
    rows[::3, 73] = expected[::3] >> 8
    assert crc16_check_rows(rows).tolist() == [i % 3 == 0 for i in range(len(rows))]


def test_the_bulk_c_routine_is_built() -> None:
    assert native.routines is not None, "fleetwatch.frames._native did not build: install a C compiler and reinstall"


@st.composite
def fuzz_schema(draw: st.DrawFn) -> Schema:
    """A user schema of random fields and invariants (every kind of term, operator and wire type)."""
    fields = [
        {"name": f"f{i}", "type": draw(st.sampled_from(list(TYPES))), "count": draw(st.integers(1, 4))}
        for i in range(draw(st.integers(1, 5)))
    ]
    terms = [f"f{i}" for i, f in enumerate(fields) if f["count"] == 1]
    terms += [f"sum(f{i})" for i, f in enumerate(fields) if f["type"] != "f32"]
    integers = st.one_of(
        st.sampled_from(["0", "1", "-1", "255", "-32768", "65536", "16777217", str(2**53), str(-(2**53))]),
        st.integers(-(2**53), 2**53).map(str),
    )
    side = st.one_of(st.sampled_from(terms), integers) if terms else integers
    invariants = []
    for k in range(draw(st.integers(0, 5)) if terms else 0):
        lhs = draw(side)
        rhs = draw(st.sampled_from(terms)) if lhs.lstrip("-").isdigit() else draw(side)
        op = draw(st.sampled_from(["==", "!=", "<=", "<", ">=", ">"]))
        invariants.append({"name": f"rule_{k}", "check": f"{lhs} {op} {rhs}"})
    schema_id = draw(st.integers(2, 255))
    return parse_schema({"id": schema_id, "name": "fuzz", "fields": fields, "invariants": invariants})


@st.composite
def fuzz_rows(draw: st.DrawFn, schema: Schema) -> np.ndarray:
    """Frames of the schema's length: random, zero or small bodies (so sums and equalities hold at times),
    mostly good headers and CRCs, and now and then another schema id, a bad header or a bad CRC."""
    n = draw(st.integers(1, 150))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = rng.integers(0, 256, (n, schema.frame_len), dtype=np.uint8)
    body = rows[:, 20:-2]
    body[rng.random(n) < 0.3] = 0
    small = rng.random(n) < 0.3
    body[small] %= 3
    rows[:, 0], rows[:, 1], rows[:, 3] = 0xFB, 1, schema.body_len
    rows[:, 2] = rng.choice([schema.id, schema.id, schema.id, 1, 0, (schema.id + 1) % 256], n)
    rows[rng.random(n) < 0.05, 0] = 0xFA
    rows[rng.random(n) < 0.05, 3] ^= 1
    crc = crc16_rows_fallback(rows, schema.frame_len - 2)
    good_crc = rng.random(n) < 0.9
    rows[good_crc, -2] = crc[good_crc] & 0xFF
    rows[good_crc, -1] = crc[good_crc] >> 8
    return rows


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_c_and_numpy_give_every_frame_the_same_code(data: st.DataObject) -> None:
    schema = data.draw(fuzz_schema())
    registry = Registry([schema, Registry.builtin().get(1)])
    rows = data.draw(fuzz_rows(schema))
    received = np.array(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4)))
    msg = np.random.default_rng(len(rows)).integers(0, len(received), len(rows))
    assert native.routines is not None, "without the C routines this compares numpy with itself"
    codes, valid = reason_codes(rows, msg, received, registry)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "routines", None)
        expected_codes, expected_valid = reason_codes(rows, msg, received, registry)
    assert codes.tolist() == expected_codes.tolist()
    assert valid.tolist() == expected_valid.tolist()


def _outcome(result: DecodeResult) -> tuple[list, list]:
    batches = [
        (sid, b.raw.tobytes(), b.message.tolist(), b.offset.tolist(), b.device.tolist(), b.received.tolist())
        for sid, b in sorted(result.batches.items())
    ]
    return batches, result.rejects


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_c_and_numpy_decode_fuzzed_batches_alike(data: st.DataObject) -> None:
    schema = data.draw(fuzz_schema())
    registry = Registry([schema, Registry.builtin().get(1)])
    frames = [r.tobytes() for r in data.draw(fuzz_rows(schema))]
    per_message = data.draw(st.integers(1, 3))
    messages = [b"".join(frames[i : i + per_message]) for i in range(0, len(frames), per_message)]
    if data.draw(st.booleans()):
        messages[data.draw(st.integers(0, len(messages) - 1))] += data.draw(st.binary(max_size=30))
    devices = [f"d{i}" for i in range(len(messages))]
    received = data.draw(st.lists(st.integers(0, 2**32), min_size=len(messages), max_size=len(messages)))
    assert native.routines is not None, "without the C routines this compares numpy with itself"
    outcome = _outcome(decode_messages(messages, devices, received, registry))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "routines", None)
        assert outcome == _outcome(decode_messages(messages, devices, received, registry))


def test_rows_with_a_malformed_header_are_marked_for_the_walk(decoder: str) -> None:
    rows = encode_frames(SCHEMA, {"window_start": [RECEIVED] * 3, "window_s": [60] * 3}).view(np.uint8)
    rows = rows.reshape(3, SCHEMA.frame_len).copy()
    rows[1, 0] = 0xFA
    codes, valid = reason_codes(rows, np.arange(3), np.full(3, RECEIVED), REGISTRY)
    assert codes.tolist() == [0, MALFORMED, 0]
    assert valid[1] == 2


def test_the_c_routine_refuses_what_it_cannot_read_safely() -> None:
    assert native.routines is not None
    routine = native.routines.reason_codes
    rows = np.zeros((2, SCHEMA.frame_len), dtype=np.uint8)
    no_schemas = np.full(256, -1, dtype=np.int64)
    codes, valid, received = np.empty(2, dtype=np.uint8), np.empty(256, dtype=np.int64), np.zeros(2, dtype=np.int64)
    routine(rows, SCHEMA.frame_len, no_schemas, np.arange(2), received, codes, valid)
    assert codes.tolist() == [MALFORMED, MALFORMED]
    with pytest.raises(ValueError, match="message index"):
        routine(rows, SCHEMA.frame_len, no_schemas, np.array([0, 2]), received, codes, valid)
    # schema 1: body_len 52, one rule `u16 at byte 71 == 0`, whose second byte is the CRC's first
    field_over_the_crc = np.concatenate([no_schemas, [52, 1, 0, 1, 1, 71, 1, 0, 0, 0, 0, 0, 0]])
    field_over_the_crc[1] = 256
    with pytest.raises(ValueError, match="rule program is malformed"):
        routine(rows, SCHEMA.frame_len, field_over_the_crc, np.arange(2), received, codes, valid)


def test_messages_may_be_any_bytes_like_objects(decoder: str) -> None:
    frame = encode_frames(SCHEMA, {"window_start": [RECEIVED], "window_s": [60]})[0].tobytes()
    messages = [frame, bytearray(frame), memoryview(frame + frame), b""]
    result = decode_messages(messages, ["d"] * 4, [RECEIVED] * 4, REGISTRY)
    assert result.batches[1].message.tolist() == [0, 1, 2, 2]
    assert [(r.message, r.reason) for r in result.rejects] == [(3, "truncated")]
    with pytest.raises(TypeError):
        decode_messages([frame, 3], ["d"] * 2, [RECEIVED] * 2, REGISTRY)
