"""The interface every store implements, and the two ways a write can fail.

The pipeline writes through `Store`; the drift engine and the CLI read windows through it as whole-fleet
numpy columns. What a point is (measurement, tags, fields, time) is defined once in `sinks.model`.

Failures are classified for the caller:

- `SinkUnavailable` — the store cannot take a write now, whatever the data: connection refused or reset,
  timeout, HTTP 5xx, HTTP 429 (rate limited), and the HTTP 4xx that are about the store rather than the
  data (401/403 credentials refused, 404 database not found). The pipeline spools the batch and replays
  it later; every write is idempotent (a point overwrites itself), so a replay after a partial write is safe.
- `SinkRejected` — the store refuses this data and would refuse it again (HTTP 400, e.g. a field type
  conflict). `reason` carries the store's own message. The pipeline quarantines the batch and never
  retries it on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fleetwatch.frames import FrameBatch, Schema


class SinkUnavailable(Exception):
    """Retryable: the store is down, unreachable, overloaded or not set up yet."""


class StoreLocked(SinkUnavailable):
    """The embedded store's file is held by another process (DuckDB allows one writer process per file)."""


class SinkRejected(Exception):
    """Permanent: the store refuses the data; `reason` is the store's message.

    `partial` is True when the store kept the other points of the write (InfluxDB writes the good points
    of a batch and reports the bad ones).
    """

    def __init__(self, reason: str, *, partial: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


@runtime_checkable
class Store(Protocol):
    """Where telemetry and the daemon's own measurements live. Implementations: embedded, InfluxDB."""

    def write_frames(self, batch: FrameBatch) -> int:
        """Write one `telemetry` point per valid frame; returns the number of points written."""
        ...

    def write_table(
        self,
        measurement: str,
        time: np.ndarray,
        tags: Mapping[str, np.ndarray],
        fields: Mapping[str, np.ndarray],
    ) -> int:
        """Write any measurement from columns (time in int64 Unix seconds); returns points written."""
        ...

    def read_table(
        self,
        measurement: str,
        start: int,
        end: int,
        *,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows with start <= time < end as columns: "time" (int64 s), every tag (object arrays of str,
        "" where absent) and the fields named in `columns` (all when None), sorted by (device, time)
        (by time when the measurement has no device tag). `where` maps a tag to its allowed values."""
        ...

    def read_frames(
        self,
        start: int,
        end: int,
        *,
        schema: Schema,
        devices: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Telemetry of one schema as columns (see `sinks.model.frame_kinds` for names and types); with
        `columns`, time, device, fw_version, model_id and only the other columns named there."""
        ...

    def ping(self) -> None:
        """Return when the store can be used; raise SinkUnavailable otherwise."""
        ...

    def close(self) -> None:
        """Release connections and files; the store cannot be used afterwards."""
        ...
