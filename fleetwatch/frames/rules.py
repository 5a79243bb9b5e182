"""The reason code of every frame of one length: in one C pass, or with numpy when C is not built.

A frame's code follows WIRE-FORMAT.md's order of precedence: `MALFORMED` (its header is not magic,
version 1 and the body length of its row: the caller walks such messages one by one), `BAD_CRC`,
`UNKNOWN_SCHEMA`, `BODY_LEN_MISMATCH`, then `FIRST_RULE + k` for the first rule k of its schema it breaks,
else `OK`. The rules of a schema, in order: `window_s_positive`, the schema's invariants, `time_in_future`.
Each rule compares two terms (an integer, a field, the sum of an array field, or the receive time plus a
slack) as exact numbers. The rules are compiled once per registry into a table of int64 words that the C
routine (`_native.c`) interprets; `_codes_numpy` is the same semantics with array operations.

>>> [rule.name for rule in schema_rules(Registry.builtin().get(1))][:2]
['invariant:window_s_positive', 'invariant:conf_hist_sum']
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fleetwatch.frames import native
from fleetwatch.frames.crc import crc16_check_rows
from fleetwatch.frames.schema import (
    ENVELOPE_LEN,
    ENVELOPE_VERSION,
    MAGIC,
    MIN_FRAME_LEN,
    TYPES,
    Operand,
    Registry,
    Schema,
)

#: A frame whose window opens more than this far after its receive time is rejected as `time_in_future`.
FUTURE_SLACK_S = 24 * 3600

OK, BAD_CRC, UNKNOWN_SCHEMA, BODY_LEN_MISMATCH, FIRST_RULE = 0, 1, 2, 3, 4
MALFORMED = 255
#: The reasons of the codes below FIRST_RULE.
REASON_OF_CODE = {BAD_CRC: "bad_crc", UNKNOWN_SCHEMA: "unknown_schema", BODY_LEN_MISMATCH: "body_len_mismatch"}

#: The table's numbering of operators, term kinds and wire types (the enums of _native.c).
OPERATORS = ("==", "!=", "<=", "<", ">=", ">")
CONST, FIELD, RECEIVED = 0, 1, 2
WIRE_TYPES = ("u8", "u16", "u32", "i8", "i16", "i32", "f32")
_NUMPY_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = dict(
    zip(OPERATORS, (np.equal, np.not_equal, np.less_equal, np.less, np.greater_equal, np.greater), strict=True)
)


@dataclass(frozen=True)
class Term:
    """One side of a rule: a constant (`value`), the sum of `count` values of wire type `type` from byte
    `offset` of the frame, or the receive time of the frame's message plus `value`."""

    kind: int
    type: str = "u8"
    offset: int = 0
    count: int = 1
    value: int = 0


@dataclass(frozen=True)
class Rule:
    """`lhs op rhs` holds for every valid frame; a frame that breaks it is rejected as `name`."""

    name: str
    lhs: Term
    op: str
    rhs: Term


def schema_rules(schema: Schema) -> tuple[Rule, ...]:
    """The rules of a schema's frames in the order they are checked."""
    offsets = {f.name: (ENVELOPE_LEN + offset, f) for offset, f in schema.field_offsets()}

    def term(operand: Operand) -> Term:
        if operand.field is None:
            return Term(CONST, value=operand.value)
        offset, f = offsets[operand.field]
        return Term(FIELD, f.type, offset, f.count)

    rules = [Rule("invariant:window_s_positive", Term(FIELD, "u16", 10), ">", Term(CONST))]
    for invariant in schema.invariants:
        lhs, op, rhs = invariant.parts()
        rules.append(Rule(f"invariant:{invariant.name}", term(lhs), op, term(rhs)))
    rules.append(Rule("time_in_future", Term(FIELD, "u32", 6), "<=", Term(RECEIVED, value=FUTURE_SLACK_S)))
    return tuple(rules)


@dataclass(frozen=True)
class _Compiled:
    """A registry's rules by schema id, and the same as the C routine's table."""

    schemas: dict[int, Schema]
    rules: dict[int, tuple[Rule, ...]]
    table: np.ndarray


#: Registries only grow (Registry.add), so a compiled registry holds while its length is unchanged.
_compiled: weakref.WeakKeyDictionary[Registry, tuple[int, _Compiled]] = weakref.WeakKeyDictionary()


