"""`fleetwatch alerts list | silence | unsilence | deadletters | retry`: open alerts, silences, dead letters.

Works on the state database directly (`--state PATH`, default: the configuration's `state.path`, i.e.
env FLEETWATCH_STATE__PATH, else <data dir>/state.db), so it runs beside the daemon (SQLite WAL lets it
read while the daemon writes). `-c/--config` is the daemon's config file: its `[alerts]` section gives the
delivery deadline of `retry`.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fleetwatch.actions.alertdb import AlertDB
from fleetwatch.actions.alerts import Silence
from fleetwatch.actions.webhooks import Outbox, OutboxMessage
from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.quarantine import parse_duration
from fleetwatch.state import StateDB

F = TypeVar("F", bound=Callable[..., object])


def state_option(func: F) -> F:
    """`--state PATH`: the state database; and `-c/--config`, the configuration it defaults from."""
    return config_option(
        click.option(
            "--state",
            "state_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="State database (default: state.path of the configuration: env FLEETWATCH_STATE__PATH, "
            "else <data dir>/state.db).",
        )(func)
    )


def json_option(func: F) -> F:
    """`--json`: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


@click.group("alerts")
def command() -> None:
    """Open alerts, silences and undeliverable notifications (dead letters)."""


@command.command("list")
@click.option("--limit", default=50, show_default=True, help="Dead letters to show.")
@state_option
@json_option
def list_all(limit: int, state_path: Path | None, as_json: bool, config_path: Path | None) -> None:
    """Open alerts, silences in force or scheduled, and dead letters."""
    db = _open(state_path, config_path)
    now = time.time()
    alerts = [a for a in AlertDB(db).active() if a.status == "firing"]
    silences = AlertDB(db).silences(now)
    dead = Outbox(db).list("dead", limit)
    if as_json:
        document = {
            "alerts": [
                {
                    "id": a.id,
                    "scope": a.scope,
                    "key": a.key,
                    "signal": a.signal,
                    "severity": a.severity,
                    "group": a.group,
                    "opened_at": a.opened_at,
                    "notified_severity": a.notified_severity,
                    "notified_at": a.notified_at,
                }
                for a in alerts
            ],
            "silences": [_silence_json(s) for s in silences],
            "deadletters": [_message_json(m) for m in dead],
        }
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"Open alerts: {len(alerts)}")
    for a in alerts:
        notified = f"notified {a.notified_severity} {_iso(a.notified_at)}" if a.notified_at else "not notified yet"
        click.echo(
            f"  {a.id}  {a.severity:<8} {a.scope:<6} {a.key:<20} {a.signal:<20} {a.group:<16} "
            f"since {_iso(a.opened_at)}  {notified}"
        )
    click.echo(f"Silences: {len(silences)}")
    for s in silences:
        click.echo(f"  {_silence_line(s)}")
    click.echo(f"Dead letters: {len(dead)}")
    for m in dead:
        click.echo(f"  {_message_line(m)}")


@command.command("silence")
@click.option("--scope", default="*", show_default=True, help="Glob over the scope (device, cohort, fleet).")
@click.option("--key", default="*", show_default=True, help="Glob over the device or cohort key (dev-00*).")
@click.option("--signal", default="*", show_default=True, help="Glob over the signal (input_mean_*).")
@click.option("--cohort", default="*", show_default=True, help="Glob over the alert's cohorts (site=north).")
@click.option("--for", "duration", required=True, help="How long, like 90m, 2h or 7d.")
@click.option("--reason", required=True, help="Why (shown in `alerts list`).")
@click.option("--by", "created_by", default=getpass.getuser, show_default="current user", help="Who.")
@state_option
def silence(
    scope: str,
    key: str,
    signal: str,
    cohort: str,
    duration: str,
    reason: str,
    created_by: str,
    state_path: Path | None,
    config_path: Path | None,
) -> None:
    """Mute notifications of matching alerts for a while (state is still tracked)."""
    if (scope, key, signal, cohort) == ("*", "*", "*", "*"):
        raise click.UsageError("say what to silence: --scope, --key, --signal or --cohort (use --key '*' for all)")
    created = AlertDB(_open(state_path, config_path)).add_silence(
        now=time.time(),
        duration_s=parse_duration(duration),
        reason=reason,
        scope=scope,
        key=key,
        signal=signal,
        cohort=cohort,
        created_by=created_by,
    )
    click.echo(_silence_line(created))


@command.command("unsilence")
@click.argument("silence_id", type=int)
@state_option
def unsilence(silence_id: int, state_path: Path | None, config_path: Path | None) -> None:
    """End a silence now."""
    if not AlertDB(_open(state_path, config_path)).end_silence(silence_id, time.time()):
        raise click.ClickException(f"no active silence #{silence_id}")
    click.echo(f"silence #{silence_id} ended")


@command.command("deadletters")
@click.option("--limit", default=50, show_default=True)
@state_option
@json_option
def deadletters(limit: int, state_path: Path | None, as_json: bool, config_path: Path | None) -> None:
    """Notifications that could not be delivered, newest first, with the last error."""
    dead = Outbox(_open(state_path, config_path)).list("dead", limit)
    if as_json:
        click.echo(json.dumps([_message_json(m) for m in dead], indent=2))
        return
    for m in dead:
        click.echo(_message_line(m))


@command.command("retry")
@click.argument("message_id", type=int)
@click.option("--deadline", help="New delivery deadline from now, like 6h (default: alerts.delivery.deadline_s).")
@state_option
def retry(message_id: int, deadline: str | None, state_path: Path | None, config_path: Path | None) -> None:
    """Queue a dead letter again (same idempotency key); the daemon's worker sends it."""
    settings = settings_from(config_path)
    deadline_s = parse_duration(deadline) if deadline else settings.alerts.delivery.deadline_s
    if not Outbox(_open(state_path, config_path)).retry(message_id, time.time(), deadline_s):
        raise click.ClickException(f"no dead letter #{message_id}")
    click.echo(f"#{message_id} queued again")


def _open(state_path: Path | None, config_path: Path | None) -> StateDB:
    path = state_path or settings_from(config_path).state_path
    if not path.exists():
        raise click.ClickException(f"no state database at {path} (pass --state or set FLEETWATCH_STATE__PATH)")
    return StateDB(path)


def _silence_line(s: Silence) -> str:
    when = "until" if s.starts_at <= time.time() else f"from {_iso(s.starts_at)} until"
    return (
        f"#{s.id} {when} {_iso(s.ends_at)}  scope={s.scope} key={s.key} signal={s.signal} cohort={s.cohort}"
        f"  {s.reason!r} by {s.created_by or '?'}"
    )


def _silence_json(s: Silence) -> dict[str, Any]:
    return {
        "id": s.id,
        "scope": s.scope,
        "key": s.key,
        "signal": s.signal,
        "cohort": s.cohort,
        "starts_at": s.starts_at,
        "ends_at": s.ends_at,
        "reason": s.reason,
        "created_by": s.created_by,
    }


def _message_line(m: OutboxMessage) -> str:
    return f"#{m.id} {_iso(m.created_at)} to {m.receiver} after {m.attempts} attempts: {m.title} -- {m.last_error}"


def _message_json(m: OutboxMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "receiver": m.receiver,
        "title": m.title,
        "created_at": m.created_at,
        "attempts": m.attempts,
        "last_status": m.last_status,
        "last_error": m.last_error,
        "idempotency_key": m.idempotency_key,
    }


def _iso(unix: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix)) if unix is not None else "-"
