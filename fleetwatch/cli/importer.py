"""`fleetwatch import`: load Notehub event exports or captures through the ingest pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fleetwatch.cli._common import config_option, settings_from

if TYPE_CHECKING:
    from fleetwatch.pipeline import Message, Report


def progress_bar() -> Progress:
    """The progress bar of long imports and backfills (on stderr; silent when stderr is not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def run_ingest(
    config_path: Path | None,
    items: Iterator[Message | tuple[str, bytes]],
    transport: str,
    total: int | None,
    label: str,
) -> Report:
    """Build the pipeline from the config, push `items` through it with a progress bar, close."""
    from fleetwatch.daemon import build_pipeline
    from fleetwatch.metrics import Metrics
    from fleetwatch.pipeline import ingest_all
    from fleetwatch.sinks import open_store
    from fleetwatch.state import StateDB

    settings = settings_from(config_path)
    store = open_store(settings.store_url)
    pipeline = build_pipeline(settings, StateDB(settings.state_path), store, Metrics())
    try:
        with progress_bar() as progress:
            task = progress.add_task(label, total=total)
            report = ingest_all(pipeline, items, transport, progress=lambda n: progress.advance(task, n))
        if not pipeline.spool.is_empty():
            pipeline.replay_spool()
    finally:
        store.close()
    return report


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--notehub-events", "kind", flag_value="notehub", help="FILES are Notehub event exports (JSON array or lines)."
)
@click.option(
    "--capture", "kind", flag_value="capture", help='FILES are JSON lines {"device","received","payload"(base64)}.'
)
@config_option
def command(files: tuple[Path, ...], kind: str | None, config_path: Path | None) -> None:
    """Import frames from files through the same pipeline as live ingest (decode, store, quarantine).

    Prints a JSON summary: messages, frames stored/spooled, quarantined, rejects by reason.
    """
    if kind is None:
        raise click.UsageError("say what the files are: --notehub-events or --capture")
    from fleetwatch.sources.files import read_messages

    device_field = settings_from(config_path).notehub.device_field

    def items() -> Iterator[Message | tuple[str, bytes]]:
        for path in files:
            yield from read_messages(path, kind, device_field)

    total = sum(1 for path in files for _ in read_messages(path, kind, device_field))
    report = run_ingest(config_path, items(), f"import:{kind}", total, "importing")
    click.echo(json.dumps(asdict(report)))
