"""Find string keys (device ids, cohort names) in a sorted key array, for a whole fleet at once.

The drift engine keeps per-device state (CUSUM sums, device profiles) as a sorted array of keys beside an
array of values, so that a window of 100,000 devices is matched with `np.searchsorted` in C rather than
with 100,000 dictionary look-ups.

>>> positions(np.array(["a", "c", "d"]), np.array(["d", "b", "a"]))
(array([2, 0, 0]), array([ True, False,  True]))
"""

from __future__ import annotations

import numpy as np


def positions(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into `sorted_keys` of each query, whether it is there); the index of a miss is 0."""
    queries = np.asarray(queries, dtype=str)
    if not len(sorted_keys):
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    found = sorted_keys[index] == queries
    return np.where(found, index, 0), found


def contains(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query is among `keys` (in any order)."""
    return positions(np.sort(np.asarray(keys, dtype=str)), queries)[1]
