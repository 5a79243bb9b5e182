"""`fleetwatch influx setup`: create the database and retention (1.x), or bucket and DBRP mapping (2.x)."""

from __future__ import annotations

import click


@click.group("influx")
def command() -> None:
    """InfluxDB administration."""


@command.command("setup")
@click.option("--url", required=True, help="The store URL: influxdb://[user:password@]host:port/database[?rp=...]")
@click.option("--retention", default=None, help="How long data is kept: e.g. 90d, 12h, 4w, or INF.")
@click.option("--v2-url", default=None, help="InfluxDB 2.x/3.x management API, e.g. http://host:8086 (2.x path).")
@click.option("--org", default=None, help="2.x organization name.")
@click.option(
    "--token", default=None, envvar="FLEETWATCH_INFLUX_TOKEN", help="2.x token (env FLEETWATCH_INFLUX_TOKEN)."
)
@click.option("--bucket", default=None, help="2.x bucket name (default: the database name).")
def setup(
    url: str, retention: str | None, v2_url: str | None, org: str | None, token: str | None, bucket: str | None
) -> None:
    """Create what the store writes into; safe to run again.

    InfluxDB 1.x (default): CREATE DATABASE, and with --retention a DEFAULT retention policy (named by the
    URL's rp, else `fleetwatch`).

    InfluxDB 2.x/3.x (--v2-url, --org and --token): create the bucket with --retention as its expiry and
    the DBRP mapping from the URL's database (and rp, else `autogen`) to it, so fleetwatch can write through
    the v1 API with `?token=` in the store URL. This path has been tested against a stand-in for the 2.x
    API, not against a real 2.x server.
    """
    from influxdb_client.rest import ApiException
    from urllib3.exceptions import HTTPError

    from fleetwatch.sinks.base import SinkRejected, SinkUnavailable
    from fleetwatch.sinks.influx_setup import V2Target, setup_v1, setup_v2

    v2_options = (v2_url, org, token)
    if any(v2_options) and not all(v2_options):
        raise click.UsageError("the 2.x path needs all of --v2-url, --org and --token")
    try:
        if v2_url and org and token:
            summary = setup_v2(url, V2Target(v2_url, org, token), retention, bucket)
        else:
            summary = setup_v1(url, retention)
    except (ValueError, SinkRejected, SinkUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except (ApiException, HTTPError) as exc:
        raise click.ClickException(f"InfluxDB 2.x setup failed: {exc}") from None
    click.echo(summary)
