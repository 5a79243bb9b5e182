"""`fleetwatch quarantine list | show | replay | purge`: frames that were rejected, kept with their reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.frames import decode_messages
from fleetwatch.quarantine import Quarantine
from fleetwatch.state import StateDB

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """ "90s", "15m", "6h", "30d" -> seconds."""
    unit = text[-1:]
    if unit not in DURATION_UNITS or not text[:-1].isdigit():
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 6h or 30d")
    return int(text[:-1]) * DURATION_UNITS[unit]


@click.group("quarantine")
def command() -> None:
    """Rejected frames: list them, look at one, replay them after a fix, purge old ones."""


@command.command("list")
@click.option("--reason", help="Only this reason (e.g. bad_crc, invariant:conf_hist_sum).")
@click.option("--device", help="Only this device.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@config_option
def list_entries(reason: str | None, device: str | None, limit: int, as_json: bool, config_path: Path | None) -> None:
    """Counts by reason, then the entries (oldest first)."""
    quarantine = Quarantine(StateDB(settings_from(config_path).state_path))
    entries = quarantine.list(reason=reason, device=device, limit=limit)
    if as_json:
        for e in entries:
            click.echo(
                json.dumps(
                    {
                        "id": e.id,
                        "quarantined_at": e.quarantined_at,
                        "received": e.received,
                        "device": e.device,
                        "transport": e.transport,
                        "reason": e.reason,
                        "bytes": len(e.raw),
                    }
                )
            )
        return
    for name, count in quarantine.counts().items():
        click.echo(f"{count:>8}  {name}")
    for e in entries:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.quarantined_at))
        click.echo(f"#{e.id:<6} {when} {e.device:<20} {e.transport:<16} {len(e.raw):>5} B  {e.reason}")


@command.command("show")
@click.argument("entry_id", type=int)
@config_option
def show(entry_id: int, config_path: Path | None) -> None:
    """One entry: metadata, hex of the raw bytes, and what decoding it says now (as a snippet for
    `snippet:...` entries)."""
    settings = settings_from(config_path)
    entry = Quarantine(StateDB(settings.state_path)).get(entry_id)
    if entry is None:
        raise click.ClickException(f"no quarantine entry #{entry_id}")
    from fleetwatch.frames import Registry
    from fleetwatch.frames.snippet import Snippet, decode_snippet
    from fleetwatch.snippets.ingest import QUARANTINE_PREFIX

    if entry.reason.startswith(QUARANTINE_PREFIX):
        snippet = decode_snippet(entry.raw, entry.received)
        if isinstance(snippet, Snippet):
            shape = {"channels": snippet.channels, "samples": snippet.count, "interval_ms": snippet.interval_ms}
            now = [{"ok": True, "snippet": shape | {"start_time": snippet.start_time, "reason": snippet.reason}}]
        else:
            now = [{"ok": False, "reason": QUARANTINE_PREFIX + snippet.reason, "detail": snippet.detail}]
    else:
        result = decode_messages(
            [entry.raw], [entry.device], [entry.received], Registry.with_dirs(settings.frames.schema_dirs)
        )
        now = [{"ok": True, "frame": r} for b in result.batches.values() for r in b.records()]
        now += [{"ok": False, "reason": r.reason} for r in result.rejects]
    click.echo(
        json.dumps(
            {
                "id": entry.id,
                "device": entry.device,
                "transport": entry.transport,
                "received": entry.received,
                "reason": entry.reason,
                "offset": entry.byte_offset,
                "hex": entry.raw.hex(),
                "decoded_now": now,
            },
            indent=2,
        )
    )


@command.command("replay")
@click.option("--reason", help="Replay entries with this reason.")
@click.option("--id", "ids", type=int, multiple=True, help="Replay this entry (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry.")
@config_option
def replay(reason: str | None, ids: tuple[int, ...], replay_all: bool, config_path: Path | None) -> None:
    """Decode entries again with today's schemas and store the ones that are now valid (snippet entries,
    reason `snippet:...`, go to the snippet dataset)."""
    if not (reason or ids or replay_all):
        raise click.UsageError("say which entries: --reason R, --id N or --all")
    from fleetwatch.daemon import build_pipeline
    from fleetwatch.metrics import Metrics
    from fleetwatch.sinks import open_store
    from fleetwatch.sinks.base import SinkUnavailable
    from fleetwatch.snippets.ingest import QUARANTINE_PREFIX, SnippetIngest
    from fleetwatch.snippets.store import store_from_settings

    settings = settings_from(config_path)
    db = StateDB(settings.state_path)
    store = open_store(settings.store_url)
    pipeline = build_pipeline(settings, db, store, Metrics())
    quarantine = pipeline.quarantine
    entries = [e for i in ids if (e := quarantine.get(i))] if ids else quarantine.list(reason=reason, limit=10**9)
    snippets = [e for e in entries if e.reason.startswith(QUARANTINE_PREFIX)]
    frames = [e for e in entries if not e.reason.startswith(QUARANTINE_PREFIX)]
    try:
        stored, still_bad = pipeline.replay_quarantined(frames)
    except SinkUnavailable as exc:
        raise click.ClickException(f"store unavailable ({exc}); nothing was removed, try again later") from None
    finally:
        store.close()
    if snippets:
        ingest = SnippetIngest(store_from_settings(settings, db), quarantine, pipeline.metrics)
        snippets_stored, snippets_bad = ingest.replay(snippets)
        stored += snippets_stored
        still_bad |= snippets_bad
    click.echo(
        json.dumps(
            {"replayed": len(stored), "still_rejected": len(still_bad), "reasons": sorted(set(still_bad.values()))}
        )
    )


@command.command("purge")
@click.option("--older-than", required=True, help="Age like 30d or 12h.")
@config_option
def purge(older_than: str, config_path: Path | None) -> None:
    """Delete entries quarantined longer ago than the given age."""
    removed = Quarantine(StateDB(settings_from(config_path).state_path)).purge(time.time() - parse_duration(older_than))
    click.echo(json.dumps({"purged": removed}))
