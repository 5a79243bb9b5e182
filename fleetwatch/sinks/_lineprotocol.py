"""InfluxDB line protocol from columns, with no Python loop over points.

Every piece of a line — the measurement, each `,tag=value`, each ` field=value` (`,` after the first),
` time` and the newline — is a block of a (points x width) byte matrix in which each value is padded with
NUL bytes. The blocks are laid side by side and one boolean mask drops the NULs, which leaves the lines
back to back. A point without a value for a tag or a field has that block zeroed in its row, so its line
simply lacks it. NUL can be the padding because no value carries one (`sinks.model` rejects them).

Values are formatted by array arithmetic: integers digit by digit; floats the same way (with a decimal
point) when every value of the column is exactly `integer / 10**k` for a small k — which the scaled fields
of a frame are — and otherwise by numpy's shortest round-trip repr. Either way the text parses back to the
very same double.

>>> import numpy as np
>>> from fleetwatch.sinks.model import Points
>>> points = Points(
...     "m",
...     np.array([10, 20]),
...     {"device": np.array(["a b", ""], dtype=object)},
...     {"x": np.array([1.5, np.nan]), "n": np.array([-7, 3])},
...     ("device",),
... )
>>> print(encode(points).decode(), end="")
m,device=a\\ b x=1.5,n=-7i 10
m n=3i 20
"""

from __future__ import annotations

import numpy as np

from fleetwatch.sinks.model import Points, kind_of, present

_STRING = np.dtypes.StringDType()
_MAX_DECIMALS = 6
_EXACT_INTEGER = 2.0**53
_TRUE_FALSE = np.array([list(b"false"), [*b"true", 0]], dtype=np.uint8)
_TAG_SPECIAL = (",", "=", " ")
_TAG_SPECIAL_BYTES = np.frombuffer("".join(_TAG_SPECIAL).encode(), dtype=np.uint8)


def encode(points: Points) -> bytes:
    """Line protocol for `points` (precision: seconds), one line per point, each ending in a newline."""
    if len(points) == 0:
        return b""
    matrix = _line_matrix(points)
    return matrix[matrix != 0].tobytes()


def encode_lines(points: Points) -> np.ndarray:
    """The lines of `encode` as an object array of str, without their newlines (for tests and tools)."""
    if len(points) == 0:
        return np.empty(0, dtype=object)
    matrix = _line_matrix(points)
    ends = np.cumsum(np.count_nonzero(matrix, axis=1))
    text = matrix[matrix != 0].tobytes()
    starts = np.concatenate(([0], ends[:-1]))
    return np.array(
        [text[a : b - 1].decode() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)], dtype=object
    )


def _line_matrix(points: Points) -> np.ndarray:
    """(points x width) bytes: each row one line, NUL-padded."""
    n = len(points)
    blocks = _Blocks()
    blocks.add(_const(points.measurement, n))
    for name, values in points.tags.items():
        blocks.add(_const(f",{name}=", n), _tag_value(values), has=values != "")
    has = {name: present(values) for name, values in points.fields.items()}
    first = np.argmax(np.column_stack(list(has.values())), axis=1)
    for j, (name, values) in enumerate(points.fields.items()):
        separator = np.where(first == j, ord(" "), ord(","))[:, None].astype(np.uint8)
        blocks.add(separator, _const(f"{name}=", n), *_field_value(values, has[name]), has=has[name])
    blocks.add(_const(" ", n), _integer(points.time), _const("\n", n))
    return blocks.matrix()


