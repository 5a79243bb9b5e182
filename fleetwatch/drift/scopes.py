"""Scopes above the device: cohorts from the fleet inventory and from what devices run, and the fleet.

The inventory is a CSV with a `device` column plus one column per tag; each tag value is a cohort
(`site=north`). Devices also fall into `fw_version=<v>` and `model_id=<id>` cohorts from their frames.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Inventory = Mapping[str, Mapping[str, str]]


def read_inventory(path: Path) -> dict[str, dict[str, str]]:
    """device -> {tag: value} from the inventory CSV; raises ValueError naming what is wrong."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "device" not in reader.fieldnames:
            raise ValueError(f"{path}: the inventory needs a `device` column (and one column per tag)")
        return {row["device"]: {k: v for k, v in row.items() if k != "device" and v} for row in reader}


def cohort_masks(window: Mapping[str, np.ndarray], inventory: Inventory | None) -> dict[str, np.ndarray]:
    """Cohort name -> boolean mask over the window's rows; always includes "fleet"."""
    devices = np.asarray(window["device"], dtype=object).astype(str)
    masks: dict[str, np.ndarray] = {"fleet": np.ones(len(devices), dtype=bool)}
    for tag in ("fw_version", "model_id"):
        values = np.asarray(window[tag]).astype(str)
        for value in np.unique(values).tolist():
            masks[f"{tag}={value}"] = values == value
    if inventory:
        labels: dict[str, list[int]] = {}
        for i, device in enumerate(devices.tolist()):
            for tag, value in inventory.get(device, {}).items():
                labels.setdefault(f"{tag}={value}", []).append(i)
        for name, rows in sorted(labels.items()):
            mask = np.zeros(len(devices), dtype=bool)
            mask[rows] = True
            masks[name] = mask
    return masks
