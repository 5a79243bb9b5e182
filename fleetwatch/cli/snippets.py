"""`fleetwatch snippets list | export | forward | request`: the snippet dataset, Edge Impulse, devices.

Works on the state database and the dataset directory of the configuration (`--config`), so it runs
beside the daemon. Filters shared by list, export and forward: `--device` (repeatable), `--cohort`
(`site=north` from the inventory, or `model_id=<id>`), `--model-id`, `--reason`, `--since`, `--until`.
docs/snippets.md has examples.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.backfill import parse_time
from fleetwatch.config import Settings
from fleetwatch.state import StateDB

if TYPE_CHECKING:
    from fleetwatch.snippets.edgeimpulse import Forwarder
    from fleetwatch.snippets.store import Query, Record, SnippetStore

F = TypeVar("F", bound=Callable[..., object])


def filter_options(func: F) -> F:
    """The options that choose snippets (list, export, forward)."""
    options = [
        click.option("--device", "devices", multiple=True, help="Only this device (repeatable)."),
        click.option("--cohort", help="Only this cohort: an inventory tag=value (site=north) or model_id=<id>."),
        click.option("--model-id", type=int, help="Only snippets of this model (CRC-32 of the model blob)."),
        click.option("--reason", help="Only this capture reason (anomaly, low_confidence, requested, ...)."),
        click.option("--since", help="Only snippets from this time on (Unix seconds or ISO 8601, UTC)."),
        click.option("--until", help="Only snippets before this time (Unix seconds or ISO 8601, UTC)."),
        click.option("--limit", type=int, help="At most this many snippets (oldest first)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("snippets")
def command() -> None:
    """Snippets: raw sensor recordings from devices, kept as a dataset and forwarded to Edge Impulse."""


@command.command("list")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@config_option
def list_snippets(as_json: bool, config_path: Path | None, **filters: Any) -> None:
    """The snippets in the dataset, oldest first."""
    settings = settings_from(config_path)
    records = _store(settings).query(_query(settings, filters))
    if as_json:
        for record in records:
            click.echo(json.dumps(_record_json(record, settings)))
        return
    click.echo(f"{len(records)} snippets in {settings.snippets_dir}")
    for r in records:
        forwarded = f"forwarded:{r.forward_category}" if r.forwarded_at else ("failed" if r.forward_error else "")
        click.echo(
            f"#{r.id:<6} {_iso(r.time)} {r.device:<20} {r.reason:<14} {r.label or '-':<12} model {r.model_id:<10} "
            f"{r.samples}x{r.channels} @{r.interval_ms:g}ms {forwarded}".rstrip()
        )


@command.command("export")
@filter_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("snippets-export"),
    show_default=True,
    help="Directory to write into (created).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv"]),
    default="json",
    show_default=True,
    help="Edge Impulse data acquisition JSON (unsigned unless snippets.hmac_key is set) or Edge Impulse CSV.",
)
@config_option
def export(out: Path, fmt: str, config_path: Path | None, **filters: Any) -> None:
    """Write the chosen snippets as Edge Impulse files, one per snippet, plus manifest.jsonl (metadata)."""
    from fleetwatch.frames.snippet import Snippet, decode_snippet
    from fleetwatch.snippets.edgeimpulse import csv_document, file_name

    settings = settings_from(config_path)
    store = _store(settings)
    records = store.query(_query(settings, filters))
    forwarder = _forwarder(settings, store)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for record in records:
            name = file_name(record, fmt)
            if fmt == "json":
                (out / name).write_bytes(forwarder.upload(record).body)
            else:
                snippet = decode_snippet(store.read(record))
                if not isinstance(snippet, Snippet):
                    raise click.ClickException(f"snippet #{record.id} no longer decodes: {snippet.reason}")
                (out / name).write_text(csv_document(snippet, settings.snippets.sensors), encoding="utf-8")
            manifest.write(json.dumps(_record_json(record, settings) | {"file": name}) + "\n")
    click.echo(json.dumps({"exported": len(records), "out": str(out), "format": fmt}))


@command.command("forward")
@filter_options
@click.option("--dry-run", is_flag=True, help="Print what would be sent (API key masked); send nothing.")
@click.option("--label", help="Edge Impulse label (default: the snippet's label, else snippets.default_label).")
@click.option(
    "--category",
    type=click.Choice(["training", "testing"]),
    help="Edge Impulse dataset category (default: snippets.category).",
)
@config_option
def forward(dry_run: bool, label: str | None, category: str | None, config_path: Path | None, **filters: Any) -> None:
    """Send snippets to Edge Impulse's ingestion API; snippets forwarded before are skipped."""
    settings = settings_from(config_path)
    store = _store(settings)
    records = store.query(_query(settings, filters))
    try:
        results = _forwarder(settings, store).forward(records, label, category, dry_run)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for result in results:
        click.echo(json.dumps({"id": result.id, "status": result.status, "detail": result.detail}))
    counts = {s: sum(r.status == s for r in results) for s in ("sent", "skipped", "failed", "dry_run")}
    click.echo(json.dumps({k: v for k, v in counts.items() if v or k != "dry_run"}))
    if counts["failed"]:
        sys.exit(1)


