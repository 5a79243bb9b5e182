"""Body schemas: one declarative TOML file per frame layout, and the registry that holds them.

A schema file names its fields (type, count, scale, unit, the role each plays for the drift engine) and
its invariants. Everything else is derived from it: the numpy dtype of a whole frame, the decoded view
(names and engineering units), the firmware's C header and the docs table.

>>> schema = Registry.builtin().get(1)
>>> schema.name, schema.body_len, schema.frame_len
('tinyml-health', 52, 74)
>>> schema.field("latency_p50").decoded
'latency_p50_ms'
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = 0xFB
ENVELOPE_VERSION = 1
ENVELOPE_LEN = 20
CRC_LEN = 2
MIN_FRAME_LEN = ENVELOPE_LEN + CRC_LEN

#: The envelope of version 1 (WIRE-FORMAT.md), in wire order.
ENVELOPE_FIELDS: tuple[tuple[str, str], ...] = (
    ("magic", "u1"),
    ("version", "u1"),
    ("schema_id", "u1"),
    ("body_len", "u1"),
    ("seq", "<u2"),
    ("window_start", "<u4"),
    ("window_s", "<u2"),
    ("fw_version", "<u4"),
    ("model_id", "<u4"),
)

#: Wire types a field may have: numpy dtype, C type.
TYPES: dict[str, tuple[str, str]] = {
    "u8": ("u1", "uint8_t"),
    "u16": ("<u2", "uint16_t"),
    "u32": ("<u4", "uint32_t"),
    "i8": ("i1", "int8_t"),
    "i16": ("<i2", "int16_t"),
    "i32": ("<i4", "int32_t"),
    "f32": ("<f4", "float"),
}

#: Roles tell the drift engine what a field means, whatever the schema calls it.
ROLES: dict[str, str] = {
    "inference_count": "inferences run in the window",
    "anomaly_count": "inferences flagged anomalous",
    "latency_p50": "median inference latency",
    "latency_p95": "95th percentile inference latency",
    "memory_peak": "peak memory use in percent",
    "battery": "battery voltage",
    "flags": "status bits (see `bits`)",
    "input_mean": "per-channel mean of the model's input over the window",
    "input_var": "per-channel population variance of the model's input over the window",
    "confidence_histogram": "counts of top-1 confidence per bin (see `bin_edges`)",
    "class_counts": "counts of the top-1 predicted class",
    "counter": "a count with no special meaning to the drift engine",
    "gauge": "a level with no special meaning to the drift engine",
}

_RESERVED = {name for name, _ in ENVELOPE_FIELDS} | {"crc", "device", "received", "message", "offset"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: An integer in an invariant lies within this bound (every integer up to it is exact in a double).
MAX_CONSTANT = 2**53
#: Invariants a schema may have (a frame's reason code is one byte).
MAX_INVARIANTS = 240
_INTEGER = re.compile(r"^-?\d+$")
_CHECK = re.compile(r"^\s*(\S+)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")
_SUM = re.compile(r"^sum\(([a-z][a-z0-9_]*)\)$")


class SchemaError(ValueError):
    """A schema file that cannot be used, with the file and the key at fault."""


@dataclass(frozen=True)
class Field:
    """One field of a body: `count` values of wire type `type`; engineering value = raw * scale."""

    name: str
    type: str
    count: int = 1
    scale: float | None = None
    unit: str = ""
    decoded: str = ""
    role: str | None = None
    doc: str = ""
    bits: Mapping[str, int] = field(default_factory=dict)
    bin_edges: tuple[float, ...] | None = None

    @property
    def size(self) -> int:
        """Bytes this field takes on the wire."""
        return np.dtype(TYPES[self.type][0]).itemsize * self.count

    @property
    def numpy_type(self) -> str:
        return TYPES[self.type][0]

    @property
    def c_type(self) -> str:
        return TYPES[self.type][1]

    @property
    def column_names(self) -> list[str]:
        """Flat column names in the store: `decoded`, or `decoded_0 .. decoded_{count-1}` for arrays."""
        if self.count == 1:
            return [self.decoded]
        return [f"{self.decoded}_{i}" for i in range(self.count)]

    def to_engineering(self, raw: np.ndarray) -> np.ndarray:
        """Raw wire integers -> engineering units (float64 when scaled, the raw integers otherwise).

        A decimal scale (0.1, 0.001, ...) divides by its exact inverse so 8271 * 0.1 prints as 827.1.
        """
        if self.scale is None:
            return raw
        inverse = 1.0 / self.scale
        if abs(inverse - round(inverse)) < 1e-9:
            return raw / round(inverse)
        return raw * self.scale

    def to_raw(self, value: np.ndarray) -> np.ndarray:
        """Engineering units -> raw wire values (rounded to nearest); the inverse of `to_engineering`."""
        value = np.asarray(value)
        if self.scale is None:
            return value
        inverse = 1.0 / self.scale
        if abs(inverse - round(inverse)) < 1e-9:
            return np.rint(value * round(inverse))
        return np.rint(value / self.scale)


@dataclass(frozen=True)
class Operand:
    """One side of an invariant: an integer (`field` None), a field's value, or the sum of its values."""

    field: str | None = None
    summed: bool = False
    value: int = 0


