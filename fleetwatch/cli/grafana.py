"""`fleetwatch grafana build|push`: dashboards as code into files, or into a running Grafana."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("grafana")
def command() -> None:
    """Grafana dashboards, provisioning files and alert rules."""


@command.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dashboards"),
    show_default=True,
    help="Where to write the dashboard JSON and provisioning/ (the repo's dashboards/).",
)
def build(out: Path) -> None:
    """Regenerate the dashboard JSON and the provisioning files (data source, dashboards, alerting)."""
    from fleetwatch.grafana.provisioning import build as build_files

    for path in build_files(out):
        click.echo(path)


@command.command("push")
@click.option("--url", required=True, envvar="GRAFANA_URL", help="Grafana's URL (env GRAFANA_URL); user:pass@ allowed.")
@click.option("--token", default=None, envvar="GRAFANA_TOKEN", help="Service account token (env GRAFANA_TOKEN).")
@click.option("--folder", default="fleetwatch", show_default=True, help="Folder title for dashboards and alert rules.")
@click.option(
    "--datasource-url",
    default=None,
    envvar="FLEETWATCH_STORE__URL",
    help="The InfluxDB store URL as Grafana should reach it: influxdb://[user:password@]host:port/db[?token=] "
    "(env FLEETWATCH_STORE__URL). A token makes it the 2.x/3.x variant (DBRP-mapped database). Without it the "
    "data source is left as it is (provisioned from a file, say).",
)
@click.option(
    "--webhook-url",
    default=None,
    envvar="FLEETWATCH_ALERT_WEBHOOK_URL",
    help="Create the webhook contact point posting alerts here (env FLEETWATCH_ALERT_WEBHOOK_URL).",
)
@click.option("--with-policy", is_flag=True, help="Also replace the org's notification policy tree (to the webhook).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per request.")
def push(
    url: str,
    token: str | None,
    folder: str,
    datasource_url: str | None,
    webhook_url: str | None,
    with_policy: bool,
    timeout: float,
) -> None:
    """Create or update the data source, folder, dashboards, alert rules and contact point (needs the extra
    fleetwatch[grafana]). Safe to run again."""
    from fleetwatch.grafana.push import PushError, PushTarget, datasource_from_store_url
    from fleetwatch.grafana.push import push as push_all

    try:
        datasource = datasource_from_store_url(datasource_url) if datasource_url else None
        done = push_all(PushTarget(url, token, folder, timeout), datasource, webhook_url, with_policy)
    except (PushError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in done:
        click.echo(line)
