"""The fleet simulator: a batch of windows at once (`simulate`) or window by window with model rollouts in
between (`FleetSimulator`). Both give identical frames for the same spec, changes and deployments.

>>> spec = FleetSpec(n_devices=5)
>>> sim = FleetSimulator(spec)
>>> first = sim.run(2)
>>> sim.deploy([0, 1], 0xB0B, "1.1.0")
>>> second = sim.run(1)
>>> len(first), second.columns["model_id"].tolist()
(10, [2827, 2827, 2449536076, 2449536076, 2449536076])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleetwatch.frames import Registry
from fleetwatch.simulate.changes import Change, ModelEffects, Truth, reboot_rate, truth, window_effects
from fleetwatch.simulate.fleet import Deployment, Devices, Fleet, device_mask
from fleetwatch.simulate.spec import FleetSpec
from fleetwatch.simulate.telemetry import Telemetry
from fleetwatch.simulate.window import draw_reboots, draw_window


class FleetSimulator:
    """A fleet that advances window by window; `deploy` changes what devices run between windows.

    State carried from window to window: the deployment, and each device's boot window (seq counts windows
    since boot, restarting at 0 in the window of a reboot). Deploying a different model or firmware to a
    device reboots it in the next window (an over-the-air update). Started at `start_window` > 0, the
    simulator replays the reboots of the earlier windows, assuming no deployments before it.
    """

    def __init__(
        self,
        spec: FleetSpec,
        changes: Sequence[Change] = (),
        *,
        start_window: int = 0,
        deployed: Deployment | None = None,
    ) -> None:
        if start_window < 0:
            raise ValueError("start_window must be >= 0")
        self.spec = spec
        self.fleet = Fleet.of(spec)
        self.truth: Truth = truth(spec, changes, self.fleet)
        self._schema = Registry.builtin().get(1)
        self._deployed = deployed or Deployment.initial(spec)
        self._next = start_window
        self._boot = -self.fleet.seq_offset
        for k in range(start_window):
            self._boot = np.where(draw_reboots(spec, k, reboot_rate(spec, self.truth, k)), k, self._boot)
        self._pending_reboot = np.zeros(spec.n_devices, dtype=bool)

    @property
    def next_window(self) -> int:
        """Index of the window the next `run` or `step` starts with."""
        return self._next

    @property
    def deployed(self) -> Deployment:
        return self._deployed

    def deploy(self, devices: Devices, model_id: int, fw_version: str | int) -> None:
        """From the next window on, `devices` (a Target, indices or a mask) run (model_id, fw_version)."""
        updated = self._deployed.with_model(device_mask(self.fleet, devices), model_id, fw_version)
        changed = (updated.model_id != self._deployed.model_id) | (updated.fw_version != self._deployed.fw_version)
        self._pending_reboot |= changed
        self._deployed = updated

    def step(self) -> Telemetry:
        """The next window."""
        return self.run(1)

    def run(self, n_windows: int) -> Telemetry:
        """The next `n_windows` windows, generated in one batch under the current deployment."""
        if n_windows < 1:
            raise ValueError("n_windows must be >= 1")
        models = ModelEffects.of(self.spec, self._deployed)
        windows = np.arange(self._next, self._next + n_windows)
        grid: dict[str, np.ndarray] = {}
        for j, k in enumerate(windows.tolist()):
            draw = draw_window(self.fleet, k, window_effects(self.spec, self.truth, models, k), self._pending_reboot)
            self._pending_reboot = np.zeros_like(self._pending_reboot)
            for name, value in {**draw.columns, "rebooted": draw.rebooted, "received": draw.received}.items():
                if name not in grid:
                    grid[name] = np.empty((len(value), n_windows, *value.shape[1:]), dtype=value.dtype)
                grid[name][:, j] = value
        boot = np.maximum.accumulate(np.where(grid.pop("rebooted"), windows, self._boot[:, None]), axis=1)
        self._boot = boot[:, -1]
        grid["seq"] = ((windows - boot) % 65536).astype(np.uint16)
        grid["fw_version"] = np.repeat(self._deployed.fw_version[:, None], n_windows, axis=1)
        grid["model_id"] = np.repeat(self._deployed.model_id[:, None], n_windows, axis=1)
        received = grid.pop("received")
        telemetry = Telemetry.from_grid(self._schema, self._next, self.fleet.ids, grid, received)
        self._next += n_windows
        return telemetry


def simulate(
    spec: FleetSpec,
    changes: Sequence[Change] = (),
    n_windows: int = 24,
    start_window: int = 0,
    deployed: Deployment | None = None,
) -> Telemetry:
    """Windows start_window .. start_window + n_windows - 1 of the fleet, every device on `deployed`."""
    return FleetSimulator(spec, changes, start_window=start_window, deployed=deployed).run(n_windows)