@dataclass(frozen=True)
class Invariant:
    """A semantic rule every frame of the schema keeps, e.g. `sum(conf_hist) == inference_count`.

    Its terms compare as exact numbers (integers and f32 values alike); fleetwatch/frames/rules.py
    evaluates it."""

    name: str
    check: str

    def parts(self) -> tuple[Operand, str, Operand]:
        """(left operand, operator, right operand)."""
        lhs, op, rhs = _parse_check(self.check)
        return _operand(lhs), op, _operand(rhs)


def _parse_check(check: str) -> tuple[str, str, str]:
    match = _CHECK.match(check)
    if match is None:
        raise SchemaError(f"invariant check {check!r} is not `<term> <op> <term>`")
    return match.group(1), match.group(2), match.group(3)


def _operand(term: str) -> Operand:
    if _INTEGER.match(term):
        return Operand(value=int(term))
    summed = _SUM.match(term)
    return Operand(field=summed.group(1), summed=True) if summed else Operand(field=term)


@dataclass(frozen=True)
class Schema:
    """A body layout: its id on the wire, its fields in order, and its invariants."""

    id: int
    name: str
    fields: tuple[Field, ...]
    invariants: tuple[Invariant, ...] = ()
    description: str = ""
    source: str = ""

    @property
    def body_len(self) -> int:
        return sum(f.size for f in self.fields)

    @property
    def frame_len(self) -> int:
        return ENVELOPE_LEN + self.body_len + CRC_LEN

    @property
    def body_dtype(self) -> np.dtype:
        """Packed little-endian numpy dtype of the body alone."""
        return np.dtype([_dtype_entry(f) for f in self.fields])

    @property
    def frame_dtype(self) -> np.dtype:
        """Packed little-endian numpy dtype of a whole frame: envelope, body fields, CRC."""
        return np.dtype([*ENVELOPE_FIELDS, *(_dtype_entry(f) for f in self.fields), ("crc", "<u2")])

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"schema {self.id} ({self.name}) has no field {name!r}")

    def by_role(self, role: str) -> Field | None:
        """The field that plays `role`, or None when this schema does not carry it."""
        return next((f for f in self.fields if f.role == role), None)

    def field_offsets(self) -> Iterator[tuple[int, Field]]:
        """(offset in the body, field) in wire order."""
        offset = 0
        for f in self.fields:
            yield offset, f
            offset += f.size


def _dtype_entry(f: Field) -> tuple[str, str] | tuple[str, str, tuple[int]]:
    return (f.name, f.numpy_type) if f.count == 1 else (f.name, f.numpy_type, (f.count,))


def parse_schema(data: Mapping[str, Any], source: str = "<memory>") -> Schema:
    """Build a Schema from parsed TOML, checking everything a decoder relies on."""

    def fail(key: str, problem: str) -> SchemaError:
        return SchemaError(f"{source}: {key}: {problem}")

    schema_id = data.get("id")
    if not isinstance(schema_id, int) or not 0 <= schema_id <= 255:
        raise fail("id", "must be an integer 0..255 (it is one byte on the wire)")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise fail("name", "must be a non-empty string")
    fields = tuple(_parse_field(i, raw, fail) for i, raw in enumerate(data.get("fields", [])))
    if not fields:
        raise fail("fields", "a schema needs at least one field")
    names = [f.name for f in fields]
    clash = {n for n in names if names.count(n) > 1} | (set(names) & _RESERVED)
    if clash:
        raise fail("fields", f"names {sorted(clash)} repeat or clash with the envelope")
    decoded = [f.decoded for f in fields]
    if len(set(decoded)) != len(decoded) or set(decoded) & _RESERVED:
        raise fail("fields", "decoded names repeat or clash with the envelope")
    by_name = {f.name: f for f in fields}
    raw_invariants = data.get("invariants", [])
    if len(raw_invariants) > MAX_INVARIANTS:
        raise fail("invariants", f"{len(raw_invariants)} invariants; a schema may have {MAX_INVARIANTS} at most")
    invariants = tuple(_parse_invariant(i, raw, by_name, fail) for i, raw in enumerate(raw_invariants))
    schema = Schema(
        id=schema_id,
        name=name,
        fields=fields,
        invariants=invariants,
        description=str(data.get("description", "")),
        source=source,
    )
    if schema.body_len > 255:
        raise fail("fields", f"body is {schema.body_len} bytes; body_len is one byte (max 255)")
    return schema


