"""The actions side as it runs: alert decisions, their delivery worker and the rollout controller, composed
from one configuration. The daemon runs it on its scheduler; the demo drives it on simulated time; both
build it here.

- `process(findings)`: after each drift check, one `AlertManager` round at `clock()` (decisions and queued
  messages in one state-DB transaction, then the snippet-request hook when `snippets.request_on_alert`),
  then wakes the delivery worker.
- `tick_alerts()`: a round without findings: sends groups whose `group_window_s` passed, reminders that came
  due, alerts whose silence ended.
- `tick_rollouts(now)`: one `RolloutController.tick(now)`, only when a rollout is active or has commands
  not yet delivered. The controller (signing key, commander) is built the first time it has work, so a
  daemon without a signing key runs fine until a rollout needs one (then each tick logs why it cannot).
- `start()` / `stop()`: the delivery worker's thread. The outbox claim is a compare-and-set in the state
  database, so every daemon sharing it may run a worker: a message is never sent by two at once.
- `metrics()`: alert, delivery and rollout families for /metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from fleetwatch.actions.alertdb import AlertManager
from fleetwatch.actions.alerts import Decision, Inventory
from fleetwatch.actions.devices import Commander
from fleetwatch.actions.rollout import RolloutController, RolloutLog, Transition, controller_from_settings
from fleetwatch.actions.webhooks import OutboxWorker
from fleetwatch.config import Settings
from fleetwatch.findings import Finding
from fleetwatch.metrics import Metric
from fleetwatch.sinks.base import Store
from fleetwatch.snippets.capture import FieldData, alert_hook_from_settings
from fleetwatch.snippets.store import SnippetStore
from fleetwatch.state import StateDB

log = logging.getLogger(__name__)


class Actions:
    """Alerts, delivery and rollouts of one daemon (see the module docstring).

    `inventory` maps device -> {tag: value} (`fleet.inventory`); `snippets`, the snippet dataset, adds
    the field data to retraining payloads; `clock` (Unix s) is the time of alert rounds and of the
    delivery worker; `commander` replaces the one `rollout.transport` names.
    """

    def __init__(
        self,
        settings: Settings,
        db: StateDB,
        store: Store,
        inventory: Inventory | None,
        *,
        snippets: SnippetStore | None = None,
        clock: Callable[[], float] = time.time,
        commander: Commander | None = None,
    ) -> None:
        self.settings, self.db, self.store, self.inventory = settings, db, store, inventory
        self.clock = clock
        self.alerts = AlertManager(
            settings.alerts,
            db,
            on_notifications=alert_hook_from_settings(settings, inventory),
            field_data=FieldData(snippets, inventory) if snippets is not None else None,
        )
        self.outbox = OutboxWorker(settings.alerts, db, clock=clock)
        self.rollouts = RolloutLog(db)
        self._commander = commander
        self._controller: RolloutController | None = None

    # -- alerts ----------------------------------------------------------------------------------
    def process(self, findings: Sequence[Finding]) -> Decision:
        """One alert round for a drift check's findings; wakes the worker when something was queued."""
        decision = self.alerts.process(findings, self.clock(), self.inventory)
        if decision.notifications:
            self.outbox.wake()
        log.info(
            "alerts: %d findings, %d notifications, %d unrouted",
            len(findings),
            len(decision.notifications),
            decision.unrouted,
        )
        return decision

    def tick_alerts(self) -> Decision:
        """A round without findings (grouping windows, reminders, ended silences)."""
        decision = self.alerts.tick(self.clock())
        if decision.notifications:
            self.outbox.wake()
        return decision

    def start(self) -> None:
        """Start the delivery worker's thread."""
        self.outbox.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the delivery worker, waiting at most `timeout` s for a request in flight (a request cut off
        by the exit is sent again once its claim lapses; the idempotency key lets the receiver dedupe)."""
        self.outbox.stop(timeout)

    # -- rollouts --------------------------------------------------------------------------------
    @property
    def controller(self) -> RolloutController:
        """The rollout controller, built on first use (ValueError when the signing key cannot be read)."""
        if self._controller is None:
            self._controller = controller_from_settings(self.settings, self.db, self.store, commander=self._commander)
        return self._controller

    def tick_rollouts(self, now: int) -> list[Transition]:
        """One controller step at `now` (the end of the last complete window) if any rollout has work."""
        if not self.rollouts.pending():
            return []
        events = self.controller.tick(now)
        for e in events:
            log.info("rollout %s: %s %s -> %s: %s", e.rollout_id, e.action, e.from_state, e.to_state, e.reason)
        return events

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self) -> list[Metric]:
        return self.alerts.metrics(self.clock()) + self.outbox.metrics() + self.rollouts.metrics()