@command.command("request")
@click.option("--devices", help="Comma-separated device ids.")
@click.option(
    "--devices-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File with one device id per line (# comments allowed).",
)
@click.option("--count", type=click.IntRange(1, 100), help="Snippets per device (default: snippets.request_count).")
@click.option("--reason", default="manual", show_default=True, help="Why (sent to the device, e.g. drift, audit).")
@config_option
def request(
    devices: str | None, devices_file: Path | None, count: int | None, reason: str, config_path: Path | None
) -> None:
    """Ask devices to capture snippets (MQTT command or Notehub environment variable)."""
    from fleetwatch.snippets.capture import SnippetRequester, commander_for

    names = [d.strip() for d in (devices or "").split(",") if d.strip()]
    if devices_file is not None:
        lines = devices_file.read_text(encoding="utf-8").splitlines()
        names += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    if not names:
        raise click.UsageError("say which devices: --devices D1,D2 or --devices-file FILE")
    settings = settings_from(config_path)
    config = settings.snippets
    try:
        requester = SnippetRequester(commander_for(settings), config.request_count, config.request_ttl_s)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    results = requester.request(list(dict.fromkeys(names)), reason, count)
    for device, error in results.items():
        click.echo(json.dumps({"device": device, "sent": error is None, "error": error}))
    if any(results.values()):
        sys.exit(1)


def _store(settings: Settings) -> SnippetStore:
    from fleetwatch.snippets.store import store_from_settings

    return store_from_settings(settings, StateDB(settings.state_path))


def _forwarder(settings: Settings, store: SnippetStore) -> Forwarder:
    from fleetwatch.snippets.edgeimpulse import Forwarder

    return Forwarder(settings.snippets, store)


def _query(settings: Settings, filters: dict[str, Any]) -> Query:
    from fleetwatch.snippets.capture import cohort_devices, cohort_model
    from fleetwatch.snippets.store import Query

    devices: list[str] | None = list(filters["devices"]) or None
    model_id = filters["model_id"]
    cohort = filters["cohort"]
    if cohort:
        inventory = None
        if settings.fleet.inventory is not None:
            from fleetwatch.drift.scopes import read_inventory

            inventory = read_inventory(settings.fleet.inventory)
        members = cohort_devices(cohort, inventory)
        if members is not None and inventory is None:
            raise click.UsageError(f"--cohort {cohort} needs fleet.inventory (a CSV of devices and their tags)")
        if members is not None:
            devices = [d for d in members if devices is None or d in devices]
        model_id = model_id if model_id is not None else cohort_model(cohort)
    return Query(
        devices=devices,
        since=parse_time(filters["since"]) if filters["since"] else None,
        until=parse_time(filters["until"]) if filters["until"] else None,
        model_id=model_id,
        reason=filters["reason"],
        limit=filters["limit"],
    )


def _record_json(record: Record, settings: Settings) -> dict[str, Any]:
    return {
        "id": record.id,
        "device": record.device,
        "time": record.time,
        "received": record.received,
        "model_id": record.model_id,
        "reason": record.reason,
        "label": record.label,
        "channels": record.channels,
        "samples": record.samples,
        "interval_ms": record.interval_ms,
        "checksum": record.checksum,
        "bytes": record.bytes,
        "path": str(settings.snippets_dir / record.path),
        "transport": record.transport,
        "forwarded_at": record.forwarded_at,
        "forward_category": record.forward_category,
        "forward_error": record.forward_error,
    }


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
