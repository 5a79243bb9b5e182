"""Build hook for the optional C routines of the frame decoder (bulk CRC, reason codes, message join).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
package installs and falls back to numpy and binascii.crc_hqx per frame (the same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fleetwatch.frames._native",
            sources=["fleetwatch/frames/_native.c"],
            optional=True,
        )
    ]
)
