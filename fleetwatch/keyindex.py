"""Row numbers of string keys (device ids, cohort names), found for a whole fleet at once.

The drift engine keeps per-device state (CUSUM sums, device profiles, inventory tags) as arrays in the order
of a `KeyIndex`, so that a window of 100,000 devices is matched with the state by one array of row numbers
rather than by 100,000 look-ups for every signal. The keys are numbered in the order they were added (a
dict); `positions` answers for an array of queries at once and remembers its last few answers: the next
window usually holds exactly the devices of the last one, and comparing two arrays of ids is an order of
magnitude faster than hashing 100,000 new strings again.

>>> index = KeyIndex(["a", "c", "d"])
>>> index.positions(np.array(["d", "b", "a"]))
(array([2, 0, 0]), array([ True, False,  True]))
>>> index.with_keys(np.array(["b", "a", "b"])).keys.tolist()
['a', 'c', 'd', 'b']
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat

import numpy as np
from numpy.typing import ArrayLike

#: How many recent query arrays `positions` remembers (the window's devices, a model's, the cohorts).
REMEMBERED = 4


class KeyIndex:
    """Distinct string keys numbered 0, 1, ... in the order they were added. Immutable: `with_keys`
    returns a new index (which keeps the numbers of this one)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._rows: dict[str, int] = {}
        for key in keys:
            self._rows.setdefault(str(key), len(self._rows))
        self.keys = np.array(list(self._rows), dtype=object)
        self._recent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def positions(self, queries: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(row of each query, whether it is a key); the row of a miss is 0. For arrays that come again
        (a window's devices): the answer is remembered, and the arrays returned are read-only."""
        queries = as_keys(queries)
        for seen, index, found in self._recent:
            if len(seen) == len(queries) and np.array_equal(seen, queries):
                return index, found
        index, found = self.find(queries)
        self._remember(queries, index, found)
        return index, found

    def find(self, queries: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """`positions` without remembering: for a few keys asked once (a set of flagged devices)."""
        queries = as_keys(queries)
        rows = self._rows
        index = np.fromiter(map(rows.get, queries.tolist(), repeat(-1)), dtype=np.int64, count=len(queries))
        found = index >= 0
        index[~found] = 0
        return index, found

    def with_keys(self, queries: ArrayLike) -> KeyIndex:
        """This index when every query is a key already, else a new one with the missing queries added."""
        return self.extended(queries)[0]

    def extended(self, queries: ArrayLike) -> tuple[KeyIndex, np.ndarray]:
        """(`with_keys(queries)`, the row of each query in it): one look-up for both."""
        queries = as_keys(queries)
        index, found = self.positions(queries)
        if found.all():
            return self, index
        grown = KeyIndex()
        grown._rows = rows = dict(self._rows)
        missing = queries[~found].tolist()
        for key in missing:
            rows.setdefault(key, len(rows))
        grown.keys = np.concatenate([self.keys, np.array(list(rows)[len(self) :], dtype=object)])
        index = index.copy()
        index[~found] = [rows[key] for key in missing]
        grown._remember(queries, index, np.ones(len(queries), dtype=bool))
        return grown, index

    def _remember(self, queries: np.ndarray, index: np.ndarray, found: np.ndarray) -> None:
        for array in (index, found):
            array.flags.writeable = False
        self._recent = [(queries.copy(), index, found), *self._recent[: REMEMBERED - 1]]


def as_keys(queries: ArrayLike) -> np.ndarray:
    """Keys as an object array of str (tags read from a store are that already: no copy)."""
    queries = np.asarray(queries)
    if queries.dtype == object:
        return queries
    return queries.astype(str).astype(object)


def as_rows(index: np.ndarray) -> np.ndarray | slice:
    """Row numbers `index` as a slice when they are the first rows in order (a fleet whose devices did not
    change: arrays in the order of a `KeyIndex` are then read and written without a gather or scatter)."""
    return slice(len(index)) if (index == np.arange(len(index))).all() else index
