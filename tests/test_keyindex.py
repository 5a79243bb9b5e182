"""Key look-ups for whole fleets: `KeyIndex` (remembered answers, growth) and the inventory's cohort masks."""

from __future__ import annotations

import doctest

import numpy as np

from fleetwatch import keyindex
from fleetwatch.drift.scopes import InventoryIndex, cohort_masks
from fleetwatch.keyindex import KeyIndex


def test_doctests() -> None:
    assert doctest.testmod(keyindex, raise_on_error=False).failed == 0


def test_positions_are_remembered_by_content_and_never_change_under_the_caller() -> None:
    index = KeyIndex(["a", "b", "c"])
    window = np.array(["c", "x", "a"], dtype=object)
    first = index.positions(window)
    window[1] = "b"  # the caller reuses its array: the remembered answer must not be the stale one
    assert index.positions(window)[0].tolist() == [2, 1, 0] and index.positions(window)[1].all()
    again = index.positions(np.array(["c", "x", "a"]))  # equal content, another array (and dtype)
    assert again[0] is first[0] and again[0].tolist() == [2, 0, 0] and again[1].tolist() == [True, False, True]
    assert not again[0].flags.writeable


def test_with_keys_keeps_the_numbers_and_adds_new_keys_once() -> None:
    index = KeyIndex(["a", "b"])
    assert index.with_keys(np.array(["b", "a"])) is index
    grown = index.with_keys(np.array(["d", "a", "d", "c"]))
    assert grown.keys.tolist() == ["a", "b", "d", "c"] and len(index) == 2
    assert grown.positions(np.array(["d", "a", "d", "c"]))[0].tolist() == [2, 0, 2, 3]
    assert grown.find(["c", "zz"])[1].tolist() == [True, False]
    same, rows = index.extended(np.array(["b", "a"]))
    assert same is index and rows.tolist() == [1, 0]
    again, rows = index.extended(np.array(["d", "a", "d", "c"]))  # the rows in the grown index, in one look-up
    assert again.keys.tolist() == grown.keys.tolist() and rows.tolist() == [2, 0, 2, 3]


def test_cohort_masks_from_an_inventory_index_equal_those_from_the_mapping() -> None:
    rng = np.random.default_rng(5)
    inventory = {
        f"dev-{i:03d}": {"site": str(rng.choice(["north", "south", ""])), **({"rack": f"r{i % 3}"} if i % 4 else {})}
        for i in range(200)
    }
    devices = np.array([f"dev-{i:03d}" for i in rng.permutation(260)], dtype=object)  # 60 not in the inventory
    window = {
        "device": devices,
        "fw_version": np.where(rng.random(260) < 0.5, "1.2.0", "1.3.0"),
        "model_id": ["7"] * 260,
    }
    expected = {"fleet": np.ones(260, dtype=bool)}
    for tag in ("fw_version", "model_id"):
        for value in ("1.2.0", "1.3.0") if tag == "fw_version" else ("7",):
            expected[f"{tag}={value}"] = np.asarray(window[tag]) == value
    for name in sorted({f"{t}={v}" for tags in inventory.values() for t, v in tags.items()}):
        tag, value = name.split("=")
        expected[name] = np.array([inventory.get(d, {}).get(tag) == value for d in devices])
    index = InventoryIndex(inventory)
    for masks in (cohort_masks(window, inventory), cohort_masks(window, index), cohort_masks(window, index)):
        assert list(masks) == list(expected)
        assert all(np.array_equal(masks[k], expected[k]) for k in expected)
    assert list(cohort_masks(window, None)) == ["fleet", "fw_version=1.2.0", "fw_version=1.3.0", "model_id=7"]