def _compile(registry: Registry) -> _Compiled:
    cached = _compiled.get(registry)
    if cached is not None and cached[0] == len(registry):
        return cached[1]
    schemas = {schema.id: schema for schema in registry}
    rules = {sid: schema_rules(schema) for sid, schema in schemas.items()}
    index = [-1] * 256
    words: list[int] = []
    for sid, schema_rule_list in rules.items():
        index[sid] = 256 + len(words)
        words += [schemas[sid].body_len, len(schema_rule_list)]
        for rule in schema_rule_list:
            words.append(OPERATORS.index(rule.op))
            for t in (rule.lhs, rule.rhs):
                words += [t.kind, WIRE_TYPES.index(t.type), t.offset, t.count, t.value]
    compiled = _Compiled(schemas, rules, np.array(index + words, dtype=np.int64))
    _compiled[registry] = (len(registry), compiled)
    return compiled


def reason_codes(
    rows: np.ndarray, msg: np.ndarray, received: np.ndarray, registry: Registry
) -> tuple[np.ndarray, np.ndarray]:
    """(code per row of a C-contiguous (n, frame_len) uint8 matrix, count of OK frames per schema id).

    Row i belongs to message `msg[i]`, received at `received[msg[i]]` (Unix s).
    """
    compiled = _compile(registry)
    if native.routines is None:
        return _codes_numpy(rows, msg, received, compiled)
    codes = np.empty(len(rows), dtype=np.uint8)
    valid = np.empty(256, dtype=np.int64)
    msg, received = np.ascontiguousarray(msg, dtype=np.int64), np.ascontiguousarray(received, dtype=np.int64)
    native.routines.reason_codes(rows, rows.shape[1], compiled.table, msg, received, codes, valid)
    return codes, valid


def reason(registry: Registry, schema_id: int, code: int) -> str:
    """The reject reason of a non-zero code other than MALFORMED, for a frame of `schema_id`."""
    if code < FIRST_RULE:
        return REASON_OF_CODE[code]
    return _compile(registry).rules[schema_id][code - FIRST_RULE].name


def _codes_numpy(
    rows: np.ndarray, msg: np.ndarray, received: np.ndarray, compiled: _Compiled
) -> tuple[np.ndarray, np.ndarray]:
    body_len = rows.shape[1] - MIN_FRAME_LEN
    codes = np.zeros(len(rows), dtype=np.uint8)
    crc_ok = crc16_check_rows(rows)
    codes[~crc_ok] = BAD_CRC
    schema_ids = rows[:, 2]
    for sid in np.unique(schema_ids[crc_ok]).tolist():
        of_schema = np.flatnonzero(crc_ok & (schema_ids == sid))
        if sid not in compiled.schemas:
            codes[of_schema] = UNKNOWN_SCHEMA
        elif compiled.schemas[sid].body_len != body_len:
            codes[of_schema] = BODY_LEN_MISMATCH
        else:
            codes[of_schema] = _rule_codes(rows[of_schema], received[msg[of_schema]], compiled.rules[sid])
    header_ok = (rows[:, 0] == MAGIC) & (rows[:, 1] == ENVELOPE_VERSION) & (rows[:, 3] == body_len)
    codes[~header_ok] = MALFORMED
    return codes, np.bincount(schema_ids[codes == OK], minlength=256).astype(np.int64)


def _rule_codes(rows: np.ndarray, received: np.ndarray, rules: tuple[Rule, ...]) -> np.ndarray:
    """Per frame OK when it keeps every rule, else FIRST_RULE + the index of the first rule it breaks."""
    code = np.zeros(len(rows), dtype=np.uint8)
    for k, rule in enumerate(rules):
        keeps = _NUMPY_OPS[rule.op](_values(rows, rule.lhs, received), _values(rows, rule.rhs, received))
        code[(code == OK) & ~keeps] = FIRST_RULE + k
    return code


def _values(rows: np.ndarray, term: Term, received: np.ndarray) -> np.ndarray:
    """A term's exact value for each row: int64, or float64 for an f32 field."""
    if term.kind == CONST:
        return np.full(len(rows), term.value, dtype=np.int64)
    if term.kind == RECEIVED:
        return received.astype(np.int64) + term.value
    dtype = np.dtype(TYPES[term.type][0])
    values = rows[:, term.offset : term.offset + dtype.itemsize * term.count].view(dtype)
    if dtype.kind == "f":
        with np.errstate(invalid="ignore"):  # a signalling NaN arrives as a quiet one, as in C
            return values[:, 0].astype(np.float64)
    return values.astype(np.int64).sum(axis=1)