def _parse_field(index: int, raw: Mapping[str, Any], fail: Callable[[str, str], SchemaError]) -> Field:
    key = f"fields[{index}]"
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"{key}.name", "must be lower_snake_case")
    wire_type = raw.get("type")
    if wire_type not in TYPES:
        raise fail(f"{key}.type", f"must be one of {', '.join(TYPES)}")
    count = raw.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise fail(f"{key}.count", "must be a positive integer")
    scale = raw.get("scale")
    if scale is not None and (not isinstance(scale, int | float) or scale <= 0):
        raise fail(f"{key}.scale", "must be a positive number")
    role = raw.get("role")
    if role is not None and role not in ROLES:
        raise fail(f"{key}.role", f"must be one of {', '.join(ROLES)}")
    bits = dict(raw.get("bits", {}))
    width = np.dtype(TYPES[wire_type][0]).itemsize * 8
    if any(not isinstance(b, int) or not 0 <= b < width for b in bits.values()):
        raise fail(f"{key}.bits", f"bit numbers must be 0..{width - 1}")
    edges = raw.get("bin_edges")
    if edges is not None:
        edges = tuple(float(e) for e in edges)
        if len(edges) != count + 1 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise fail(f"{key}.bin_edges", f"must be {count + 1} increasing numbers (count + 1)")
    if role == "confidence_histogram" and edges is None:
        raise fail(f"{key}.bin_edges", "a confidence_histogram needs its bin edges")
    decoded = raw.get("decoded", name)
    if not isinstance(decoded, str) or not _NAME.match(decoded):
        raise fail(f"{key}.decoded", "must be lower_snake_case")
    return Field(
        name=name,
        type=wire_type,
        count=count,
        scale=float(scale) if scale is not None else None,
        unit=str(raw.get("unit", "")),
        decoded=decoded,
        role=role,
        doc=str(raw.get("doc", "")),
        bits=bits,
        bin_edges=edges,
    )


def _parse_invariant(
    index: int, raw: Mapping[str, Any], fields: Mapping[str, Field], fail: Callable[[str, str], SchemaError]
) -> Invariant:
    key = f"invariants[{index}]"
    name, check = raw.get("name"), raw.get("check")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"{key}.name", "must be lower_snake_case")
    if not isinstance(check, str):
        raise fail(f"{key}.check", "must be a string like `sum(a) == b`")
    try:
        terms = _parse_check(check)
    except SchemaError as exc:
        raise fail(f"{key}.check", str(exc)) from None
    invariant = Invariant(name=name, check=check)
    operands = invariant.parts()
    for term, operand in ((terms[0], operands[0]), (terms[2], operands[2])):
        problem = _operand_problem(operand, fields)
        if problem:
            raise fail(f"{key}.check", f"{term!r} {problem}")
    if operands[0].field is None and operands[2].field is None:
        raise fail(f"{key}.check", "compares two integers; one side must be a field")
    return invariant


def _operand_problem(operand: Operand, fields: Mapping[str, Field]) -> str:
    """Why an operand cannot be evaluated, or "" when it can."""
    if operand.field is None:
        return "is beyond ±2**53" if abs(operand.value) > MAX_CONSTANT else ""
    f = fields.get(operand.field)
    if f is None:
        return "is neither an integer nor a field of this schema"
    if operand.summed and f.type == "f32":
        return "sums an f32 field; sum() takes integer fields"
    if f.count > 1 and not operand.summed:
        return f"is an array of {f.count} values; compare sum({f.name})"
    return ""


def load_schema(path: Path) -> Schema:
    """Read one schema file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError(f"{path}: {exc}") from None
    return parse_schema(data, source=str(path))


class Registry:
    """Schemas by id: the built-in ones plus any a user adds from directories of `*.toml` files."""

    def __init__(self, schemas: Iterable[Schema] = ()) -> None:
        self._schemas: dict[int, Schema] = {}
        for schema in schemas:
            self.add(schema)

    def add(self, schema: Schema) -> None:
        existing = self._schemas.get(schema.id)
        if existing is not None:
            raise SchemaError(
                f"{schema.source}: id: schema id {schema.id} is already taken by "
                f"{existing.name!r} ({existing.source}); pick a free id"
            )
        self._schemas[schema.id] = schema

    @classmethod
    def builtin(cls) -> Registry:
        folder = resources.files("fleetwatch.frames").joinpath("schemas")
        paths = sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))
        return cls(load_schema(p) for p in paths)

    @classmethod
    def with_dirs(cls, dirs: Iterable[Path]) -> Registry:
        """The built-in schemas plus every `*.toml` in each directory."""
        registry = cls.builtin()
        for folder in dirs:
            if not Path(folder).is_dir():
                raise SchemaError(f"{folder}: schema directory does not exist")
            for path in sorted(Path(folder).glob("*.toml")):
                registry.add(load_schema(path))
        return registry

    def get(self, schema_id: int) -> Schema:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise KeyError(f"no schema with id {schema_id}; known: {sorted(self._schemas)}") from None

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self._schemas

    def __iter__(self) -> Iterator[Schema]:
        return iter(sorted(self._schemas.values(), key=lambda s: s.id))

    def __len__(self) -> int:
        return len(self._schemas)
