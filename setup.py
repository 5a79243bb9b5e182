"""Build hook for the optional C routine that checks frame CRCs in bulk.

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
package installs and falls back to binascii.crc_hqx per frame (correct, about 5x slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fleetwatch.frames._crc16",
            sources=["fleetwatch/frames/_crc16.c"],
            optional=True,
        )
    ]
)
