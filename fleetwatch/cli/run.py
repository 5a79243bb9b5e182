"""`fleetwatch run`: the service, in the foreground (systemd runs it as a notify service)."""

from __future__ import annotations

from pathlib import Path

import click

from fleetwatch.cli._common import config_option, settings_from


@click.command("run")
@config_option
def command(config_path: Path | None) -> None:
    """Run the daemon: ingest (MQTT, Notehub routes), store, schedule jobs; SIGTERM drains and exits 0."""
    from fleetwatch.daemon import Daemon
    from fleetwatch.logs import setup_logging

    settings = settings_from(config_path)
    setup_logging(settings.log.level, settings.log.format)
    Daemon(settings).run_forever()
