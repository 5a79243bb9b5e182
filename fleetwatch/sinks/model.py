"""The data model of the store, in code: every sink writes and reads exactly this (docs/data-model.md).

Measurement `telemetry`, one point per valid frame:

- tags: `device`, `fw_version` ("major.minor.patch"), `model_id` (decimal), `schema` (decimal id);
- time: `window_start` (Unix seconds); when the device has no clock (`window_start == 0`) the time is
  `received - window_s` and the field `clock_estimated` is true (the field is always written);
- fields: `seq`, `window_s`, `received` (integers), `clock_estimated` (boolean), then every schema field
  under its flat store names (`Field.column_names`): unscaled integers as integers, scaled values as floats.

A re-sent frame is the same point (same device, schema and time) and overwrites itself. Other measurements
(the daemon's `findings`, `ingest`, `rollout`, ...) are written from columns through `table_points`.

Columns read back follow one rule in every store: "time" is int64 Unix seconds, tags are object arrays of
str ("" where a point has no value), integer fields int64, float fields float64, booleans bool, strings
object arrays. A missing field value is NaN in a float column; an integer column with a missing value is
returned as float64 with NaN; boolean and string columns with missing values are object arrays with None.

>>> from fleetwatch.frames import Registry, decode_messages, encode_frames
>>> schema = Registry.builtin().get(1)
>>> values = {"window_start": [0], "window_s": [3600], "latency_p50_ms": [1.5], "latency_p95_ms": [2.5]}
>>> frame = encode_frames(schema, values)[0]
>>> batch = decode_messages([frame.tobytes()], ["dev-1"], [1_700_003_600], Registry.builtin()).batches[1]
>>> points = frame_points(batch)
>>> points.time.tolist(), points.fields["clock_estimated"].tolist(), points.fields["latency_p50_ms"].tolist()
([1700000000], [True], [1.5])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fleetwatch.frames import Field, FrameBatch, Schema, format_fw_version
from fleetwatch.sinks.base import SinkRejected

Kind = Literal["integer", "float", "boolean", "string"]

TIME = "time"
TELEMETRY = "telemetry"
#: Tags of a telemetry point, in the order they are written.
FRAME_TAGS = ("device", "fw_version", "model_id", "schema")
#: With time, what identifies a telemetry point in stores that key their rows (the embedded store).
FRAME_KEY = ("device", "schema")
CLOCK_ESTIMATED = "clock_estimated"
#: Telemetry fields that come from the envelope and the transport, before the schema's own fields.
ENVELOPE_FIELDS: dict[str, Kind] = {
    "seq": "integer",
    "window_s": "integer",
    "received": "integer",
    CLOCK_ESTIMATED: "boolean",
}
#: Rows read back are sorted by this tag (when the measurement has it), then by time.
SORT_TAG = "device"
_DTYPES: dict[Kind, type] = {"integer": np.int64, "float": np.float64, "boolean": np.bool_, "string": object}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
#: What line protocol cannot carry in a tag value: control characters, and a backslash that would escape
#: the next separator (before a space, comma or equals sign, or at the end).
_BAD_TAG_VALUE = re.compile(r"[\x00-\x1f\x7f]|\\(?=[ ,=]|$)")


@dataclass(frozen=True)
class Points:
    """Points of one measurement as columns, ready for any store.

    `tags` are object arrays of str ("" = no value); `fields` are int64, float64 (NaN = no value), bool, or
    object arrays of str (None = no value). `key` names the tags that, with time, identify a point.
    """

    measurement: str
    time: np.ndarray
    tags: dict[str, np.ndarray]
    fields: dict[str, np.ndarray]
    key: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.time)

    def kinds(self) -> dict[str, Kind]:
        """Kind of every field."""
        return {name: kind_of(values) for name, values in self.fields.items()}

    def take(self, rows: slice | np.ndarray) -> Points:
        """The points at `rows` (a slice or an index/boolean array)."""
        return Points(
            self.measurement,
            self.time[rows],
            {k: v[rows] for k, v in self.tags.items()},
            {k: v[rows] for k, v in self.fields.items()},
            self.key,
        )


def check_name(name: str, what: str) -> str:
    """A measurement, tag or field name: a letter, then letters, digits or `_` (at most 64); not "time".

    Names are never escaped or quoted by the caller, so this check is what keeps them out of SQL and
    InfluxQL text.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name == TIME:
        raise ValueError(f"{what} {name!r} is not a plain name (a letter, then letters, digits or _; not 'time')")
    return name


def kind_of(values: np.ndarray) -> Kind:
    """The kind of a field column, from its numpy dtype."""
    code = np.asarray(values).dtype.kind
    if code == "b":
        return "boolean"
    if code in "iu":
        return "integer"
    if code == "f":
        return "float"
    if code in "OUT":
        return "string"
    raise ValueError(f"no store kind for numpy dtype {np.asarray(values).dtype}")


