"""Scopes above the device: cohorts from the fleet inventory and from what devices run, and the fleet.

The inventory is a CSV with a `device` column plus one column per tag; each tag value is a cohort
(`site=north`). Devices also fall into `fw_version=<v>` and `model_id=<id>` cohorts from their frames.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fleetwatch.keyindex import KeyIndex, as_keys

Inventory = Mapping[str, Mapping[str, str]]


def read_inventory(path: Path) -> dict[str, dict[str, str]]:
    """device -> {tag: value} from the inventory CSV; raises ValueError naming what is wrong."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "device" not in reader.fieldnames:
            raise ValueError(f"{path}: the inventory needs a `device` column (and one column per tag)")
        return {row["device"]: {k: v for k, v in row.items() if k != "device" and v} for row in reader}


class InventoryIndex:
    """The inventory as arrays, for `cohort_masks`: the devices in a `KeyIndex`, and per tag every device's
    value as a number into the tag's values (-1: the device has no value for that tag). Built once from the
    inventory, so that a window of the whole fleet is matched by one look-up of its device ids."""

    def __init__(self, inventory: Inventory) -> None:
        self.devices = KeyIndex(inventory)
        numbers: dict[str, dict[str, int]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for row, device in enumerate(self.devices.keys.tolist()):
            for tag, value in inventory[device].items():
                known = numbers.setdefault(tag, {})
                self.codes.setdefault(tag, np.full(len(self.devices), -1))[row] = known.setdefault(value, len(known))
        self.values: dict[str, list[str]] = {tag: list(known) for tag, known in numbers.items()}

    def masks(self, devices: np.ndarray) -> dict[str, np.ndarray]:
        """`tag=value` -> boolean mask over `devices`, for the values that some of them have, by name."""
        index, found = self.devices.positions(devices)
        masks = {}
        for tag, codes in self.codes.items():
            rows = np.where(found, codes[index], -1)
            for code in np.flatnonzero(np.bincount(rows + 1, minlength=len(self.values[tag]) + 1)[1:]):
                masks[f"{tag}={self.values[tag][code]}"] = rows == code
        return dict(sorted(masks.items()))


def cohort_masks(
    window: Mapping[str, np.ndarray], inventory: Inventory | InventoryIndex | None
) -> dict[str, np.ndarray]:
    """Cohort name -> boolean mask over the window's rows; always includes "fleet"."""
    devices = as_keys(window["device"])
    masks: dict[str, np.ndarray] = {"fleet": np.ones(len(devices), dtype=bool)}
    for tag in ("fw_version", "model_id"):
        values = as_keys(window[tag])
        distinct = sorted(set(values.tolist()))
        others = np.zeros(len(values), dtype=bool)
        for value in distinct[:-1]:
            masks[f"{tag}={value}"] = mask = values == value
            others |= mask
        for value in distinct[-1:]:  # the devices with none of the other values: often all (one firmware)
            masks[f"{tag}={value}"] = ~others
    if inventory:
        index = inventory if isinstance(inventory, InventoryIndex) else InventoryIndex(inventory)
        masks.update(index.masks(devices))
    return masks
