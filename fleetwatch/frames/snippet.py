"""Snippets: short raw sensor recordings a device sends when it sees something unusual or is asked to.

Wire format v1 (docs/wire-format.md, "Snippets"): a 20-byte little-endian header, the samples as
little-endian float32 with channels interleaved (x0 y0 z0 x1 y1 z1 ...), then the CRC-16/CCITT-FALSE of
everything before it, the same CRC as frames. Pure: bytes in, a `Snippet` or a `SnippetReject` out; the
samples are one `np.frombuffer` view, never a per-sample Python loop.

>>> data = encode_snippet(np.array([[0.5, -1.0, 9.75]], dtype=np.float32), interval_ms=10.0,
...                       start_time=1_795_000_000, reason="anomaly", model_id=7)
>>> len(data), data[0] == SNIPPET_MAGIC
(34, True)
>>> snippet = decode_snippet(data)
>>> snippet.channels, snippet.count, snippet.reason, snippet.samples.tolist()
(3, 1, 'anomaly', [[0.5, -1.0, 9.75]])
>>> decode_snippet(data[:-1]).reason
'length_mismatch'
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from fleetwatch.frames.crc import crc16
from fleetwatch.frames.rules import FUTURE_SLACK_S

SNIPPET_MAGIC = 0xFC
SNIPPET_VERSION = 1
HEADER = struct.Struct("<BBBBfIIBBH")
HEADER_LEN = HEADER.size
CRC_LEN = 2
#: The shortest byte string that can be a snippet: a header, one sample of one channel, the CRC.
MIN_SNIPPET_LEN = HEADER_LEN + 4 + CRC_LEN
MAX_CHANNELS = 16
MAX_SAMPLES = 65535
#: One sample an hour is the slowest rate a snippet may have (anything slower is a corrupted header).
MAX_INTERVAL_MS = 3_600_000.0
SAMPLE_FLOAT32 = 1

#: Why a device captured a snippet (header byte 16); codes not listed decode as `code_<n>`.
REASONS = {0: "unspecified", 1: "anomaly", 2: "low_confidence", 3: "requested", 4: "periodic", 5: "manual"}
_CODES = {name: code for code, name in REASONS.items()}

#: Every reason a snippet is rejected for, in the order they are checked.
REJECT_REASONS = (
    "truncated",
    "bad_magic",
    "unsupported_version",
    "bad_channels",
    "bad_sample_type",
    "no_samples",
    "length_mismatch",
    "bad_crc",
    "bad_interval",
    "non_finite_sample",
    "time_in_future",
)


@dataclass(frozen=True)
class Snippet:
    """A decoded snippet; `samples` is a read-only (count, channels) float32 array."""

    interval_ms: float
    start_time: int
    model_id: int
    reason_code: int
    samples: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def count(self) -> int:
        return int(self.samples.shape[0])

    @property
    def reason(self) -> str:
        return reason_name(self.reason_code)

    @property
    def duration_ms(self) -> float:
        return self.interval_ms * self.count


@dataclass(frozen=True)
class SnippetReject:
    """Bytes that are not a valid snippet: `reason` is one of REJECT_REASONS, `detail` says what was seen."""

    reason: str
    detail: str


def reason_name(code: int) -> str:
    """The name of a capture reason code (`code_<n>` for codes this version does not know)."""
    return REASONS.get(code, f"code_{code}")


def reason_code(name: str) -> int:
    """The code of a capture reason name, `code_<n>`, or a number; ValueError otherwise."""
    if name in _CODES:
        return _CODES[name]
    digits = name.removeprefix("code_")
    if digits.isdigit() and int(digits) <= 255:
        return int(digits)
    raise ValueError(f"unknown snippet reason {name!r} (known: {', '.join(_CODES)}, or code_<0..255>)")


def snippet_len(channels: int, count: int) -> int:
    """Bytes on the wire of a snippet of `count` samples of `channels` channels."""
    return HEADER_LEN + 4 * channels * count + CRC_LEN


def decode_snippet(data: bytes | bytearray | memoryview, received: int | None = None) -> Snippet | SnippetReject:
    """One transport message -> a snippet, or the first reason it is not one (REJECT_REASONS order).

    `received` (Unix s) enables the `time_in_future` check; a start time of 0 means the device had no clock.
    """
    data = bytes(data)
    if len(data) < MIN_SNIPPET_LEN:
        return SnippetReject("truncated", f"{len(data)} bytes, a snippet has at least {MIN_SNIPPET_LEN}")
    magic, version, channels, sample_type, interval_ms, start_time, model_id, reason, _flags, count = (
        HEADER.unpack_from(data)
    )
    if magic != SNIPPET_MAGIC:
        return SnippetReject("bad_magic", f"magic 0x{magic:02X}, expected 0x{SNIPPET_MAGIC:02X}")
    if version != SNIPPET_VERSION:
        return SnippetReject("unsupported_version", f"version {version}, this decoder reads {SNIPPET_VERSION}")
    if not 1 <= channels <= MAX_CHANNELS:
        return SnippetReject("bad_channels", f"{channels} channels, expected 1..{MAX_CHANNELS}")
    if sample_type != SAMPLE_FLOAT32:
        return SnippetReject("bad_sample_type", f"sample type {sample_type}, expected {SAMPLE_FLOAT32} (float32)")
    if count == 0:
        return SnippetReject("no_samples", "sample count 0")
    expected = snippet_len(channels, count)
    if len(data) != expected:
        return SnippetReject(
            "length_mismatch", f"{len(data)} bytes, the header says {expected} ({count} x {channels} samples)"
        )
    stored_crc = int.from_bytes(data[-CRC_LEN:], "little")
    computed = crc16(data[:-CRC_LEN])
    if stored_crc != computed:
        return SnippetReject("bad_crc", f"CRC 0x{stored_crc:04X}, computed 0x{computed:04X}")
    if not (math.isfinite(interval_ms) and 0 < interval_ms <= MAX_INTERVAL_MS):
        return SnippetReject("bad_interval", f"interval {interval_ms!r} ms, expected > 0 and <= {MAX_INTERVAL_MS:g}")
    samples = np.frombuffer(data, dtype="<f4", count=channels * count, offset=HEADER_LEN).reshape(count, channels)
    finite = np.isfinite(samples)
    if not finite.all():
        row, channel = np.argwhere(~finite)[0].tolist()
        return SnippetReject("non_finite_sample", f"sample {row} channel {channel} is {samples[row, channel]}")
    if received is not None and start_time > received + FUTURE_SLACK_S:
        return SnippetReject("time_in_future", f"starts at {start_time}, received at {received}")
    return Snippet(float(interval_ms), start_time, model_id, reason, samples.astype(np.float32, copy=False))


def encode_snippet(
    samples: np.ndarray, *, interval_ms: float, start_time: int = 0, reason: str | int = 0, model_id: int = 0
) -> bytes:
    """Pack (count, channels) samples into the wire format (the server side of the C packer, for tests,
    the simulator and tools)."""
    values = np.asarray(samples, dtype="<f4")
    if values.ndim != 2 or not 1 <= values.shape[1] <= MAX_CHANNELS or not 1 <= values.shape[0] <= MAX_SAMPLES:
        raise ValueError(f"samples must be (1..{MAX_SAMPLES}, 1..{MAX_CHANNELS}), got shape {values.shape}")
    code = reason if isinstance(reason, int) else reason_code(reason)
    count, channels = values.shape
    header = HEADER.pack(
        SNIPPET_MAGIC, SNIPPET_VERSION, channels, SAMPLE_FLOAT32, interval_ms, start_time, model_id, code, 0, count
    )
    body = header + np.ascontiguousarray(values).tobytes()
    return body + crc16(body).to_bytes(2, "little")