def field_kind(field: Field) -> Kind:
    """Kind of a schema field in the store: floats when scaled (or a float on the wire), integers otherwise."""
    return "float" if field.scale is not None or field.numpy_type.endswith(("f4", "f8")) else "integer"


def frame_kinds(schema: Schema, columns: Sequence[str] | None = None) -> dict[str, Kind]:
    """Columns of `Store.read_frames` for `schema`, in order, with their kinds.

    time, device, fw_version, model_id, seq, window_s, received, clock_estimated, then the schema's flat
    fields (`Field.column_names`). With `columns`: time and the three tags, and of the others only those
    named (ValueError for a name that is none of them).
    """
    kinds: dict[str, Kind] = {TIME: "integer", "device": "string", "fw_version": "string", "model_id": "string"}
    kinds.update(ENVELOPE_FIELDS)
    for f in schema.fields:
        kinds.update(dict.fromkeys(f.column_names, field_kind(f)))
    if columns is None:
        return kinds
    unknown = sorted(set(columns) - set(kinds))
    if unknown:
        raise ValueError(f"schema {schema.id} has no columns {unknown}")
    return {name: kind for name, kind in kinds.items() if name in (TIME, *FRAME_TAGS) or name in columns}


def frame_points(batch: FrameBatch) -> Points:
    """One `telemetry` point per frame of a decoded batch."""
    schema = batch.schema
    raw = batch.raw
    n = len(batch)
    window_start = raw["window_start"].astype(np.int64)
    window_s = raw["window_s"].astype(np.int64)
    received = np.asarray(batch.received, dtype=np.int64)
    estimated = window_start == 0
    device = tag_column(batch.device)
    if n and not np.all(device != ""):
        raise SinkRejected("frames without a device id cannot be stored")
    _check_tag_values("device", device)
    tags = {
        "device": device,
        "fw_version": format_fw_version(raw["fw_version"]),
        "model_id": _decimal(raw["model_id"]),
        "schema": np.full(n, str(schema.id), dtype=object),
    }
    fields: dict[str, np.ndarray] = {
        "seq": raw["seq"].astype(np.int64),
        "window_s": window_s,
        "received": received,
        CLOCK_ESTIMATED: estimated,
    }
    columns = batch.columns()
    for f in schema.fields:
        dtype = np.float64 if field_kind(f) == "float" else np.int64
        values = np.asarray(columns[f.decoded], dtype=dtype).reshape(n, f.count)
        fields.update({name: np.ascontiguousarray(values[:, i]) for i, name in enumerate(f.column_names)})
    return Points(TELEMETRY, np.where(estimated, received - window_s, window_start), tags, fields, FRAME_KEY)


def table_points(
    measurement: str,
    time: np.ndarray,
    tags: Mapping[str, np.ndarray],
    fields: Mapping[str, np.ndarray],
) -> Points:
    """Points of any measurement from columns (what `Store.write_table` takes).

    `time` is integer Unix seconds; tags are strings (integers are written in decimal; None or "" = no
    value); fields are integers, floats (NaN = no value), booleans or strings (None = no value). A point
    without any field value is not a point (InfluxDB cannot hold one) and is left out. Raises ValueError
    for a caller's mistake (names, lengths, types) and SinkRejected for values no store can hold
    (infinite floats, tag values line protocol cannot carry).
    """
    check_name(measurement, "measurement")
    time = np.asarray(time)
    if time.ndim != 1 or time.dtype.kind not in "iu":
        raise ValueError(f"{measurement}: time must be a 1-d array of integer Unix seconds, not {time.dtype}")
    if not fields:
        raise ValueError(f"{measurement}: a point needs at least one field")
    overlap = set(tags) & set(fields)
    if overlap:
        raise ValueError(f"{measurement}: {sorted(overlap)} are both tags and fields")
    n = len(time)
    tag_cols = {check_name(k, "tag"): tag_column(v) for k, v in tags.items()}
    field_cols = {check_name(k, "field"): _field_column(measurement, k, v) for k, v in fields.items()}
    for name, values in {**tag_cols, **field_cols}.items():
        if values.shape != (n,):
            raise ValueError(f"{measurement}.{name}: {values.shape[0]} values for {n} times")
    for name, values in tag_cols.items():
        _check_tag_values(name, values)
    points = Points(measurement, time.astype(np.int64), tag_cols, field_cols, tuple(tag_cols))
    has_value = np.zeros(n, dtype=bool)
    for values in field_cols.values():
        has_value |= present(values)
    return points if has_value.all() else points.take(has_value)