class _Blocks:
    """The blocks of the lines, side by side; rows where a block is absent get it zeroed."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.width = 0
        self.absent: list[tuple[int, int, np.ndarray]] = []

    def add(self, *pieces: np.ndarray, has: np.ndarray | None = None) -> None:
        start = self.width
        self.pieces.extend(pieces)
        self.width += sum(p.shape[1] for p in pieces)
        if has is not None and not has.all():
            self.absent.append((start, self.width, ~has))

    def matrix(self) -> np.ndarray:
        matrix = np.hstack(self.pieces)
        for start, stop, absent in self.absent:
            matrix[absent, start:stop] = 0
        return matrix


def _field_value(values: np.ndarray, has: np.ndarray) -> list[np.ndarray]:
    n = len(values)
    kind = kind_of(values)
    if kind == "integer":
        return [_integer(values), _const("i", n)]
    if kind == "float":
        return [_float(values if has.all() else np.where(has, values, 0.0))]
    if kind == "boolean":
        return [_TRUE_FALSE[values.astype(np.intp)]]
    text = np.asarray(np.where(has, values, ""), dtype=_STRING)
    text = np.strings.replace(np.strings.replace(text, "\\", "\\\\"), '"', '\\"')
    return [_const('"', n), _text(text), _const('"', n)]


def _tag_value(values: np.ndarray) -> np.ndarray:
    """Tag values, escaped, as (n, width) bytes; one value repeated costs one formatting."""
    if bool((values == values[0]).all()):
        escaped = values[0]
        for char in _TAG_SPECIAL:
            escaped = escaped.replace(char, "\\" + char)
        return _const(escaped, len(values))
    text = np.asarray(values, dtype=_STRING)
    matrix = _text(text)
    if not np.isin(matrix, _TAG_SPECIAL_BYTES).any():
        return matrix
    for char in _TAG_SPECIAL:
        text = np.strings.replace(text, char, "\\" + char)
    return _text(text)


def _text(text: np.ndarray) -> np.ndarray:
    """Strings -> (n, width) UTF-8 bytes, NUL-padded."""
    return _matrix(np.strings.encode(text, "utf-8"))


def _integer(values: np.ndarray) -> np.ndarray:
    """Integers -> (n, width) decimal digits with an optional sign, NUL where a leading zero would be."""
    values = np.asarray(values, dtype=np.int64)
    negative = values < 0
    magnitude = np.abs(values).astype(np.uint64)
    return np.hstack([_sign(negative), _digits(magnitude, 0)])


def _float(values: np.ndarray) -> np.ndarray:
    """Finite floats -> (n, width) text that parses back to the same doubles."""
    for decimals in range(_MAX_DECIMALS + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.rint(values * 10.0**decimals)
            exact = np.all(np.abs(scaled) < _EXACT_INTEGER) and np.array_equal(scaled / 10.0**decimals, values)
        if exact:
            return np.hstack([_sign(np.signbit(values)), _digits(np.abs(scaled).astype(np.uint64), decimals)])
    text = values.astype("S32")
    width = int(np.strings.str_len(text).max())
    return _matrix(text.astype(f"S{width}"))


def _digits(magnitude: np.ndarray, decimals: int) -> np.ndarray:
    """Non-negative integers as digits; with `decimals` > 0 a point before the last `decimals` digits."""
    top = int(magnitude.max()) if len(magnitude) else 0
    width = max(len(str(top)), decimals + 1)
    powers = np.array([10**p for p in range(width - 1, -1, -1)], dtype=np.uint64)
    quotient = magnitude[:, None] // powers
    digits = (quotient % 10).astype(np.uint8) + ord("0")
    leading = quotient == 0
    leading[:, width - decimals - 1 :] = False
    digits[leading] = 0
    if decimals == 0:
        return digits
    point = np.full((len(magnitude), 1), ord("."), dtype=np.uint8)
    return np.hstack([digits[:, : width - decimals], point, digits[:, width - decimals :]])


def _sign(negative: np.ndarray) -> np.ndarray:
    return np.where(negative, ord("-"), 0).astype(np.uint8)[:, None]


def _const(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (n, len(text.encode())))


def _matrix(data: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(data)
    return data.view(np.uint8).reshape(len(data), data.dtype.itemsize)
