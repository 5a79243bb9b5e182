"""Snippet wire format v1: the pure decoder and encoder (fleetwatch.frames.snippet).

Round trips, one test per reject reason with the exact reason string, and a property test that any bytes
decode to a snippet or a reject without raising. The C packer agrees byte for byte: tests/test_firmware.py.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwatch.frames.crc import crc16
from fleetwatch.frames.snippet import (
    HEADER,
    HEADER_LEN,
    MIN_SNIPPET_LEN,
    REJECT_REASONS,
    SNIPPET_MAGIC,
    Snippet,
    SnippetReject,
    decode_snippet,
    encode_snippet,
    reason_code,
    reason_name,
    snippet_len,
)

START = 1_795_000_000
SAMPLES = np.array([[0.5, -1.0, 9.75], [1.25, 0.0, -2.5], [3.0e-8, 1.0e30, -0.0]], dtype=np.float32)


def good(samples: np.ndarray = SAMPLES, **header: object) -> bytes:
    fields = {"interval_ms": 10.0, "start_time": START, "reason": "anomaly", "model_id": 0x1234ABCD} | header
    return encode_snippet(samples, **fields)  # type: ignore[arg-type]


def patched(data: bytes, offset: int, fmt: str, value: object, fix_crc: bool = True) -> bytes:
    """`data` with one header field rewritten (and the CRC made right again unless told not to)."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    if fix_crc:
        out[-2:] = crc16(bytes(out[:-2])).to_bytes(2, "little")
    return bytes(out)


def reject(data: bytes, received: int | None = None) -> SnippetReject:
    result = decode_snippet(data, received)
    assert isinstance(result, SnippetReject), result
    return result


def test_round_trip_keeps_every_header_field_and_sample_bit_for_bit() -> None:
    data = good()
    assert len(data) == snippet_len(3, 3) == 20 + 36 + 2
    assert data[0] == SNIPPET_MAGIC and data[1] == 1
    snippet = decode_snippet(data, received=START)
    assert isinstance(snippet, Snippet)
    assert (snippet.channels, snippet.count, snippet.interval_ms) == (3, 3, 10.0)
    assert (snippet.start_time, snippet.model_id, snippet.reason_code, snippet.reason) == (
        START,
        0x1234ABCD,
        1,
        "anomaly",
    )
    assert snippet.samples.dtype == np.float32 and snippet.samples.shape == (3, 3)
    assert snippet.samples.tobytes() == SAMPLES.tobytes()
    assert snippet.duration_ms == 30.0


@pytest.mark.parametrize("channels", [1, 3, 16])
def test_round_trip_of_every_channel_count_and_a_long_recording(channels: int) -> None:
    rng = np.random.default_rng(channels)
    samples = rng.normal(0, 3, size=(5000, channels)).astype(np.float32)
    snippet = decode_snippet(good(samples, interval_ms=1.0 / 3, start_time=0, reason=3, model_id=0))
    assert isinstance(snippet, Snippet)
    assert np.array_equal(snippet.samples, samples)
    assert snippet.interval_ms == float(np.float32(1.0 / 3))
    assert (snippet.start_time, snippet.reason) == (0, "requested")


def test_header_layout_is_the_documented_one() -> None:
    data = good()
    assert HEADER_LEN == 20 and HEADER.format == "<BBBBfIIBBH"
    assert data[2] == 3 and data[3] == 1
    assert struct.unpack_from("<f", data, 4)[0] == 10.0
    assert struct.unpack_from("<IIBBH", data, 8) == (START, 0x1234ABCD, 1, 0, 3)
    assert np.frombuffer(data, "<f4", 9, HEADER_LEN).tolist() == SAMPLES.ravel().tolist()
    assert int.from_bytes(data[-2:], "little") == crc16(data[:-2])


