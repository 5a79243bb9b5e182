"""Batch decoder: transport messages in, columns of valid frames per schema and a list of rejects out.

Pure and vectorised. A message carries one frame or several back to back; the walk over a message follows
WIRE-FORMAT.md ("How a message is walked"). The common case — every message a whole number of frames of
one length, each with a good magic and version — is found for the whole batch at once with array
operations; only the other messages are walked one by one. CRCs are checked in bulk, invariants and
reasons are assigned with array masks, and valid frames are reinterpreted in place as a numpy structured
array (no per-frame Python on the common path).

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

from fleetwatch.frames.crc import crc16_check_rows
from fleetwatch.frames.schema import MIN_FRAME_LEN, Registry, Schema

MAGIC = 0xFB
ENVELOPE_VERSION = 1
#: A frame whose window opens more than this far after its receive time is rejected as `time_in_future`.
FUTURE_SLACK_S = 24 * 3600

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
    received = np.asarray(received, dtype=np.int64)
    if not len(devices) == len(received) == len(lengths):
        raise ValueError("need one device and one receive time per message")
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths

    spans = _Spans()
    slow = _fast_walk(data, starts, lengths, spans)
    for m in slow.tolist():
        _walk_message(data, m, int(starts[m]), int(lengths[m]), spans)

    batches: dict[int, list[FrameBatch]] = {}
    for frame_len, msg, off, abs_start in spans.by_length():
        _classify(data, frame_len, msg, off, abs_start, devices, received, registry, batches, spans.rejects)

    rejects = [
        Reject(int(m), int(o), reason, data[a : a + n].tobytes(), str(devices[m]), int(received[m]))
        for m, o, a, n, reason in spans.rejects
    ]
    rejects.sort(key=lambda r: (r.message, r.offset))
    return DecodeResult({sid: _concat(parts) for sid, parts in batches.items()}, rejects)


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


def _fast_walk(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, spans: _Spans) -> np.ndarray:
    """Find, for the whole batch at once, messages that are n >= 1 well-formed frames of one length.

    Returns the indices of the other messages, which are walked one by one. Messages of exactly one
    frame (the usual case) take no repeat/gather work beyond reading their header bytes.
    """
    index = np.arange(len(lengths))
    if _whole_buffer_of_frames(data, starts, lengths, spans):
        return index[:0]
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


def _whole_buffer_of_frames(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, spans: _Spans) -> bool:
    """The commonest batch of all: every message is whole frames of one length, so the buffer is one
    (frames, length) matrix. Checked with one strided view of the headers; on success adds the spans."""
    if not len(lengths) or len(data) < MIN_FRAME_LEN:
        return False
    frame_len = int(data[3]) + MIN_FRAME_LEN
    if len(data) % frame_len or bool((lengths % frame_len).any()) or not bool(lengths.all()):
        return False
    heads = data.reshape(-1, frame_len)[:, :4]
    if not (
        (heads[:, 0] == MAGIC).all() and (heads[:, 1] == ENVELOPE_VERSION).all() and (heads[:, 3] == data[3]).all()
    ):
        return False
    counts = lengths // frame_len
    n = len(heads)
    abs_start = np.arange(n, dtype=np.int64) * frame_len
    if n == len(lengths):
        msg, off = np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    else:
        msg = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
        off = abs_start - starts[msg]
    spans.add(msg, off, abs_start, np.full(n, frame_len, dtype=np.int64))
    return True


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


def _classify(
    data: np.ndarray,
    frame_len: int,
    msg: np.ndarray,
    off: np.ndarray,
    abs_start: np.ndarray,
    devices: np.ndarray,
    received: np.ndarray,
    registry: Registry,
    batches: dict[int, list[FrameBatch]],
    rejects: list[tuple[int, int, int, int, str]],
) -> None:
    """Give every frame of one length its reason, in WIRE-FORMAT.md's order of precedence."""
    rows = _rows(data, abs_start, frame_len)
    names = ["", "bad_crc"]
    pending = crc16_check_rows(rows)
    code = (~pending).astype(np.int16)
    body_len = frame_len - MIN_FRAME_LEN
    schema_ids = rows[:, 2]
    present = np.flatnonzero(np.bincount(schema_ids[pending], minlength=256)).tolist()
    for sid in present:
        of_schema = pending if len(present) == 1 and pending.all() else pending & (schema_ids == sid)
        if sid not in registry or registry.get(sid).body_len != body_len:
            names.append("unknown_schema" if sid not in registry else "body_len_mismatch")
            code[of_schema] = len(names) - 1
            continue
        schema = registry.get(sid)
        raw = (rows if of_schema.all() else rows[of_schema]).view(schema.frame_dtype).reshape(-1)
        why, rule_names = _rule_codes(schema, raw, received[msg[of_schema]])
        code[of_schema] = np.where(why > 0, why + len(names) - 1, 0)
        names.extend(rule_names)
        ok = why == 0
        sel = np.flatnonzero(of_schema)[ok]
        batches.setdefault(sid, []).append(
            FrameBatch(
                schema=schema,
                raw=raw if ok.all() else raw[ok],
                message=msg[sel],
                offset=off[sel],
                device=_take(devices, msg[sel]),
                received=_take(received, msg[sel]),
            )
        )
    for i in np.flatnonzero(code).tolist():
        rejects.append((int(msg[i]), int(off[i]), int(abs_start[i]), frame_len, names[code[i]]))


def _take(column: np.ndarray, index: np.ndarray) -> np.ndarray:
    """column[index], without the gather when index is every row in order (one frame per message)."""
    in_order = len(index) == len(column) and (len(index) == 0 or (index[0] == 0 and index[-1] == len(index) - 1))
    return column if in_order and bool((np.diff(index) == 1).all()) else column[index]


def _rule_codes(schema: Schema, raw: np.ndarray, received: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per frame 0 when it keeps every rule, else 1 + the index of the first rule it breaks.

    The rules, in order: window_s > 0, the schema's invariants, then `time_in_future`.
    """
    checks = [("invariant:window_s_positive", raw["window_s"] > 0)]
    checks += [(f"invariant:{inv.name}", inv.evaluate(raw)) for inv in schema.invariants]
    checks.append(("time_in_future", raw["window_start"] <= received + FUTURE_SLACK_S))
    code = np.zeros(len(raw), dtype=np.int16)
    for k, (_, keeps) in enumerate(checks, start=1):
        code[(code == 0) & ~keeps] = k
    return code, [name for name, _ in checks]


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
