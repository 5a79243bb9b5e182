"""The drift statistics' optional C routines (`_kernels.c`, built by setup.py when a C compiler is present).

`routines` is the extension module, or None when it was not built: fleetwatch.drift.stats then runs its numpy
code, which gives the same results to rounding, more slowly. Tests set it to None to run the fallback.
"""

from __future__ import annotations

from types import ModuleType

routines: ModuleType | None
try:
    from fleetwatch.drift import _kernels as routines
except ImportError:  # built without a C compiler
    routines = None
