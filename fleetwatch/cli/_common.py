"""Options and helpers shared by the subcommands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from fleetwatch.config import ConfigError, Settings, load_config

F = TypeVar("F", bound=Callable[..., object])


def config_option(func: F) -> F:
    """`-c/--config PATH` (env FLEETWATCH_CONFIG): the TOML file; FLEETWATCH_* variables override it."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar="FLEETWATCH_CONFIG",
        help="TOML config file (env FLEETWATCH_CONFIG); FLEETWATCH_* variables override its values.",
    )(func)


def settings_from(config_path: Path | None) -> Settings:
    """Load the configuration or exit 2 with the key at fault and what is expected."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error:\n{exc}") from None
