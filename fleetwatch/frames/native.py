"""The frame decoder's optional C routines (`_native.c`, built by setup.py when a C compiler is present).

`routines` is the extension module, or None when it was not built: every caller then uses its numpy or
binascii fallback, which gives the same results more slowly. Tests set it to None to run the fallbacks.
"""

from __future__ import annotations

from types import ModuleType

routines: ModuleType | None
try:
    from fleetwatch.frames import _native as routines
except ImportError:  # built without a C compiler
    routines = None
