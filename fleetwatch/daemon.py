"""The fleetwatch service: builds every part from one config, runs them, and stops them gracefully.

Start order: state database, store, pipeline worker, the ingest counters' writer, HTTP server, MQTT
(telemetry, and a second session for snippets when they are on), the alert delivery worker, the
scheduler. Scheduled jobs (on the holder of the scheduler lease only): `drift-check` after each window
(its findings go straight to the alert manager: decisions and queued notifications in one transaction,
then the delivery worker is woken), `alerts-tick` every ALERT_TICK_PERIOD_S (grouping windows,
reminders), `rollouts` after each window (the rollout controller's step, when a rollout has work),
`snippets-prune`. Every daemon, lease or not, writes its own ingest counters (`ingest`,
fleetwatch.ingestcounters) every `pipeline.counters_interval_s`. Stop order (SIGTERM/SIGINT): the
scheduler stops, the delivery worker stops after its request in flight (waiting at most 2 s), then MQTT
stops taking messages (those arriving stay unacknowledged and come again next session), the HTTP server
stops, the pipeline drains its queue (acks go out while the MQTT connection is still up), the last ingest
counters are written, then MQTT disconnects and the store closes. A second signal exits at once; nothing
acknowledged is lost either way, because acknowledgements follow durability.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

from waitress.server import create_server

from fleetwatch.actions.devices import Commander
from fleetwatch.actions.service import Actions
from fleetwatch.api import App
from fleetwatch.config import MqttConfig, Settings, mask_url
from fleetwatch.drift.runner import runner_from_settings
from fleetwatch.drift.scopes import read_inventory
from fleetwatch.frames import Registry
from fleetwatch.ingestcounters import IngestCounters
from fleetwatch.metrics import Metrics
from fleetwatch.pipeline import Pipeline
from fleetwatch.quarantine import Quarantine
from fleetwatch.scheduler import Jobs, Lease
from fleetwatch.sinks import open_store
from fleetwatch.sinks.base import SinkUnavailable, Store
from fleetwatch.snippets.ingest import SnippetIngest
from fleetwatch.snippets.store import store_from_settings
from fleetwatch.sources.mqtt import MqttSource
from fleetwatch.spool import Spool
from fleetwatch.state import StateDB

log = logging.getLogger(__name__)

#: How often the daemon prunes the snippet dataset when no snippet arrives (additions prune too).
SNIPPET_PRUNE_PERIOD_S = 3600
#: How often the daemon runs an alert round without findings (groups whose window passed, reminders).
ALERT_TICK_PERIOD_S = 10


def build_pipeline(settings: Settings, db: StateDB, store: Store, metrics: Metrics) -> Pipeline:
    """The ingest pipeline as the config describes it (the daemon's, and the import commands')."""
    p = settings.pipeline
    return Pipeline(
        store,
        Registry.with_dirs(settings.frames.schema_dirs),
        Quarantine(db),
        Spool(settings.spool_dir),
        metrics,
        queue_max=p.queue_max_messages,
        batch_max=p.batch_max_messages,
        batch_wait_s=p.batch_wait_s,
        replay_interval_s=p.replay_interval_s,
        spool_max_bytes=p.spool_max_bytes,
    )


def build_snippet_ingest(
    settings: Settings, db: StateDB, quarantine: Quarantine, metrics: Metrics
) -> SnippetIngest | None:
    """Snippet ingest into the configured dataset, or None when snippets are off."""
    if not settings.snippets.enabled:
        return None
    return SnippetIngest(store_from_settings(settings, db), quarantine, metrics)


def snippet_mqtt_config(settings: Settings) -> MqttConfig:
    """The [mqtt] settings for the snippet subscription: its own topic and its own persistent session."""
    return settings.mqtt.model_copy(
        update={"topic": settings.snippets.topic, "client_id": f"{settings.mqtt.client_id}-snippets"}
    )


class Daemon:
    """Every running part of fleetwatch, composed from `settings`.

    `clock`: None for the wall clock and the scheduler; a function (Unix s) for simulated time (the demo):
    the scheduler is not started and the caller runs the jobs (`drift.check`, `actions.tick_rollouts`).
    `commander` replaces the rollout commander `rollout.transport` names.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        clock: Callable[[], float] | None = None,
        commander: Commander | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.db = StateDB(settings.state_path)
        self.store = store or open_store(settings.store_url)
        self.pipeline = build_pipeline(settings, self.db, self.store, self.metrics)
        self.registry = self.pipeline.registry
        self.counters = IngestCounters(
            self.metrics, self.store, settings.mqtt.client_id, settings.pipeline.counters_interval_s, clock or time.time
        )
        self.quarantine = self.pipeline.quarantine
        self.mqtt = MqttSource(settings.mqtt, self.pipeline.submit) if settings.mqtt.url else None
        self.snippets = build_snippet_ingest(settings, self.db, self.quarantine, self.metrics)
        self.mqtt_snippets = (
            MqttSource(snippet_mqtt_config(settings), self.snippets.submit)
            if self.snippets is not None and settings.mqtt.url
            else None
        )
        self.app = App(
            settings.http,
            settings.notehub,
            self.metrics,
            lambda message, timeout: self.pipeline.submit(message, timeout),
            self.health,
            ack_timeout_s=settings.pipeline.ack_timeout_s,
            snippets=self.snippets,
            snippets_config=settings.snippets,
        )
        self._server = None
        self._server_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._scheduled = clock is None
        self.inventory = read_inventory(settings.fleet.inventory) if settings.fleet.inventory else None
        self.actions = Actions(
            settings,
            self.db,
            self.store,
            self.inventory,
            snippets=self.snippets.store if self.snippets is not None else None,
            clock=clock or time.time,
            commander=commander,
        )
        self.metrics.add_families(self.actions.metrics)
        drift = settings.drift
        self.jobs = Jobs(Lease(self.db), misfire_grace_s=drift.misfire_grace_s)
        self.drift = runner_from_settings(settings, self.store, self.inventory) if drift.enabled else None
        if self.drift is not None:
            if settings.alerts.enabled:
                self.drift.on_findings = self.actions.process
            self.jobs.add("drift-check", self.drift.check, drift.window_s, drift.check_delay_s)
        if settings.alerts.enabled:
            self.jobs.add("alerts-tick", lambda _: self.actions.tick_alerts(), ALERT_TICK_PERIOD_S)
        self.jobs.add("rollouts", self.actions.tick_rollouts, drift.window_s, drift.check_delay_s)
        if self.snippets is not None:
            snippets = self.snippets
            self.jobs.add("snippets-prune", lambda _: snippets.prune(), SNIPPET_PRUNE_PERIOD_S)
        self.add_stop_hook(self.jobs.stop)
        self.add_stop_hook(self.actions.stop)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        log.info("store %s, state %s", mask_url(self.settings.store_url), self.settings.state_path)
        try:
            self.store.ping()
            self.metrics.up.set(1)
        except SinkUnavailable as exc:
            log.warning("store not reachable at start (%s): frames will be spooled until it is", exc)
            self.metrics.up.set(0)
        self.pipeline.start()
        self.counters.start()
        if self.settings.http.enabled:
            http = self.settings.http
            self._server = create_server(
                self.app,
                host=http.host,
                port=http.port,
                threads=http.threads,
                max_request_body_size=http.max_body_bytes * 2,
                ident="fleetwatch",
            )
            self._server_thread = threading.Thread(target=self._serve_http, name="fleetwatch-http", daemon=True)
            self._server_thread.start()
            log.info("HTTP listening on %s:%s", http.host, self.http_port)
        for source in self._mqtt_sources():
            source.start()
            log.info("MQTT %s, topic %s", mask_url(self.settings.mqtt.url or ""), source.config.subscription)
        if self.settings.alerts.enabled:
            self.actions.start()
        if self._scheduled:
            self.jobs.start()
        _sd_notify("READY=1")

    def _serve_http(self) -> None:
        """waitress's loop. `stop` closes the server's sockets from another thread, so the loop's `select` may
        then fail on a closed descriptor: expected once stopping, an error before."""
        try:
            self._server.run()
        except (OSError, ValueError):
            if not self._stopped.is_set():
                raise

    @property
    def http_port(self) -> int:
        """The bound port (useful when the config says port 0)."""
        return self._server.effective_port if self._server is not None else 0

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` first when stopping (used by the scheduler and the action workers)."""
        self._on_stop.append(hook)

    def stop(self, timeout: float = 8.0) -> None:
        """Drain and stop everything; returns within about `timeout` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        _sd_notify("STOPPING=1")
        deadline = time.monotonic() + timeout
        for hook in self._on_stop:
            hook()
        for source in self._mqtt_sources():
            source.stop_intake()
        if self._server is not None:
            self._server.close()
        self.pipeline.stop(timeout=max(deadline - time.monotonic(), 0.5))
        self.counters.stop()
        for source in self._mqtt_sources():
            source.close()
        self.store.close()
        self.db.close()
        log.info("stopped")

    def health(self) -> dict[str, bool]:
        checks = {"pipeline": self.pipeline.running}
        if self.mqtt is not None:
            checks["mqtt"] = all(source.connected.is_set() for source in self._mqtt_sources())
        return checks

    def _mqtt_sources(self) -> list[MqttSource]:
        return [source for source in (self.mqtt, self.mqtt_snippets) if source is not None]

    def run_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT; stop gracefully (a second signal exits at once)."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stopped.is_set():
                os._exit(1)
            log.info("signal %s: draining and stopping", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="fleetwatch-stop").start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stopped.is_set():
            self._stopped.wait(1.0)
        for thread in threading.enumerate():
            if thread.name == "fleetwatch-stop":
                thread.join(10)


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about readiness and stopping; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
