"""`fleetwatch config check`: validate the configuration and print it, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.config import masked


@click.group("config")
def command() -> None:
    """Inspect the configuration."""


@command.command("check")
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config file and FLEETWATCH_* variables; print the effective config (secrets masked).

    Exits 1 naming the first bad key and what it expects.
    """
    click.echo(json.dumps(masked(settings_from(config_path)), indent=2))


@command.command("example")
def example() -> None:
    """Print an example TOML with every key, commented, at its default (deploy/fleetwatch.toml)."""
    from fleetwatch.config import example_toml

    click.echo(example_toml(), nl=False)


@command.command("reference")
def reference() -> None:
    """Print the configuration reference as Markdown (docs/configuration.md)."""
    from fleetwatch.config import reference_markdown

    click.echo(reference_markdown(), nl=False)
