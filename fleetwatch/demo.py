"""`fleetwatch demo`: the whole loop on one machine in about a minute, with no server to install.

Everything runs for real on 127.0.0.1:

- an MQTT broker: a local `mosquitto` when one is installed (MQTT 5), else the amqtt broker embedded in
  this process (MQTT 3.1.1; `pip install 'fleetwatch[demo]'`);
- the daemon (`Daemon`, configured through `Settings`) ingesting from the broker into the embedded store,
  with its HTTP server (/healthz, /metrics) on a free port;
- a simulated fleet (`FleetSimulator`), each device its own MQTT client (`simulate.devices`) publishing
  one packed frame per window and obeying signed OTA commands;
- a webhook receiver (an HTTP server in this process) that checks each message's signature and prints it.

The story: a baseline is fitted from a reference period of 48 hourly windows, simulated in-process and
written straight to the store (not over MQTT). Then the clock runs accelerated: one simulated hour-long
window per `pace_s` real seconds (window_start advances by 3600 s each pace). At a sixth of the run the
inputs of the devices at site=north shift by 3 sigma (channel 0); at a third a canary rollout of a worse
model (kws-b: 4x anomaly rate, lower confidence) starts on 20% of the fleet against a 20% control group.

The demo builds the daemon with a simulated clock (`Daemon(settings, clock=...)`, the same composition
`fleetwatch run` uses: the `[alerts]` and `[rollout]` sections of its `Settings`, `actions.service.Actions`)
and drives the periodic work at each simulated window end instead of the daemon's wall-clock scheduler
(apscheduler cannot run faster than real time): the daemon's `DriftRunner.check(window_end)`, whose
findings go to `AlertManager.process` (alerts go out through the outbox worker, whose clock is the
simulated one), then `Actions.tick_rollouts(window_end)`. So the drift alert reaches the webhook receiver, the judge
rolls the canary back, the devices receive the signed rollback command over MQTT and report the
baseline model again. A summary says what happened and where the data is (`--keep DIR` keeps it, with a
`fleetwatch.toml` for `fleetwatch report`, `alerts list` and `rollout status`). `--store` writes to another
store, e.g. an InfluxDB that Grafana shows.
"""

from __future__ import annotations

import hmac
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fleetwatch.actions.devices import MqttCommander
from fleetwatch.actions.receivers import signature
from fleetwatch.actions.rollout import Artifact, Plan, select_devices
from fleetwatch.actions.rollout_config import public_key_path
from fleetwatch.actions.signing import generate_private_key, write_key_pair
from fleetwatch.baselines import Baseline, BaselineStore, fit_reference
from fleetwatch.config import Settings, StoreConfig, mask_url
from fleetwatch.daemon import Daemon
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.localservers import EmbeddedBroker, Mosquitto, ServerError
from fleetwatch.simulate import Change, FleetSimulator, FleetSpec, ModelProfile, Target, inventory_csv, model_crc
from fleetwatch.simulate.devices import DeviceFleet
from fleetwatch.sinks.base import Store

log = logging.getLogger(__name__)

HOUR = 3600
REFERENCE_WINDOWS = 48
MIN_WINDOWS = 10
BASELINE_NAME, WORSE_NAME = "kws-a", "kws-b"
BASELINE, WORSE = model_crc(BASELINE_NAME), model_crc(WORSE_NAME)
DRIFT_SITE = "north"
DRIFT_SIGMA = 3.0
WEBHOOK_SECRET = "demo-webhook-secret"
BrokerChoice = Literal["auto", "mosquitto", "embedded"]


