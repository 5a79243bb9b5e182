"""Batch decoder: transport messages in, columns of valid frames per schema and a list of rejects out.

Pure and vectorised. A message carries one frame or several back to back; the walk over a message follows
WIRE-FORMAT.md ("How a message is walked"). The commonest batch — every message a whole number of frames
of one length — is one (frames, frame_len) matrix: a single C pass (rules.reason_codes) checks each row's
header, CRC, schema and rules and gives it a reason code. When a header in it is malformed, the messages
that are whole frames of one length are still found for the whole batch at once with array operations,
and only the others are walked one by one. Valid frames are reinterpreted in place as a numpy structured
array (no per-frame Python on the common path); only rejects are looked at one by one.

>>> from fleetwatch.frames.encode import encode_frames
>>> from fleetwatch.frames.schema import Registry
>>> registry = Registry.builtin()
>>> frame = encode_frames(registry.get(1), {"window_start": [1_700_000_000], "window_s": [3600]})[0]
>>> result = decode_messages([frame.tobytes()], ["dev-1"], [1_700_003_600], registry)
>>> result.frame_count, len(result.rejects)
(1, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetwatch.frames import native
from fleetwatch.frames.rules import MALFORMED, OK, reason, reason_codes
from fleetwatch.frames.schema import ENVELOPE_VERSION, MAGIC, MIN_FRAME_LEN, Registry, Schema

#: Every reason a decoder reports, apart from `invariant:<name>` (one per schema invariant).
REASONS = (
    "truncated",
    "bad_magic",
    "unsupported_version",
    "unknown_schema",
    "body_len_mismatch",
    "bad_crc",
    "trailing_bytes",
    "time_in_future",
    "invariant:window_s_positive",
)


@dataclass(frozen=True)
class Reject:
    """Bytes that are not a valid frame, and why. `offset` is where they start in their message."""

    message: int
    offset: int
    reason: str
    raw: bytes
    device: str
    received: int


@dataclass(frozen=True)
class FrameBatch:
    """Valid frames of one schema: the raw structured array and where each frame came from."""

    schema: Schema
    raw: np.ndarray
    message: np.ndarray
    offset: np.ndarray
    device: np.ndarray
    received: np.ndarray

    def __len__(self) -> int:
        return len(self.raw)

    def columns(self) -> dict[str, np.ndarray]:
        """Envelope and body in engineering units; arrays of `count` > 1 are (n, count) columns.

        Keys: device, received, seq, window_start, window_s, fw_version (raw u32), model_id, then each
        field's decoded name.
        """
        cols: dict[str, np.ndarray] = {"device": self.device, "received": self.received}
        for name in ("seq", "window_start", "window_s", "fw_version", "model_id"):
            cols[name] = self.raw[name]
        for f in self.schema.fields:
            cols[f.decoded] = f.to_engineering(self.raw[f.name])
        return cols

    def records(self) -> list[dict[str, Any]]:
        """The decoded view of each frame as plain Python values (for printing, not for hot paths)."""
        cols = self.columns()
        fw = format_fw_version(cols["fw_version"])
        names = ["seq", "window_start", "window_s", "fw_version", "model_id"]
        names += [f.decoded for f in self.schema.fields]
        out = []
        for i in range(len(self)):
            record = {name: cols[name][i].tolist() for name in names}
            record["fw_version"] = fw[i]
            out.append(record)
        return out


@dataclass(frozen=True)
class DecodeResult:
    """What a batch decoded into: valid frames grouped by schema id, and every reject."""

    batches: dict[int, FrameBatch]
    rejects: list[Reject]

    @property
    def frame_count(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def reject_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reject in self.rejects:
            counts[reject.reason] = counts.get(reject.reason, 0) + 1
        return counts


def format_fw_version(raw: np.ndarray) -> np.ndarray:
    """u32 `major << 24 | minor << 16 | patch` -> "major.minor.patch" strings (object array).

    Formats each distinct version once, so a fleet-sized column costs one np.unique.
    """
    raw = np.asarray(raw, dtype=np.uint32)
    unique, inverse = np.unique(raw, return_inverse=True)
    text = np.array([f"{v >> 24}.{(v >> 16) & 0xFF}.{v & 0xFFFF}" for v in unique.tolist()], dtype=object)
    return text[inverse.reshape(raw.shape)] if len(unique) else np.empty(raw.shape, dtype=object)


def parse_fw_version(text: str) -> int:
    """ "major.minor.patch" -> the u32 of the envelope (the inverse of `format_fw_version`)."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"firmware version {text!r} is not major.minor.patch")
    major, minor, patch = (int(p) for p in parts)
    if major > 255 or minor > 255 or patch > 65535:
        raise ValueError(f"firmware version {text!r} out of range (255.255.65535 at most)")
    return major << 24 | minor << 16 | patch


