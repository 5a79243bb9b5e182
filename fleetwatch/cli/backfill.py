"""`fleetwatch backfill notehub`: page the Notehub events API and ingest what the routes missed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.importer import run_ingest

if TYPE_CHECKING:
    from fleetwatch.pipeline import Message


def parse_time(text: str) -> int:
    """Unix seconds, or an ISO 8601 date/time (UTC when no offset is given)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither Unix seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


@click.group("backfill")
def command() -> None:
    """Fetch history from upstream services into the store."""


@command.command("notehub")
@click.option("--project", help="Notehub project UID (app:...); default notehub.project from the config.")
@click.option("--since", required=True, help="Unix seconds or ISO 8601 time (events uploaded since).")
@click.option("--files", "notefiles", default=None, help="Only these Notefiles, e.g. telemetry.qo.")
@click.option("--page-size", default=500, show_default=True)
@config_option
def notehub(project: str | None, since: str, notefiles: str | None, page_size: int, config_path: Path | None) -> None:
    """Page GET /v1/projects/{project}/events (token from notehub.token) and ingest every event's payload."""
    from fleetwatch.sources.notehub import EventError, NotehubClient, event_message

    settings = settings_from(config_path)
    project = project or settings.notehub.project
    if not project:
        raise click.UsageError("no project: pass --project or set notehub.project")
    if settings.notehub.token is None:
        raise click.UsageError("no API token: set notehub.token (or notehub.token_file / FLEETWATCH_NOTEHUB__TOKEN)")
    client = NotehubClient(settings.notehub.api_url, settings.notehub.token.get_secret_value())

    def items() -> Iterator[Message | tuple[str, bytes]]:
        for event in client.events(project, parse_time(since), page_size=page_size, files=notefiles):
            try:
                yield event_message(event, settings.notehub.device_field, "notehub:backfill")
            except EventError as exc:
                yield (exc.reason, json.dumps(event).encode())

    report = run_ingest(config_path, items(), "notehub:backfill", None, "backfilling")
    click.echo(json.dumps(asdict(report)))