@dataclass(frozen=True)
class DemoOptions:
    """What `fleetwatch demo` was asked for; `windows` = duration / pace, at least MIN_WINDOWS."""

    devices: int = 200
    duration_s: float = 60.0
    pace_s: float = 1.0
    seed: int = 1
    keep: Path | None = None
    broker: BrokerChoice = "auto"
    store: str | None = None

    @property
    def windows(self) -> int:
        return round(self.duration_s / self.pace_s)

    def check(self) -> None:
        """Raise ValueError naming the option that cannot work."""
        if self.devices < 20:
            raise ValueError("--devices: at least 20 (the rollout needs canary and control devices)")
        if self.pace_s <= 0:
            raise ValueError("--pace must be > 0")
        if self.store is not None:
            try:
                StoreConfig(url=self.store)
            except ValidationError as exc:
                raise ValueError(f"--store: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        if self.keep is not None and self.keep.exists() and any(self.keep.iterdir()):
            raise ValueError(f"--keep {self.keep}: give a new or empty directory")
        if self.windows < MIN_WINDOWS:
            raise ValueError(
                f"--duration {self.duration_s:g} at --pace {self.pace_s:g} gives {self.windows} windows; "
                f"the story needs at least {MIN_WINDOWS}"
            )


@dataclass(frozen=True)
class Timeline:
    """When things happen, in live windows counted from 1: the drift at `drift`, the rollout at `rollout`."""

    windows: int
    drift: int
    rollout: int

    @classmethod
    def of(cls, windows: int) -> Timeline:
        drift = max(2, windows // 6 + 1)
        return cls(windows, drift, max(drift + 2, windows // 3))


@dataclass
class Story:
    """What happened so far: what the live view shows and the summary tells."""

    options: DemoOptions
    timeline: Timeline
    broker: str = ""
    workdir: Path = Path()
    metrics_url: str = ""
    webhook_url: str = ""
    window: int = 0
    first_time: int = 0
    simulated_time: int = 0
    frames_stored: int = 0
    reporting: int = 0
    ingest_rate: float = 0.0
    findings: Counter[str] = field(default_factory=Counter)
    last_findings: list[str] = field(default_factory=list)
    open_alerts: int = 0
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    drift_alert_window: int | None = None
    drift_alert_title: str = ""
    rollout_state: str = "not started"
    rollout_stage: str = ""
    canary: list[str] = field(default_factory=list)
    control: list[str] = field(default_factory=list)
    on_worse: int = 0
    verdict: str = ""
    rolled_back_window: int | None = None
    adopted: int = 0
    reverted: int = 0
    events: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def complete(self) -> bool:
        """The drift alert was sent, the canary rolled back and every device that took it reverted."""
        return (
            self.drift_alert_window is not None
            and self.rolled_back_window is not None
            and self.adopted > 0
            and self.reverted == self.adopted
        )


class WebhookInbox:
    """The demo's webhook receiver: a real HTTP server on 127.0.0.1 that checks X-Fleetwatch-Signature
    (HMAC-SHA256 with the shared secret) and hands each JSON message to `on_message`."""

    def __init__(self, secret: str, on_message: Callable[[dict[str, Any]], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                header = self.headers.get("X-Fleetwatch-Signature", "")
                stamp = header.partition("t=")[2].partition(",")[0]
                verified = stamp.isdigit() and hmac.compare_digest(header, signature(secret, body, int(stamp)))
                self.send_response(200 if verified else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if verified:
                    on_message(json.loads(body))

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-webhook", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/fleetwatch"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_broker(choice: BrokerChoice) -> Mosquitto | EmbeddedBroker:
    """mosquitto when asked or found (auto), else the embedded amqtt broker."""
    if choice in ("auto", "mosquitto"):
        try:
            return Mosquitto().start()
        except ServerError:
            if choice == "mosquitto":
                raise
            log.info("no mosquitto found: using the embedded broker")
    return EmbeddedBroker().start()


def fit_simulated_baseline(sim: FleetSimulator, windows: int, store: Store, baselines: BaselineStore) -> Baseline:
    """Simulate `windows` reference windows in-process, write them straight to `store` (not over MQTT), fit
    the baseline of the fleet's model from what was stored and save it (the demo, and the daemon tests)."""
    spec = sim.spec
    start = spec.start + sim.next_window * spec.window_s
    telemetry = sim.run(windows)
    registry = Registry.builtin()
    decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, registry)
    store.write_frames(decoded.batches[1])
    end = start + windows * spec.window_s
    columns = store.read_frames(start, end, schema=registry.get(1))
    baseline = fit_reference(
        columns,
        model_id=spec.model_id,
        version=baselines.next_version(spec.model_id),
        fitted_at=end,
        time_range=(start, end),
    )
    baselines.save(baseline)
    return baseline


class Demo:
    """The demo's parts, started by `start`, advanced by `step` (one window), stopped by `close`."""

    def __init__(self, options: DemoOptions, workdir: Path, on_event: Callable[[str], None]) -> None:
        self.options, self.workdir, self.on_event = options, workdir, on_event
        self.timeline = Timeline.of(options.windows)
        self.story = Story(options, self.timeline, workdir=workdir)
        self.spec = FleetSpec(
            n_devices=options.devices,
            seed=options.seed,
            window_s=HOUR,
            model_id=BASELINE,
            models={WORSE: ModelProfile(anomaly_factor=4.0, confidence_degradation=0.3)},
        )
        self.drift = Change(
            "input_mean_shift",
            DRIFT_SIGMA,
            Target(where=f"site={DRIFT_SITE}"),
            onset=REFERENCE_WINDOWS + self.timeline.drift - 1,
            channels=(0,),
        )
        self.now = self.story.first_time = self.spec.start
        self._parts: list[Callable[[], None]] = []
        self._stored_before = 0.0
        self._last_tick = time.monotonic()

    # -- setup -----------------------------------------------------------------------------------
    def start(self) -> None:
        data = self.workdir
        data.mkdir(parents=True, exist_ok=True)
        broker = start_broker(self.options.broker)
        self._parts.append(broker.close)
        kind = "mosquitto" if isinstance(broker, Mosquitto) else "embedded amqtt"
        self.story.broker = f"{kind} on {broker.url} (MQTT {broker.mqtt_protocol})"
        (data / "inventory.csv").write_text(inventory_csv(self.spec), encoding="utf-8")
        self.inbox = WebhookInbox(WEBHOOK_SECRET, self._on_webhook)
        self._parts.append(self.inbox.close)
        self.story.webhook_url = self.inbox.url
        self.settings = Settings(
            data_dir=data,
            mqtt={"url": broker.url, "protocol": broker.mqtt_protocol, "client_id": "fleetwatch-demo"},
            http={"listen": "127.0.0.1:0"},
            store={"url": self.options.store or ""},
            fleet={"inventory": data / "inventory.csv"},
            drift={"window_s": HOUR},
            pipeline={"batch_wait_s": 0.05},
            alerts={
                "receivers": [{"name": "demo", "kind": "webhook", "url": self.inbox.url, "secret": WEBHOOK_SECRET}],
                "routes": [{"cohort": "site=*", "receivers": ["demo"]}],
                "group_by": ["site"],
                "group_window_s": 0,
                "resolve_after": 3,
                "cooldown_minutes": 24 * 60,
                "delivery": {"poll_interval_s": 0.2},
            },
            rollout={
                "stages": [20, 100],
                "control_pct": 20,
                "bake_s": 6 * HOUR,
                "judge": {"min_devices": 5, "min_windows": 2},
            },
        )
        key = generate_private_key()
        signing_key = self.settings.rollout.signing_key_path(data)
        write_key_pair(key, signing_key, public_key_path(signing_key))
        commander = MqttCommander(
            self.settings.mqtt,
            self.settings.rollout.command_topic,
            timeout_s=15,
            stay_connected=isinstance(broker, EmbeddedBroker),
        )
        self._parts.append(commander.close)
        self.sim = FleetSimulator(self.spec, [self.drift])
        self.daemon = Daemon(self.settings, clock=lambda: float(self.now), commander=commander)
        baselines = BaselineStore(self.settings.baselines_dir)
        fit_simulated_baseline(self.sim, REFERENCE_WINDOWS, self.daemon.store, baselines)
        self.daemon.start()
        self._parts.append(self.daemon.stop)
        if self.daemon.mqtt is None or not self.daemon.mqtt.wait_connected(15):
            raise ServerError(f"the daemon did not connect to the broker at {broker.url}")
        self.story.metrics_url = f"http://127.0.0.1:{self.daemon.http_port}/metrics"
        self.actions = self.daemon.actions
        self.inventory = self.daemon.inventory or {}
        assert self.daemon.drift is not None  # drift.enabled is on in the demo's settings
        self.runner = self.daemon.drift

        self.fleet = DeviceFleet(self.sim, self.settings.mqtt, key.public_key())
        self._parts.append(self.fleet.close)
        self.fleet.connect()
        self.now = self.fleet.now()
        self._stored_before = self._stored()
        self._event(
            f"{self.options.devices} devices online on {self.story.broker}; baseline fitted from "
            f"{REFERENCE_WINDOWS} reference windows"
        )

    # -- one window ------------------------------------------------------------------------------
    def step(self) -> None:
        """One live window: publish, wait for the frames to be stored, check drift, alert, tick the rollout."""
        n = self.story.window + 1
        start = self.fleet.now()
        if n == self.timeline.drift:
            self._event(
                f"window {n}: [scenario] inputs at site={DRIFT_SITE} shift by {DRIFT_SIGMA:g} sigma (channel 0)"
            )
        if n == self.timeline.rollout:
            self._start_rollout(start)
        online = sum(d.online for d in self.fleet.devices.values())
        self.fleet.window()
        self.story.reporting = self._wait_stored(start, online)
        self.now = at = start + HOUR
        self.story.window, self.story.simulated_time = n, at

        findings = self.runner.check(at)  # the daemon's drift runner hands its findings to the alert manager
        drifted = [f for f in findings if f.severity != "ok"]
        self.story.findings.update(f.severity for f in drifted)
        self.story.last_findings = [f"{f.scope} {f.key}: {f.signal} ({f.severity})" for f in drifted[:4]]
        self.story.open_alerts = sum(self.actions.alerts.alerts.firing_counts().values())
        if self.story.canary:
            self._tick_rollout(n, at)
        self._ingest_rate()

    def _start_rollout(self, now: int) -> None:
        config = self.settings.rollout
        plan = Plan(
            "model",
            Artifact(str(WORSE), f"https://models.example/{WORSE_NAME}.tflite", "ab" * 32),
            Artifact(str(BASELINE)),
            tuple(config.stages),
            config.control_pct,
            config.bake_s,
            seed=self.options.seed,
        )
        selection = select_devices(self.inventory, stages=plan.stages, control_pct=plan.control_pct, seed=plan.seed)
        events = self.actions.controller.start(
            WORSE_NAME, plan, selection, now=now, actor="demo", reason=f"new keyword model {WORSE_NAME}"
        )
        self.story.canary, self.story.control = list(selection.canary_at(0)), list(selection.control)
        self._rollout_status()
        self._event(
            f"window {self.story.window + 1}: rollout {WORSE_NAME} started: {len(self.story.canary)} canary "
            f"devices, {len(self.story.control)} control; {events[-1].reason} (signed, over MQTT)"
        )
        self._wait_devices(self.story.canary, WORSE)

    def _tick_rollout(self, n: int, at: int) -> None:
        on_worse = sum(self.fleet.devices[d].model == WORSE for d in self.story.canary)
        if self.story.on_worse == 0 and on_worse:
            self._event(f"window {n}: {on_worse} canary devices ran {WORSE_NAME}; the judge compares them with control")
        self.story.on_worse = on_worse
        events = self.actions.tick_rollouts(at)
        for event in events:
            if event.action == "judge" and event.evidence:
                self.story.verdict = event.reason
        self._rollout_status()
        rollback = next((e for e in events if e.action == "rollback"), None)
        if rollback is not None:
            self.story.rolled_back_window = n
            self._event(f"window {n}: canary rolled back: {rollback.reason}")
            self._wait_devices(self.story.canary, BASELINE)
        self._count_reverted(at)

    def _rollout_status(self) -> None:
        status = self.actions.rollouts.status(WORSE_NAME)[0]
        self.story.rollout_state = status["state"]
        self.story.rollout_stage = f"stage {status['stage']} of {len(self.settings.rollout.stages)}"

    def _count_reverted(self, at: int) -> None:
        """Canary devices whose frames showed the worse model (adopted), and of those, the ones whose last
        frame shows the baseline again (reverted), as the daemon stored them."""
        frames = self.daemon.store.read_frames(
            self.spec.start, at, schema=Registry.builtin().get(1), devices=self.story.canary
        )
        device = np.asarray(frames["device"], dtype=object).astype(str)
        model = np.asarray(frames["model_id"]).astype(str)
        adopted = set(device[model == str(WORSE)].tolist())
        last = dict(zip(device.tolist(), model.tolist(), strict=True))
        reverted = {d for d in adopted if last[d] == str(BASELINE)}
        if reverted and len(reverted) == len(adopted) and self.story.reverted < len(reverted):
            self._event(
                f"window {self.story.window}: {len(reverted)} of {len(adopted)} canary devices report "
                f"{BASELINE_NAME} again"
            )
        self.story.adopted, self.story.reverted = len(adopted), len(reverted)

    # -- helpers ---------------------------------------------------------------------------------
    def _on_webhook(self, message: dict[str, Any]) -> None:
        self.story.webhooks.append(message)
        n = self.story.window
        self._event(f"window {n}: webhook <- [{message['status']}] {message['title']} (signature ok)")
        signals = [a["signal"] for a in message["alerts"]]
        north = message["group"]["label"] == f"site={DRIFT_SITE}"
        drift = message["status"] == "firing" and north and any(s.startswith("input_mean") for s in signals)
        if drift and self.story.drift_alert_window is None:
            self.story.drift_alert_window, self.story.drift_alert_title = n, message["title"]

    def _wait_stored(self, start: int, expected: int, timeout: float = 15.0) -> int:
        """Wait until the daemon has stored `expected` frames of the window starting at `start`."""
        schema = Registry.builtin().get(1)
        deadline = time.monotonic() + timeout
        while True:
            stored = len(self.daemon.store.read_frames(start, start + 1, schema=schema)["device"])
            if stored >= expected or time.monotonic() > deadline:
                return stored
            time.sleep(0.02)

    def _wait_devices(self, devices: list[str], model: int, timeout: float = 10.0) -> None:
        """Give the devices' MQTT clients time to receive their command before the next window."""
        deadline = time.monotonic() + timeout
        while any(self.fleet.devices[d].model != model for d in devices) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _stored(self) -> float:
        return self.daemon.metrics.registry.get_sample_value("fleetwatch_frames_stored_total") or 0.0

    def _ingest_rate(self) -> None:
        now, stored = time.monotonic(), self._stored()
        self.story.ingest_rate = (stored - self._stored_before) / max(now - self._last_tick, 1e-3)
        self.story.frames_stored = int(stored)
        self._stored_before, self._last_tick = stored, now

    def _event(self, line: str) -> None:
        self.story.events.append(line)
        self.on_event(line)

    def close(self) -> None:
        """Stop everything started, newest first."""
        for stop in reversed(self._parts):
            try:
                stop()
            except Exception:  # stopping the rest matters more than this part's error
                log.exception("demo: stopping %s failed", stop)
        self._parts.clear()

    def write_config(self) -> Path:
        """A fleetwatch.toml for the kept directory: the same store, state and inventory."""
        path = self.workdir / "fleetwatch.toml"
        store = f'\n[store]\nurl = "{self.options.store}"\n' if self.options.store else ""
        path.write_text(
            "# Written by `fleetwatch demo --keep`: the demo's store, state, baselines and inventory.\n"
            f'data_dir = "{self.workdir}"\n\n[fleet]\ninventory = "{self.workdir / "inventory.csv"}"\n{store}',
            encoding="utf-8",
        )
        return path


def run(
    options: DemoOptions,
    stop: threading.Event,
    on_event: Callable[[str], None],
    on_start: Callable[[Story], None] | None = None,
    on_window: Callable[[Story], None] | None = None,
) -> Story:
    """Run the demo until its windows are done or `stop` is set; everything is stopped before returning.

    The work directory is `options.keep` (kept, with a fleetwatch.toml) or a temporary one (removed).
    """
    options.check()
    workdir = options.keep.resolve() if options.keep else Path(tempfile.mkdtemp(prefix="fleetwatch-demo-"))
    demo = Demo(options, workdir, on_event)
    handler = _log_to(workdir / "demo.log")
    try:
        demo.start()
        if on_start is not None:
            on_start(demo.story)
        began = time.monotonic()
        for n in range(1, options.windows + 1):
            if stop.is_set():
                break
            demo.step()
            if on_window is not None:
                on_window(demo.story)
            stop.wait(max(began + n * options.pace_s - time.monotonic(), 0.0))
        demo.story.interrupted = stop.is_set()
        return demo.story
    finally:
        demo.close()
        logging.getLogger().removeHandler(handler)
        handler.close()
        if options.keep:
            demo.write_config()
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _log_to(path: Path) -> logging.Handler:
    """Send the daemon's logs to `path` (the terminal belongs to the demo's view)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def summary(story: Story) -> list[str]:
    """What happened, in plain lines (the end of the run)."""
    options, timeline = story.options, story.timeline
    elapsed = time.monotonic() - story.started
    lines = [
        f"fleetwatch demo: {story.window} of {timeline.windows} hourly windows in {elapsed:.0f} s, "
        f"{options.devices} devices, seed {options.seed}, broker {story.broker}"
        + (" (interrupted)" if story.interrupted else ""),
        f"  ingest:  {story.frames_stored} frames over MQTT stored by the daemon",
    ]
    if story.drift_alert_window is not None:
        lines.append(
            f"  drift:   alert sent for site={DRIFT_SITE} at window {story.drift_alert_window} "
            f"(drift injected at window {timeline.drift}): {story.drift_alert_title}"
        )
    else:
        lines.append(f"  drift:   no alert for site={DRIFT_SITE} yet (drift injected at window {timeline.drift})")
    lines.append(f"  webhook: {len(story.webhooks)} signed messages received at {story.webhook_url}")
    if story.rolled_back_window is not None:
        lines.append(
            f"  rollout: {WORSE_NAME} canary rolled back at window {story.rolled_back_window} "
            f"(started at window {timeline.rollout}); {story.reverted} of {story.adopted} devices reverted "
            f"to {BASELINE_NAME}"
        )
    else:
        lines.append(f"  rollout: {WORSE_NAME} is {story.rollout_state} (started at window {timeline.rollout})")
    if options.store:
        lines.append(f"  store:   {mask_url(options.store)} (for Grafana: dashboards/, docs/dashboards.md)")
    if options.keep:
        config = story.workdir / "fleetwatch.toml"
        lines += [
            f"  data:    kept in {story.workdir} (state.db, baselines/, demo.log"
            + (")" if options.store else ", store/)"),
            f"           fleetwatch rollout status -c {config}",
            f"           fleetwatch alerts list --state {story.workdir / 'state.db'}",
            f"           fleetwatch report -c {config} --cohort site={DRIFT_SITE} --from {story.first_time} "
            f"--to {story.simulated_time} -o north.html",
        ]
    else:
        lines.append("  data:    removed (run with --keep DIR to keep it for `fleetwatch report`, `alerts`, `rollout`)")
    if not story.complete and not story.interrupted:
        lines.append("  the story did not finish in time: try a longer --duration")
    return lines


def status_line(story: Story) -> str:
    """One plain line of the state (for --no-live)."""
    return (
        f"window {story.window}/{story.timeline.windows}: {story.reporting} devices reported, "
        f"{story.ingest_rate:.0f} frames/s, {story.open_alerts} open alerts, "
        f"{len(story.webhooks)} webhooks, rollout {story.rollout_state}"
    )


def view(story: Story) -> Group:
    """The live terminal view: ingest, drift and alerts, the rollout, and the story so far."""
    timeline = story.timeline
    clock = time.strftime("%Y-%m-%d %H:%M", time.gmtime(story.simulated_time)) if story.simulated_time else "-"
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"window {story.window}/{timeline.windows}", style="bold"),
        f"simulated {clock} UTC",
        f"broker {story.broker}",
    )
    ingest = Table(title="ingest", show_header=False, expand=True)
    ingest.add_row("frames/s", f"{story.ingest_rate:.0f}")
    ingest.add_row("devices reporting", f"{story.reporting} of {story.options.devices}")
    ingest.add_row("frames stored", str(story.frames_stored))
    ingest.add_row("metrics", story.metrics_url)
    drift = Table(title="drift and alerts", show_header=False, expand=True)
    drift.add_row("findings so far", ", ".join(f"{n} {s}" for s, n in sorted(story.findings.items())) or "none")
    drift.add_row("open alerts", str(story.open_alerts))
    drift.add_row("webhooks", f"{len(story.webhooks)} received")
    for line in story.last_findings:
        drift.add_row("", Text(line, style="yellow"))
    rollout = Table(title=f"rollout {WORSE_NAME}", show_header=False, expand=True)
    rollout.add_row("state", Text(story.rollout_state, style=_STATE_STYLE.get(story.rollout_state, "")))
    rollout.add_row("stage", story.rollout_stage or f"starts at window {timeline.rollout}")
    rollout.add_row("canary / control", f"{len(story.canary)} / {len(story.control)}")
    rollout.add_row(f"canary on {WORSE_NAME}", str(story.on_worse))
    rollout.add_row("reverted", f"{story.reverted} of {story.adopted}")
    rollout.add_row("judge", Text(story.verdict[:80] or "-"))
    columns = Table.grid(expand=True)
    columns.add_row(ingest, drift, rollout)
    return Group(head, columns, Panel(Text("\n".join(story.events) or "starting"), title="what happened"))


_STATE_STYLE = {"baking": "yellow", "judged": "yellow", "rolled_back": "bold red", "promoted": "green"}