def decode_messages(
    messages: Sequence[bytes],
    devices: Sequence[str] | np.ndarray,
    received: Sequence[int] | np.ndarray,
    registry: Registry,
) -> DecodeResult:
    """Decode transport messages; `devices[i]` and `received[i]` (Unix s) belong to `messages[i]`."""
    if native.routines is not None:
        joined, lengths = native.routines.join_messages(messages)
        return decode_buffer(joined, np.frombuffer(lengths, dtype=np.int64), devices, received, registry)
    lengths = np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))
    return decode_buffer(b"".join(messages), lengths, devices, received, registry)


def decode_buffer(
    buf: bytes | bytearray | memoryview,
    lengths: np.ndarray,
    devices: Sequence[str] | np.ndarray,
    received: Sequence[int] | np.ndarray,
    registry: Registry,
) -> DecodeResult:
    """Decode messages laid back to back in one buffer; message i is `lengths[i]` bytes long."""
    data = np.frombuffer(buf, dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) != len(data):
        raise ValueError(f"message lengths add up to {int(lengths.sum())}, buffer holds {len(data)} bytes")
    devices = np.asarray(devices, dtype=object)
    received = np.ascontiguousarray(received, dtype=np.int64)
    if not len(devices) == len(received) == len(lengths):
        raise ValueError("need one device and one receive time per message")
    whole = _whole_buffer_of_frames(data, lengths, devices, received, registry)
    if whole is not None:
        return whole

    starts = _starts(lengths)
    spans = _Spans()
    slow = _fast_walk(data, starts, lengths, spans)
    for m in slow.tolist():
        _walk_message(data, m, int(starts[m]), int(lengths[m]), spans)
    batches: dict[int, list[FrameBatch]] = {}
    rejects = spans.rejects
    for frame_len, msg, off, abs_start in spans.by_length():
        rows = _rows(data, abs_start, frame_len)
        codes, valid = reason_codes(rows, msg, received, registry)  # the walk read every header: none MALFORMED
        parts, found = _sort_out(rows, codes, valid, msg, off, abs_start, devices, received, registry, False)
        for sid, part in parts.items():
            batches.setdefault(sid, []).append(part)
        rejects += found
    return _result({sid: _concat(parts) for sid, parts in batches.items()}, rejects, data, devices, received)


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Where each message starts in the buffer."""
    return np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths


def _result(
    batches: dict[int, FrameBatch],
    rejects: list[tuple[int, int, int, int, str]],
    data: np.ndarray,
    devices: np.ndarray,
    received: np.ndarray,
) -> DecodeResult:
    out = [
        Reject(int(m), int(o), reason, data[a : a + n].tobytes(), str(devices[m]), int(received[m]))
        for m, o, a, n, reason in rejects
    ]
    out.sort(key=lambda r: (r.message, r.offset))
    return DecodeResult(batches, out)


class _Spans:
    """Frames found by the walk (message, offset in message, absolute start, length) and walk rejects."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.rejects: list[tuple[int, int, int, int, str]] = []

    def add(self, msg: np.ndarray, off: np.ndarray, abs_start: np.ndarray, length: np.ndarray) -> None:
        self.parts.append((msg, off, abs_start, length))

    def by_length(self) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        if not self.parts:
            return []
        msg, off, abs_start, length = (np.concatenate(c) for c in zip(*self.parts, strict=True))
        if len(length) and bool((length == length[0]).all()):
            return [(int(length[0]), msg, off, abs_start)]
        groups = []
        for frame_len in np.unique(length).tolist():
            sel = length == frame_len
            groups.append((frame_len, msg[sel], off[sel], abs_start[sel]))
        return groups


