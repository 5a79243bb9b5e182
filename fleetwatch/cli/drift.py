"""`fleetwatch drift check | backtest`: evaluate windows against the baselines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.backfill import parse_time

if TYPE_CHECKING:
    from fleetwatch.drift.runner import DriftRunner
    from fleetwatch.findings import Finding
    from fleetwatch.sinks.base import Store


@click.group("drift")
def command() -> None:
    """Drift checks: once now, or replayed over history to tune thresholds."""


def _runner(config_path: Path | None) -> tuple[DriftRunner, Store]:
    from fleetwatch.drift.runner import runner_from_settings
    from fleetwatch.sinks import open_store

    settings = settings_from(config_path)
    store = open_store(settings.store_url)
    return runner_from_settings(settings, store), store


def _event(finding: Finding) -> dict:
    return {"at": finding.window_end, **finding.to_json()}


@command.command("check")
@click.option("--at", "at_text", help="End of the window to evaluate (Unix s or ISO time; default: the last one).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding.")
@config_option
def check(at_text: str | None, as_json: bool, config_path: Path | None) -> None:
    """Evaluate one window now: findings are printed, written to the store and the engine state saved."""
    runner, store = _runner(config_path)
    try:
        at = parse_time(at_text) if at_text else runner.window_end(int(time.time()))
        findings = runner.check(at)
    finally:
        store.close()
    for f in findings:
        if as_json:
            click.echo(json.dumps(_event(f)))
        else:
            click.echo(
                f"{f.severity:<8} {f.scope:<6} {f.key:<24} {f.signal:<14} effect {f.effect:+.3f} "
                f"({f.effect_name}) q {f.q:.2g}"
            )
    if not as_json:
        click.echo(f"{sum(f.severity != 'ok' for f in findings)} findings for the window ending {at}")


@command.command("backtest")
@click.option("--from", "start", required=True, help="Unix s or ISO time.")
@click.option("--to", "end", required=True, help="Unix s or ISO time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert event (default: a table).")
@config_option
def backtest(start: str, end: str, as_json: bool, config_path: Path | None) -> None:
    """Replay the schedule over stored history window by window and print every alert event.

    Each event has `at` (end of the evaluated window), `scope`, `key`, `signal`, `severity` and the
    statistics (statistic, p, q, effect). Nothing is written. Use it to tune thresholds.
    """
    runner, store = _runner(config_path)
    count = 0
    try:
        for finding in runner.backtest(parse_time(start), parse_time(end)):
            count += 1
            event = _event(finding)
            if as_json:
                click.echo(json.dumps(event))
            else:
                click.echo(f"{event['at']} {finding.severity:<8} {finding.scope:<6} {finding.key:<24} {finding.signal}")
    finally:
        store.close()
    if not as_json:
        click.echo(f"{count} alert events")
