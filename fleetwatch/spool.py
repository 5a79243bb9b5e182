"""Disk spool: valid frames wait here, in order, while the store is down, and replay when it is back.

Segment files `<seq>.spool` in one directory, each a run of records
`<u32 frame length><i64 received><u16 device length><device utf-8><frame bytes>`. An append is one write
plus fsync, so a frame acknowledged to its sender after `append` returns survives a crash. Replay reads
the oldest segment, hands its frames to the caller and deletes the segment only once they are stored. A
record torn by a crash mid-append was never acknowledged (the sender still has it) and is dropped at read.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct("<IqH")


@dataclass(frozen=True)
class SpooledFrames:
    """The frames of one segment, in the order they were spooled."""

    segment: Path
    frames: list[bytes]
    devices: list[str]
    received: list[int]
    torn_bytes: int


class Spool:
    """An append-only, segmented, fsync'd queue of frames on disk."""

    def __init__(self, directory: Path, segment_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._open: Path | None = None

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool"))

    def pending_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._segments())

    def is_empty(self) -> bool:
        return not self._segments()

    def append(self, frames: Sequence[bytes], devices: Sequence[str], received: Sequence[int]) -> None:
        """Write frames durably (returns after fsync)."""
        parts = []
        for frame, device, when in zip(frames, devices, received, strict=True):
            name = device.encode("utf-8")
            parts += [_HEAD.pack(len(frame), int(when), len(name)), name, frame]
        blob = b"".join(parts)
        with self._lock:
            if self._open is None or self._open.stat().st_size >= self._segment_bytes:
                self._open = self._next_name()
            with self._open.open("ab") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(self.directory)

    def oldest(self) -> SpooledFrames | None:
        """The oldest segment's frames (closing the open segment first if it is the only one)."""
        with self._lock:
            segments = self._segments()
            if not segments:
                return None
            if segments[0] == self._open:
                self._open = None
        return _read(segments[0])

    def drop(self, spooled: SpooledFrames) -> None:
        """Delete a segment once its frames are stored."""
        spooled.segment.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def _next_name(self) -> Path:
        segments = self._segments()
        number = int(segments[-1].stem) + 1 if segments else 1
        return self.directory / f"{number:012d}.spool"


def _read(path: Path) -> SpooledFrames:
    data = path.read_bytes()
    frames, devices, received = [], [], []
    pos = 0
    while pos + _HEAD.size <= len(data):
        length, when, name_len = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + name_len + length
        if end > len(data):
            break
        devices.append(data[pos + _HEAD.size : pos + _HEAD.size + name_len].decode("utf-8"))
        frames.append(data[end - length : end])
        received.append(when)
        pos = end
    return SpooledFrames(path, frames, devices, received, torn_bytes=len(data) - pos)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
