"""Simulated canary rollouts, judged look by look as the rollout controller judges them.

Feeds the judge's tests (`tests/test_judge.py`) and its benchmark (`benchmarks/judge_power.py`). One
simulated fleet holds `n_rollouts` independent rollouts of `per_arm` canary and `per_arm` control devices
each; the canary devices get the new model before window 0 (an over-the-air update, so they reboot in it);
look k judges windows 0..k-1 at bake fraction k / looks, as the controller does with hourly looks over a
6 h bake. Windows reach the judge as the store returns them (`sinks.model.frame_points` of the decoded
frames). Not imported by `fleetwatch.simulate` itself: it needs the decoder and the judge.

>>> rollouts = simulate_rollouts(ModelProfile(latency_factor=2.0), n_rollouts=2, seed=1)
>>> [(o.rolled_back_at, o.verdict.verdict) for o in judge_rollouts(rollouts, JudgeConfig())]
[(1, 'rollback'), (1, 'rollback')]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwatch.actions.judge import Look, Verdict, judge_frames
from fleetwatch.actions.rollout_config import JudgeConfig
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.simulate.simulator import FleetSimulator
from fleetwatch.simulate.spec import FleetSpec, ModelProfile, model_crc
from fleetwatch.sinks.model import frame_points

#: The model the canary devices are updated to.
NEW_MODEL = model_crc("kws-b")
#: Canary devices, and control devices, per rollout.
PER_ARM = 20
#: Looks per stage: hourly windows over a 6 h bake.
LOOKS = 6
#: Canaries clearly worse than the control, each in one metric (or the memory guardrail).
WORSE_CANARIES = {
    "anomaly rate x3": ModelProfile(anomaly_factor=3.0),
    "accuracy -10 points": ModelProfile(confidence_degradation=0.2),
    "p95 latency x1.5": ModelProfile(latency_factor=1.5),
    "peak memory +38 points (guardrail)": ModelProfile(memory_delta=38.0),
}


@dataclass(frozen=True)
class Rollouts:
    """Store columns of simulated rollouts side by side.

    columns: every window of every device, sorted by device and then time; rows[d, k]: the row of device
    d's window k; arms[r, 0] and arms[r, 1]: the device indices of rollout r's canary and control.
    """

    columns: dict[str, np.ndarray]
    rows: np.ndarray
    arms: np.ndarray

    @property
    def looks(self) -> int:
        return int(self.rows.shape[1])

    def frames(self, devices: np.ndarray, windows: int) -> dict[str, np.ndarray]:
        """The columns of `devices`' first `windows` windows."""
        index = self.rows[devices, :windows].ravel()
        return {name: values[index] for name, values in self.columns.items()}


@dataclass(frozen=True)
class Outcome:
    """One rollout judged at each look until it is rolled back: the look that rolled it back (None if no
    look did) and the verdict of the last look judged."""

    rolled_back_at: int | None
    verdict: Verdict


def simulate_rollouts(
    profile: ModelProfile, n_rollouts: int, seed: int, *, per_arm: int = PER_ARM, looks: int = LOOKS
) -> Rollouts:
    """`n_rollouts` rollouts whose canary runs a model behaving as `profile`, `looks` windows each."""
    spec = FleetSpec(n_devices=n_rollouts * 2 * per_arm, seed=seed, models={NEW_MODEL: profile})
    sim = FleetSimulator(spec)
    arms = np.arange(spec.n_devices).reshape(n_rollouts, 2, per_arm)
    sim.deploy(arms[:, 0].ravel(), NEW_MODEL, "1.0.0")
    telemetry = sim.run(looks)
    decoded = decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin())
    points = frame_points(decoded.batches[1])
    columns = {"time": points.time, **points.tags, **points.fields}
    order = np.lexsort((points.time, points.tags["device"].astype(str)))
    rows = np.arange(len(order)).reshape(spec.n_devices, looks)
    return Rollouts({name: np.asarray(values)[order] for name, values in columns.items()}, rows, arms)


def judge_rollouts(rollouts: Rollouts, config: JudgeConfig) -> list[Outcome]:
    """Each rollout judged at looks 1..looks (look k: windows 0..k-1, bake fraction k / looks), stopping
    at the first rollback."""
    outcomes = []
    for canary, control in rollouts.arms:
        for k in range(1, rollouts.looks + 1):
            look = Look(k / rollouts.looks, (k - 1) / rollouts.looks)
            verdict = judge_frames(rollouts.frames(canary, k), rollouts.frames(control, k), config, look)
            if verdict.verdict == "rollback":
                break
        outcomes.append(Outcome(k if verdict.verdict == "rollback" else None, verdict))
    return outcomes
