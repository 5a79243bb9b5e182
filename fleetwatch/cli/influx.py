"""`fleetwatch influx setup`: create the database and its retention policy on InfluxDB 1.x."""

from __future__ import annotations

import click


@click.group("influx")
def command() -> None:
    """InfluxDB administration."""


@command.command("setup")
@click.option("--url", required=True, help="influxdb://[user:password@]host:port/database")
@click.option("--retention", default=None, help="Default retention policy duration, e.g. 90d (1.x InfluxQL).")
def setup(url: str, retention: str | None) -> None:
    """CREATE DATABASE (and a default retention policy) on InfluxDB 1.x; idempotent.

    InfluxDB 2.x/3.x: create the bucket and a DBRP mapping for `database` with the influx CLI
    (`influx bucket create`, `influx v1 dbrp create`); fleetwatch then writes through the v1 API with a
    token (`?token=` in the URL). See docs/operations.md.
    """
    from fleetwatch.sinks.base import SinkUnavailable
    from fleetwatch.sinks.influx import InfluxStore

    store = InfluxStore(url)
    try:
        store.ensure_database(retention)
    except SinkUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"database {store.database} ready" + (f" (retention {retention})" if retention else ""))