def test_reason_names_and_codes() -> None:
    assert [reason_name(c) for c in range(7)] == [
        "unspecified",
        "anomaly",
        "low_confidence",
        "requested",
        "periodic",
        "manual",
        "code_6",
    ]
    assert reason_code("manual") == 5 and reason_code("code_200") == 200 and reason_code("7") == 7
    with pytest.raises(ValueError, match="unknown snippet reason 'bogus'"):
        reason_code("bogus")


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"", "truncated", "0 bytes"),
        (good()[: MIN_SNIPPET_LEN - 1], "truncated", f"{MIN_SNIPPET_LEN - 1} bytes"),
        (patched(good(), 0, "<B", 0xFB), "bad_magic", "0xFB"),
        (patched(good(), 1, "<B", 2), "unsupported_version", "version 2"),
        (patched(good(), 2, "<B", 0), "bad_channels", "0 channels"),
        (patched(good(), 2, "<B", 17), "bad_channels", "17 channels"),
        (patched(good(), 3, "<B", 2), "bad_sample_type", "sample type 2"),
        (patched(good(), 18, "<H", 0), "no_samples", "count 0"),
        (good()[:-1], "length_mismatch", "57 bytes, the header says 58"),
        (good() + b"\x00", "length_mismatch", "59 bytes"),
        (patched(good(), 18, "<H", 4), "length_mismatch", "header says 70"),
        (patched(good(), 8, "<I", START + 1, fix_crc=False), "bad_crc", "computed"),
        (patched(good(), 4, "<f", 0.0), "bad_interval", "interval 0.0 ms"),
        (patched(good(), 4, "<f", -5.0), "bad_interval", "-5.0"),
        (patched(good(), 4, "<f", float("nan")), "bad_interval", "nan"),
        (patched(good(), 4, "<f", 7_200_000.0), "bad_interval", "7200000.0"),
        (patched(good(), HEADER_LEN + 16, "<f", float("inf")), "non_finite_sample", "sample 1 channel 1 is inf"),
        (patched(good(), HEADER_LEN, "<f", float("nan")), "non_finite_sample", "sample 0 channel 0 is nan"),
    ],
)
def test_every_reject_reason(data: bytes, reason: str, detail: str) -> None:
    result = reject(data, received=START)
    assert result.reason == reason
    assert detail in result.detail


def test_time_in_future_only_when_the_receive_time_is_known() -> None:
    ahead = good(start_time=START + 24 * 3600 + 1)
    assert reject(ahead, received=START).reason == "time_in_future"
    assert isinstance(decode_snippet(ahead), Snippet)
    assert isinstance(decode_snippet(good(start_time=START + 24 * 3600), START), Snippet)


def test_reject_reasons_are_listed_in_check_order() -> None:
    assert REJECT_REASONS[0] == "truncated" and REJECT_REASONS[-1] == "time_in_future"
    assert REJECT_REASONS.index("length_mismatch") < REJECT_REASONS.index("bad_crc")
    assert len(set(REJECT_REASONS)) == 11


def test_encoder_refuses_shapes_the_format_cannot_carry() -> None:
    for shape in [(0, 3), (3, 0), (3, 17), (65536, 1)]:
        with pytest.raises(ValueError, match="samples must be"):
            encode_snippet(np.zeros(shape, dtype=np.float32), interval_ms=1.0)
    with pytest.raises(ValueError, match="samples must be"):
        encode_snippet(np.zeros(3, dtype=np.float32), interval_ms=1.0)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    result = decode_snippet(data, received=START)
    assert isinstance(result, Snippet | SnippetReject)
    if isinstance(result, SnippetReject):
        assert result.reason in REJECT_REASONS and result.detail


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=HEADER_LEN - 4, max_size=HEADER_LEN - 4),
    st.integers(1, 4),
    st.integers(1, 8),
)
def test_bytes_behind_a_good_magic_decode_without_raising(rest: bytes, channels: int, count: int) -> None:
    """Random headers with a valid magic and version and a matching length reach the deeper checks."""
    head = bytes([SNIPPET_MAGIC, 1, channels, 1]) + rest
    head = head[:18] + count.to_bytes(2, "little")
    body = head + bytes(4 * channels * count)
    data = body + crc16(body).to_bytes(2, "little")
    result = decode_snippet(data, received=START)
    if isinstance(result, SnippetReject):
        assert result.reason in ("bad_interval", "time_in_future")
    else:
        assert result.samples.shape == (count, channels) and not result.samples.any()
