"""`fleetwatch demo`: the whole loop on this machine in about a minute (see fleetwatch/demo.py)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import cast

import click
from rich.console import Console
from rich.live import Live

from fleetwatch.demo import BrokerChoice, DemoOptions, Story, run, status_line, summary, view
from fleetwatch.localservers import ServerError

INTERRUPTED = 130


@click.command("demo")
@click.option("--devices", default=200, show_default=True, help="Simulated devices (at least 20).")
@click.option("--duration", default=60.0, show_default=True, help="Real seconds to run (windows = duration / pace).")
@click.option("--pace", default=1.0, show_default=True, help="Real seconds per simulated hour-long window.")
@click.option("--seed", default=1, show_default=True, help="Seed of the fleet, the drift and the canary draw.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the store, state and logs in DIR (new or empty), with a fleetwatch.toml for `fleetwatch report`, "
    "`alerts list` and `rollout status` (default: a temporary directory, removed at the end).",
)
@click.option(
    "--store",
    metavar="URL",
    help="Store URL (default: the embedded store in the work directory); an InfluxDB such as "
    "influxdb://127.0.0.1:8086/fleet (made with `fleetwatch influx setup`) lets Grafana show the run.",
)
@click.option(
    "--broker",
    type=click.Choice(["auto", "mosquitto", "embedded"]),
    default="auto",
    show_default=True,
    help="auto: a local mosquitto when installed, else the embedded amqtt broker (pip install 'fleetwatch[demo]').",
)
@click.option(
    "--no-live", is_flag=True, help="Plain log lines instead of the live view (automatic when not on a terminal)."
)
def command(
    devices: int,
    duration: float,
    pace: float,
    seed: int,
    keep: Path | None,
    store: str | None,
    broker: str,
    no_live: bool,
) -> None:
    """Run a simulated fleet through the real pipeline: MQTT ingest, drift alert to a webhook, canary rollback.

    A broker, the daemon, a webhook receiver and the simulated devices all run locally on 127.0.0.1.
    Devices at site=north drift at a sixth of the run; at a third a worse model starts on a canary group,
    is judged against control and rolled back, and the devices revert. Ends with a summary.

    Exit status: 0 when the story completed, 1 when it did not finish in time (or could not start),
    130 after Ctrl-C (everything is stopped cleanly and the summary printed first).
    """
    options = DemoOptions(
        devices=devices,
        duration_s=duration,
        pace_s=pace,
        seed=seed,
        keep=keep,
        broker=cast(BrokerChoice, broker),
        store=store,
    )
    try:
        options.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal)
    console = Console()
    try:
        if no_live or not console.is_terminal:
            story = run(options, stop, click.echo, on_window=_every_tenth)
        else:
            story = _live(options, stop, console)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    for line in summary(story):
        click.echo(line)
    if story.interrupted:
        sys.exit(INTERRUPTED)
    if not story.complete:
        sys.exit(1)


def _live(options: DemoOptions, stop: threading.Event, console: Console) -> Story:
    shown: list[Story] = []
    with Live(console=console, refresh_per_second=4, get_renderable=lambda: view(shown[0]) if shown else "starting"):
        return run(options, stop, lambda line: None, on_start=shown.append)


def _every_tenth(story: Story) -> None:
    if story.window % 10 == 0:
        click.echo(status_line(story))
