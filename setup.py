"""Build hook for the optional C routines: the frame decoder's (bulk CRC, reason codes, message join) and the
drift statistics' (count tests, PSI, label-free accuracy, beta-binomial tail, CUSUM steps).

Everything else is declared in pyproject.toml. The extensions are optional: without a C compiler the package
installs and falls back to numpy (and binascii.crc_hqx per frame): the same results, slower.
"""

import os

from setuptools import Extension, setup

# The drift routines split large calls over two threads (POSIX threads).
THREADS = ["-pthread"] if os.name == "posix" else []

setup(
    ext_modules=[
        Extension(
            "fleetwatch.frames._native",
            sources=["fleetwatch/frames/_native.c"],
            optional=True,
        ),
        Extension(
            "fleetwatch.drift._kernels",
            sources=["fleetwatch/drift/_kernels.c"],
            extra_compile_args=THREADS,
            extra_link_args=THREADS,
            optional=True,
        ),
    ]
)
