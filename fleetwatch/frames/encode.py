"""Vectorised frame packer: the server-side twin of the firmware's packer (simulator, tests, tools).

Values are given in engineering units under their decoded names (`latency_p50_ms`, `input_mean`, ...),
or for the envelope under its own names (`seq`, `window_start`, `window_s`, `fw_version`, `model_id`);
`fw_version` may be a u32 or a "major.minor.patch" string. Missing fields are zero. A value that does not
fit its wire type raises ValueError: this packer never saturates silently (the firmware does, and says so
with the `saturated` flag).

>>> from fleetwatch.frames.schema import Registry
>>> rows = encode_frames(Registry.builtin().get(1), {"window_start": [1_700_000_000, 1_700_003_600]})
>>> rows.shape
(2, 74)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetwatch.frames.crc import crc16_rows
from fleetwatch.frames.decode import parse_fw_version
from fleetwatch.frames.schema import CRC_LEN, ENVELOPE_VERSION, MAGIC, Schema

_ENVELOPE_VALUES = ("seq", "window_start", "window_s", "fw_version", "model_id")


def encode_frames(schema: Schema, values: Mapping[str, Any]) -> np.ndarray:
    """Pack n frames; returns an (n, frame_len) uint8 array whose rows are complete frames with CRC."""
    n = _row_count(values)
    raw = np.zeros(n, dtype=schema.frame_dtype)
    raw["magic"] = MAGIC
    raw["version"] = ENVELOPE_VERSION
    raw["schema_id"] = schema.id
    raw["body_len"] = schema.body_len
    for name in _ENVELOPE_VALUES:
        if name in values:
            column = values[name]
            if name == "fw_version":
                column = [parse_fw_version(v) if isinstance(v, str) else v for v in column]
            _assign(raw, name, np.asarray(column))
    for f in schema.fields:
        if f.decoded in values:
            _assign(raw, f.name, f.to_raw(np.asarray(values[f.decoded])))
    rows = raw.view(np.uint8).reshape(n, schema.frame_len)
    raw["crc"] = crc16_rows(rows, schema.frame_len - CRC_LEN)
    return rows


def _row_count(values: Mapping[str, Any]) -> int:
    """Rows in a mapping of equally long columns."""
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _assign(raw: np.ndarray, name: str, value: np.ndarray) -> None:
    target = raw.dtype[name].base
    if target.kind in "iu":
        info = np.iinfo(target)
        if value.size and (np.min(value) < info.min or np.max(value) > info.max):
            raise ValueError(f"{name}: values outside {info.min}..{info.max} do not fit {target}")
    raw[name] = value
