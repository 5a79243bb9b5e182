"""The `fleetwatch` command. Thin: each subcommand parses its options and calls one function.

Every public module in this package defines `command` (a click command or group); `main` picks them all
up, so a new subcommand is one new module here. Modules starting with `_` hold shared helpers.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from fleetwatch import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fleetwatch")
def main() -> None:
    """Fleet telemetry and model-drift monitoring for microcontrollers that run TinyML models."""


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        main.add_command(module.command)


_register()
