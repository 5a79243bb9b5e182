"""Simulated telemetry: columns ready for `encode_frames`, and the transport messages that carry them.

Rows are device-major: row d * n_windows + w is device d in window first_window + w; `grid(name)` gives a
column as (devices, windows, ...). Column values are exactly what the decoder reports for the frames.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetwatch.frames import Schema, encode_frames


@dataclass(frozen=True)
class Messages:
    """Transport messages with the device and receive time of each (the arguments of decode_messages)."""

    payloads: list[bytes]
    device: np.ndarray
    received: np.ndarray


@dataclass(frozen=True)
class Telemetry:
    """Frames of n_devices devices over n_windows consecutive windows starting at `first_window`.

    `columns` hold the envelope (seq, window_start, window_s, fw_version as u32, model_id) and the body
    under its decoded names in engineering units; `device` (ids), `received` (Unix s) and `window` (index)
    run along the same rows.
    """

    schema: Schema
    n_devices: int
    n_windows: int
    first_window: int
    columns: dict[str, np.ndarray]
    device: np.ndarray
    received: np.ndarray
    window: np.ndarray

    def __len__(self) -> int:
        return self.n_devices * self.n_windows

    @classmethod
    def from_grid(
        cls, schema: Schema, first_window: int, ids: np.ndarray, grid: dict[str, np.ndarray], received: np.ndarray
    ) -> Telemetry:
        """From (devices, windows, ...) arrays; `ids` are the device ids."""
        n_devices, n_windows = received.shape
        rows = n_devices * n_windows
        return cls(
            schema=schema,
            n_devices=n_devices,
            n_windows=n_windows,
            first_window=first_window,
            columns={name: value.reshape(rows, *value.shape[2:]) for name, value in grid.items()},
            device=np.repeat(ids, n_windows),
            received=received.reshape(rows),
            window=np.tile(np.arange(first_window, first_window + n_windows), n_devices),
        )

    @classmethod
    def concat(cls, parts: Sequence[Telemetry]) -> Telemetry:
        """Consecutive runs of the same devices joined along the window axis."""
        first = parts[0]
        if any(p.n_devices != first.n_devices for p in parts):
            raise ValueError("can only join telemetry of the same devices")
        if any(a.first_window + a.n_windows != b.first_window for a, b in itertools.pairwise(parts)):
            raise ValueError("parts must follow one another window by window")
        grid = {name: np.concatenate([p.grid(name) for p in parts], axis=1) for name in first.columns}
        received = np.concatenate([p.received.reshape(p.n_devices, p.n_windows) for p in parts], axis=1)
        ids = first.device[:: first.n_windows]
        return cls.from_grid(first.schema, first.first_window, ids, grid, received)

    def grid(self, name: str) -> np.ndarray:
        """Column `name` shaped (devices, windows, ...)."""
        value = self.columns[name]
        return value.reshape(self.n_devices, self.n_windows, *value.shape[1:])

    def frames(self) -> np.ndarray:
        """(rows, frame_len) uint8: every frame packed with its CRC, in row order."""
        return encode_frames(self.schema, self.columns)

    def messages(self) -> list[bytes]:
        """One message per frame, in row order (`device` and `received` go with them)."""
        return self.frames().view(f"V{self.schema.frame_len}").ravel().tolist()

    def backlog(self, frames_per_message: int) -> Messages:
        """Each device's frames in window order, up to `frames_per_message` back to back per message.

        A message is received when its last frame would have been.
        """
        if frames_per_message < 1:
            raise ValueError("frames_per_message must be >= 1")
        data = self.frames().tobytes()
        size = self.schema.frame_len
        starts = np.arange(0, self.n_windows, frames_per_message)
        ends = np.minimum(starts + frames_per_message, self.n_windows)
        first = (np.arange(self.n_devices)[:, None] * self.n_windows + starts).reshape(-1)
        last = (np.arange(self.n_devices)[:, None] * self.n_windows + ends - 1).reshape(-1)
        payloads = [data[a * size : (b + 1) * size] for a, b in zip(first.tolist(), last.tolist(), strict=True)]
        return Messages(payloads, self.device[first], self.received[last])
