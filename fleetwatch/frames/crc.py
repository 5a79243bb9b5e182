"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0), one frame or many at once.

>>> crc16(b"123456789") == 0x29B1
True
"""

from __future__ import annotations

import binascii

import numpy as np

from fleetwatch.frames import native


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC of one byte string."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc16_rows(rows: np.ndarray, data_len: int) -> np.ndarray:
    """CRC of the first `data_len` bytes of every row of a C-contiguous (n, row_len) uint8 array."""
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError("rows must be a 2-D uint8 array")
    rows = np.ascontiguousarray(rows)
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.uint16)
    if native.routines is not None:
        return np.frombuffer(native.routines.crc16_rows(rows, rows.shape[1], data_len), dtype="<u2").astype(np.uint16)
    return crc16_rows_fallback(rows, data_len)


def crc16_check_rows(rows: np.ndarray) -> np.ndarray:
    """True for each row of an (n, frame_len) uint8 array whose last two bytes (little-endian) are the
    CRC of the bytes before them."""
    if rows.ndim != 2 or rows.dtype != np.uint8 or rows.shape[1] < 2:
        raise ValueError("rows must be a 2-D uint8 array at least 2 bytes wide")
    stored = rows[:, -2].astype(np.uint16) | (rows[:, -1].astype(np.uint16) << 8)
    return crc16_rows(rows, rows.shape[1] - 2) == stored


def crc16_rows_fallback(rows: np.ndarray, data_len: int) -> np.ndarray:
    """The same as `crc16_rows`, one binascii call per row (used when the C routine is not built)."""
    prefix = rows[:, :data_len]
    return np.fromiter((binascii.crc_hqx(r.tobytes(), 0xFFFF) for r in prefix), dtype=np.uint16, count=len(rows))
