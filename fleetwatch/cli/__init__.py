"""The `fleetwatch` command. Thin: each subcommand parses its options and calls one function.

Every public module in this package defines `command` (a click command or group), listed in `COMMANDS`
with the one line `fleetwatch --help` shows for it. A subcommand's module is imported only when that
subcommand runs, so `fleetwatch config check` does not pay for scipy, DuckDB or the demo (a test checks
that `COMMANDS` matches the modules). Modules starting with `_` hold shared helpers.
"""

from __future__ import annotations

import importlib

import click

from fleetwatch import __version__

#: command name -> (module in this package, the short help of its `command`)
COMMANDS: dict[str, tuple[str, str]] = {
    "alerts": ("alerts", "Open alerts, silences and undeliverable notifications (dead letters)."),
    "backfill": ("backfill", "Fetch history from upstream services into the store."),
    "baseline": ("baseline", "Baselines: what healthy telemetry of a model looks like."),
    "config": ("config", "Inspect the configuration."),
    "decode": ("decode", "Decode telemetry frames."),
    "demo": ("demo", "Run a simulated fleet through the real pipeline: MQTT ingest, drift alert to..."),
    "drift": ("drift", "Drift checks: once now, or replayed over history to tune thresholds."),
    "grafana": ("grafana", "Grafana dashboards, provisioning files and alert rules."),
    "import": ("importer", "Import frames from files through the same pipeline as live ingest (decode,..."),
    "influx": ("influx", "InfluxDB administration."),
    "quarantine": ("quarantine", "Rejected frames: list them, look at one, replay them after a fix, purge old..."),
    "report": ("report", "Plots of each signal against its baseline band with the findings marked, as..."),
    "rollout": ("rollout", "Staged canary rollouts of firmware or models, judged against a control group."),
    "run": ("run", "Run the daemon: ingest (MQTT, Notehub routes), store, schedule jobs; SIGTERM..."),
    "schema": ("schema", "Frame body schemas: list them, show one, generate the firmware's C header."),
    "snippets": ("snippets", "Snippets: raw sensor recordings from devices, kept as a dataset and forwarded..."),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module when the subcommand is used, not to list it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return importlib.import_module(f"{__name__}.{COMMANDS[cmd_name][0]}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fleetwatch")
def main() -> None:
    """Fleet telemetry and model-drift monitoring for microcontrollers that run TinyML models."""