def _whole_buffer_of_frames(
    data: np.ndarray, lengths: np.ndarray, devices: np.ndarray, received: np.ndarray, registry: Registry
) -> DecodeResult | None:
    """The commonest batch of all: every message is whole frames of one length, so the buffer is one
    (frames, length) matrix, classified in one pass. None when it is not, or when a header in it is
    malformed (the caller then walks the batch)."""
    if not len(lengths) or len(data) < MIN_FRAME_LEN:
        return None
    frame_len = int(data[3]) + MIN_FRAME_LEN
    if len(data) % frame_len:
        return None
    n = len(data) // frame_len
    abs_start = np.arange(n, dtype=np.int64) * frame_len
    if n == len(lengths):
        if not bool((lengths == frame_len).all()):
            return None
        msg, off = np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    else:
        if bool((lengths % frame_len).any()) or not bool(lengths.all()):
            return None
        msg = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths // frame_len)
        off = abs_start - _starts(lengths)[msg]
    rows = data.reshape(n, frame_len)
    codes, valid = reason_codes(rows, msg, received, registry)
    if int(valid.sum()) != n and bool((codes == MALFORMED).any()):
        return None
    in_order = n == len(lengths)
    batches, rejects = _sort_out(rows, codes, valid, msg, off, abs_start, devices, received, registry, in_order)
    return _result(batches, rejects, data, devices, received)


def _fast_walk(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, spans: _Spans) -> np.ndarray:
    """Find, for the whole batch at once, messages that are n >= 1 well-formed frames of one length.

    Returns the indices of the other messages, which are walked one by one. Messages of exactly one
    frame (the usual case) take no repeat/gather work beyond reading their header bytes.
    """
    index = np.arange(len(lengths))
    sized = lengths >= MIN_FRAME_LEN
    frame_len = np.zeros(len(lengths), dtype=np.int64)
    well_formed = sized.copy()
    if len(lengths) and lengths[0] >= MIN_FRAME_LEN and bool((lengths == lengths[0]).all()):
        heads = data.reshape(len(lengths), int(lengths[0]))[:, :4]
    else:
        heads = data[starts[sized][:, None] + np.arange(4)]
    frame_len[sized] = heads[:, 3] + MIN_FRAME_LEN
    well_formed[sized] = (heads[:, 0] == MAGIC) & (heads[:, 1] == ENVELOPE_VERSION)
    single = well_formed & (lengths == frame_len)
    if single.all():
        spans.add(index, np.zeros(len(index), dtype=np.int64), starts, frame_len)
        return index[:0]
    spans.add(index[single], np.zeros(int(single.sum()), dtype=np.int64), starts[single], frame_len[single])
    cand = index[well_formed & ~single & (lengths > frame_len)]
    cand = cand[lengths[cand] % frame_len[cand] == 0]
    counts = lengths[cand] // frame_len[cand]
    msg = np.repeat(cand, counts)
    first_of_msg = np.cumsum(counts) - counts
    off = (np.arange(int(counts.sum())) - np.repeat(first_of_msg, counts)) * frame_len[msg]
    abs_start = starts[msg] + off
    good = (
        (data[abs_start] == MAGIC)
        & (data[abs_start + 1] == ENVELOPE_VERSION)
        & (data[abs_start + 3] == data[starts[msg] + 3])
    )
    bad_msgs = np.unique(msg[~good])
    keep = ~np.isin(msg, bad_msgs)
    spans.add(msg[keep], off[keep], abs_start[keep], frame_len[msg[keep]])
    slow = ~single
    slow[cand] = False
    slow[bad_msgs] = True
    return index[slow]


