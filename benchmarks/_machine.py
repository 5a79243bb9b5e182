"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np


def describe() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {sys.version.split()[0]}, numpy {np.__version__}"
    )


def pin_to_one_core() -> None:
    """Run on one core, as the targets say (Linux only; elsewhere a no-op)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