def present(values: np.ndarray) -> np.ndarray:
    """Where a field column holds a value (not NaN, not None)."""
    kind = kind_of(values)
    if kind == "float":
        return ~np.isnan(values)
    if kind == "string":
        return np.not_equal(values, None)
    return np.ones(len(values), dtype=bool)


def tag_column(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Tag values as an object array of str ("" where there is no value); integers in decimal."""
    values = np.asarray(values)
    if values.size == 0:
        return np.empty(values.shape, dtype=object)
    if values.dtype.kind in "iu":
        return _decimal(values)
    if values.dtype.kind not in "OUT":
        raise ValueError(f"tag values must be strings or integers, not {values.dtype}")
    out = values.astype(object)
    missing = np.equal(out, None)
    if missing.any():
        out[missing] = ""
    return out


def column(values: np.ndarray | Sequence[Any], kind: Kind) -> np.ndarray:
    """Values read from a store (an array, a masked array, or a list with None) -> the column of `kind`.

    Applies the module's rule for missing values (see the module docstring); copies only when it must.
    """
    if isinstance(values, np.ma.MaskedArray):
        missing = np.ma.getmaskarray(values)
        data = np.asarray(values.data)
    else:
        data = np.asarray(values, dtype=object) if isinstance(values, list) else np.asarray(values)
        missing = np.equal(data, None) if data.dtype == object else None
    if missing is None or not missing.any():
        return data.astype(_DTYPES[kind], copy=False)
    if kind in ("string", "boolean"):
        out = data.astype(object)
        out[missing] = None
        return out
    out = np.where(missing, 0, data).astype(np.float64)
    out[missing] = np.nan
    return out


def empty_column(kind: Kind) -> np.ndarray:
    """A column of no rows of `kind`."""
    return np.empty(0, dtype=_DTYPES[kind])


def frames_from_table(
    table: Mapping[str, np.ndarray], schema: Schema, columns: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """`read_frames` columns of `schema` (those of `frame_kinds(schema, columns)`), in order, from a
    `read_table` result of `telemetry`."""
    kinds = frame_kinds(schema, columns)
    return {name: table[name] if name in table else empty_column(kind) for name, kind in kinds.items()}


def frame_query(
    schema: Schema, devices: Sequence[str] | None, columns: Sequence[str] | None = None
) -> tuple[list[str], dict[str, Sequence[str]]]:
    """The `read_table` columns and tag filter that `read_frames` of `schema` asks for."""
    fields = [name for name in frame_kinds(schema, columns) if name not in (TIME, *FRAME_TAGS)]
    where: dict[str, Sequence[str]] = {"schema": [str(schema.id)]}
    if devices is not None:
        where["device"] = list(devices)
    return fields, where


def sort_order(tags: Sequence[str]) -> list[str]:
    """Columns that rows read back are sorted by: (device, time) when there is a device tag, else time."""
    return [SORT_TAG, TIME] if SORT_TAG in tags else [TIME]


def _field_column(measurement: str, name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    kind = kind_of(values)
    if kind == "integer":
        if values.dtype == np.uint64 and values.size and int(values.max()) > np.iinfo(np.int64).max:
            raise SinkRejected(f"{measurement}.{name}: integers above 2**63-1 cannot be stored")
        return values.astype(np.int64)
    if kind == "float":
        values = values.astype(np.float64)
        if np.isinf(values).any():
            raise SinkRejected(f"{measurement}.{name}: infinite floats cannot be stored")
        return values
    if kind == "string":
        out = values.astype(object)
        given = out[np.not_equal(out, None)].tolist()
        if not all(isinstance(v, str) for v in given):
            raise ValueError(f"{measurement}.{name}: string fields hold str or None only")
        if any("\x00" in v for v in given):
            raise SinkRejected(f"{measurement}.{name}: strings with NUL characters cannot be stored")
        return out
    return values.astype(bool)


def _check_tag_values(name: str, values: np.ndarray) -> None:
    """Reject tag values that line protocol cannot carry, in every store alike (checked once per value)."""
    distinct = np.unique(np.asarray(values, dtype=np.dtypes.StringDType())).tolist()
    bad = [v for v in distinct if _BAD_TAG_VALUE.search(v)]
    if bad:
        raise SinkRejected(
            f"tag {name}: value {bad[0]!r} holds a control character or a backslash before a space, comma, "
            "equals sign or the end, which line protocol cannot carry"
        )


def _decimal(values: np.ndarray) -> np.ndarray:
    """Integers -> decimal strings (object array), formatting each distinct value once."""
    distinct, inverse = np.unique(np.asarray(values), return_inverse=True)
    text = np.array([str(v) for v in distinct.tolist()], dtype=object)
    return text[inverse.reshape(np.shape(values))] if len(distinct) else np.empty(np.shape(values), dtype=object)