def _walk_message(data: np.ndarray, m: int, start: int, length: int, spans: _Spans) -> None:
    """The reference walk of WIRE-FORMAT.md for one message that the fast path could not take."""
    pos = 0
    offsets: list[int] = []
    frame_lens: list[int] = []
    while pos < length or length == 0:
        remaining = length - pos
        if remaining < MIN_FRAME_LEN:
            spans.rejects.append((m, pos, start + pos, remaining, "trailing_bytes" if pos else "truncated"))
            break
        head = start + pos
        if data[head] != MAGIC:
            spans.rejects.append((m, pos, head, remaining, "bad_magic"))
            break
        if data[head + 1] != ENVELOPE_VERSION:
            spans.rejects.append((m, pos, head, remaining, "unsupported_version"))
            break
        frame_len = int(data[head + 3]) + MIN_FRAME_LEN
        if frame_len > remaining:
            spans.rejects.append((m, pos, head, remaining, "truncated"))
            break
        offsets.append(pos)
        frame_lens.append(frame_len)
        pos += frame_len
    if offsets:
        off = np.array(offsets, dtype=np.int64)
        spans.add(np.full(len(off), m, dtype=np.int64), off, off + start, np.array(frame_lens, dtype=np.int64))


def _rows(data: np.ndarray, abs_start: np.ndarray, frame_len: int) -> np.ndarray:
    """(n, frame_len) bytes of the frames: a view when they lie back to back, a gather otherwise."""
    n = len(abs_start)
    first = int(abs_start[0])
    if first + n * frame_len <= len(data) and np.array_equal(
        abs_start, first + frame_len * np.arange(n, dtype=np.int64)
    ):
        return data[first : first + n * frame_len].reshape(n, frame_len)
    return data[abs_start[:, None] + np.arange(frame_len)]


def _sort_out(
    rows: np.ndarray,
    codes: np.ndarray,
    valid: np.ndarray,
    msg: np.ndarray,
    off: np.ndarray,
    abs_start: np.ndarray,
    devices: np.ndarray,
    received: np.ndarray,
    registry: Registry,
    in_message_order: bool,
) -> tuple[dict[int, FrameBatch], list[tuple[int, int, int, int, str]]]:
    """The valid frames of an (n, frame_len) matrix of frames by schema id, and the rejects among them,
    from the frames' reason codes and the count of valid frames per schema id (rules.reason_codes).

    Row i is at offset `off[i]` of message `msg[i]`; `in_message_order` says that row i is message i.
    """
    present = np.flatnonzero(valid).tolist()
    all_valid = int(valid.sum()) == len(rows)
    batches = {}
    for sid in present:
        schema = registry.get(sid)
        if all_valid and len(present) == 1:
            raw = rows.view(schema.frame_dtype).reshape(-1)
            sel_msg, sel_off = msg, off
            device = devices if in_message_order else devices[msg]
            when = received if in_message_order else received[msg]
        else:
            ok = codes == OK
            sel = np.flatnonzero(ok if len(present) == 1 else ok & (rows[:, 2] == sid))
            raw = rows[sel].view(schema.frame_dtype).reshape(-1)
            sel_msg, sel_off = msg[sel], off[sel]
            device, when = devices[sel_msg], received[sel_msg]
        batches[sid] = FrameBatch(schema, raw, sel_msg, sel_off, device, when)
    frame_len = rows.shape[1]
    rejects = [
        (int(msg[i]), int(off[i]), int(abs_start[i]), frame_len, reason(registry, int(rows[i, 2]), int(codes[i])))
        for i in ([] if all_valid else np.flatnonzero(codes).tolist())
    ]
    return batches, rejects


def _concat(parts: list[FrameBatch]) -> FrameBatch:
    """One batch per schema, its frames in message order (the order they were sent in)."""
    if len(parts) == 1:
        batch = parts[0]
        message, offset = batch.message, batch.offset
    else:
        message = np.concatenate([p.message for p in parts])
        offset = np.concatenate([p.offset for p in parts])
        batch = FrameBatch(
            schema=parts[0].schema,
            raw=np.concatenate([p.raw for p in parts]),
            message=message,
            offset=offset,
            device=np.concatenate([p.device for p in parts]),
            received=np.concatenate([p.received for p in parts]),
        )
    key = message * (int(offset.max(initial=0)) + 1) + offset
    if len(key) < 2 or bool((key[1:] >= key[:-1]).all()):
        return batch
    order = np.argsort(key, kind="stable")
    return FrameBatch(
        schema=batch.schema,
        raw=batch.raw[order],
        message=message[order],
        offset=offset[order],
        device=batch.device[order],
        received=batch.received[order],
    )
