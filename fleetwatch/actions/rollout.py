"""Staged rollouts: who gets the new version when, the persisted state machine, and the controller step.

States (persisted in the state database; every change is audited with who, what, why, when and the
judge's evidence)::

    planned -> baking (stage k) -> [look: judge] -> baking (stage k+1) ... -> promoted
                     |                  |-> judged (end of bake: inconclusive, or promote awaiting operator)
                     |                  |-> rolled_back (judge: worse beyond a margin, or a guardrail)
                     any active state -> rolled_back (operator) | aborted (operator)

- **Selection** (`select_devices`, pure): the eligible devices (inventory rows matching every `--cohort`
  selector) are split into a control group held on the baseline and a canary order, both drawn at random
  and stratified by cohort (every combination of the `stratify_by` tags): within a stratum of n_s
  devices, device i gets the key (pi_i + u_s) / n_s with pi a random permutation and u_s ~ U(0, 1), and
  the first m keys over the fleet are taken — systematic sampling with a random start per stratum, so
  each stratum gets its proportional share within one device, and the canary of stage k is contained in
  the canary of stage k + 1. The draw depends on the seed and the inventory only (reproducible).
- **Stages**: stage k's canary is `stages[k]` percent of the eligible devices (at most every device not
  in control); entering a stage commands its new canary devices. The stage bakes for `bake_s`.
  Promotion of the last stage commands every device still on the baseline: control, and the devices
  no stage reached when the last stage is below 100%.
- **Looks**: each `tick(now)` judges a baking stage on the windows since the stage started: canary devices
  that report the new version against control devices on the baseline (`fleetwatch.actions.judge`;
  a look spends alpha by the bake fraction elapsed), each arm's accuracy from its model's calibration
  map and the confidence PSI against the control model's baseline (the latest of each model in the
  `baselines` store; `controller_from_settings` uses `drift.baselines_dir`, as the drift runner does).
  Rollback at any look; promotion only at the end of the bake.
- **Commands** go through an outbox: a state change records each device's desired state (`target` or
  `baseline`) in the same transaction; `tick` (and the operator actions) send what is not yet delivered,
  so a crash between the two resends on restart. Commands are signed (`signing`) and sent by a
  `Commander` (`devices`).
- **Judgements** are also written to the store as the measurement `rollout` (`write_judgement`), which the
  Rollouts dashboard reads: at each look, per metric and arm, the arm's median device value with its
  interval, the devices it rests on, the stage and the verdict.
- **Adoption** is read from telemetry (fw_version / model_id of the frames); canary devices that do not
  report the new version within `adoption_deadline_s` of their command are reported once, in the audit.

One rollout is active at a time (a device has one desired state).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from fleetwatch.actions.devices import commander_from_settings
from fleetwatch.actions.judge import Look, Verdict, judge_frames
from fleetwatch.actions.signing import load_private_key, sign_command
from fleetwatch.baselines.model import Baseline, BaselineStore
from fleetwatch.frames import Registry, Schema
from fleetwatch.metrics import Metric
from fleetwatch.sinks.base import SinkRejected, SinkUnavailable
from fleetwatch.state import Migration, StateDB

if TYPE_CHECKING:
    from fleetwatch.actions.devices import Commander
    from fleetwatch.actions.rollout_config import RolloutConfig
    from fleetwatch.config import Settings
    from fleetwatch.sinks.base import Store

log = logging.getLogger(__name__)

Kind = Literal["firmware", "model"]
ACTIVE = ("planned", "baking", "judged")
TERMINAL = ("promoted", "rolled_back", "aborted")
FLEET = "*"

MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            plan TEXT NOT NULL,
            state TEXT NOT NULL,
            stage INTEGER NOT NULL,
            stage_started INTEGER,
            info_spent REAL NOT NULL DEFAULT 0,
            verdict TEXT,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL
        );
        CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            device TEXT NOT NULL,
            role TEXT NOT NULL,
            join_stage INTEGER,
            desired TEXT,
            commanded_at INTEGER,
            sent TEXT,
            sent_at INTEGER,
            adopted_at INTEGER,
            laggard_reported INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (rollout_id, device)
        );
        CREATE TABLE rollout_audit (
            seq INTEGER PRIMARY KEY,
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT,
            stage INTEGER,
            reason TEXT NOT NULL,
            evidence TEXT
        );
        CREATE INDEX rollout_audit_by_rollout ON rollout_audit (rollout_id, seq)
        """,
    )
]


class RolloutError(ValueError):
    """An operator action that the rollout's state does not allow, or a plan that cannot run."""


# -- plan and selection (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """A version to run: "major.minor.patch" (firmware) or the model_id in decimal (model); where to get it."""

    version: str
    url: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Plan:
    """What a rollout does. `stages` and `control_pct` are percents of the eligible devices."""

    kind: Kind
    target: Artifact
    baseline: Artifact
    stages: tuple[float, ...]
    control_pct: float
    bake_s: int
    cohort: tuple[str, ...] = ()
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        values = dict(data)
        values["target"] = Artifact(**values["target"])
        values["baseline"] = Artifact(**values["baseline"])
        values["stages"] = tuple(values["stages"])
        values["cohort"] = tuple(values["cohort"])
        return cls(**values)


@dataclass(frozen=True)
class Selection:
    """Control devices, and the other devices in draw order with the index of the stage each first joins
    (`len(stages)`: only at the promotion, when the last stage is below 100%)."""

    control: tuple[str, ...]
    canary: tuple[tuple[str, int], ...]
    eligible: int

    def canary_at(self, stage: int) -> list[str]:
        return [d for d, k in self.canary if k <= stage]


def matches(tags: Mapping[str, str], selectors: Sequence[str]) -> bool:
    """Whether a device's tags satisfy every selector `tag=value[|value...]`."""
    for selector in selectors:
        name, _, values = selector.partition("=")
        if tags.get(name.strip()) not in {v.strip() for v in values.split("|")}:
            return False
    return True


def select_devices(
    inventory: Mapping[str, Mapping[str, str]],
    *,
    stages: Sequence[float],
    control_pct: float,
    seed: int,
    cohort: Sequence[str] = (),
    stratify_by: Sequence[str] = (),
) -> Selection:
    """Control and canary order, stratified and seeded (see the module docstring)."""
    for selector in cohort:
        if "=" not in selector:
            raise RolloutError(f"cohort selector {selector!r}: expected tag=value[|value...]")
    eligible = sorted(d for d, tags in inventory.items() if matches(tags, cohort))
    if len(eligible) < 2:
        raise RolloutError(f"{len(eligible)} eligible devices for cohort {list(cohort)}: need at least 2")
    tags = list(stratify_by) or sorted({t for row in inventory.values() for t in row})
    strata = [tuple(inventory[d].get(t, "") for t in tags) for d in eligible]
    n = len(eligible)
    n_control = min(max(1, round(control_pct / 100 * n)), n - 1)
    order = np.argsort(_stratified_keys(strata, np.random.default_rng([seed, 0])), kind="stable")
    control, rest = order[:n_control], np.sort(order[n_control:])
    canary_order = rest[np.argsort(_stratified_keys([strata[i] for i in rest], np.random.default_rng([seed, 1])))]
    counts = [min(max(1, round(s / 100 * n)), len(rest)) for s in stages]
    canary = [
        (eligible[i], next((k for k, c in enumerate(counts) if position < c), len(stages)))
        for position, i in enumerate(canary_order.tolist())
    ]
    return Selection(tuple(eligible[i] for i in control.tolist()), tuple(canary), n)


def _stratified_keys(strata: Sequence[tuple[str, ...]], rng: np.random.Generator) -> np.ndarray:
    keys = np.empty(len(strata))
    labels = np.array(["\x1f".join(s) for s in strata], dtype=object)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        keys[members] = (rng.permutation(len(members)) + rng.random()) / len(members)
    return keys


def command(plan: Plan, rollout_id: str, device: str, desired: str, now: int, ttl_s: int) -> dict[str, Any]:
    """The desired-state command for `device`: the target or the baseline artifact, never expiring before
    `now + ttl_s`. Firmware: `version`/`rollback_version` strings; model: `model_id`/`rollback_model_id`."""
    artifact = plan.target if desired == "target" else plan.baseline
    if plan.kind == "firmware":
        version: dict[str, Any] = {"version": artifact.version, "rollback_version": plan.baseline.version}
    else:
        version = {"model_id": int(artifact.version), "rollback_model_id": int(plan.baseline.version)}
    return {
        "device": device,
        **version,
        "url": artifact.url,
        "sha256": artifact.sha256,
        "issued": now,
        "expires": now + ttl_s,
        "rollout_id": rollout_id,
        "nonce": secrets.token_hex(16),
    }


# -- the controller --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transition:
    """One audited event: a state change, a look, a batch of commands or an adoption report."""

    rollout_id: str
    at: int
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    stage: int | None
    reason: str
    evidence: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class RolloutRow:
    """A rollout as stored: its plan, state, stage (0-based), stage start and the bake fraction judged."""

    id: str
    kind: Kind
    plan: Plan
    state: str
    stage: int
    stage_started: int | None
    info_spent: float


class RolloutLog:
    """The persisted rollouts, read side: status, audit trail and devices (creates the tables)."""

    def __init__(self, db: StateDB) -> None:
        db.migrate("rollout", MIGRATIONS)
        self.db = db

    def status(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        """Rollouts (one, or all, newest first) with device counts, laggards and the last verdict."""
        where, params = ("WHERE id = ?", (rollout_id,)) if rollout_id else ("", ())
        rows = self.db.query(f"SELECT id FROM rollouts {where} ORDER BY created DESC, id", params)
        if rollout_id and not rows:
            raise RolloutError(f"no rollout {rollout_id}")
        return [self._status(self.row(r)) for (r,) in rows]

    def _status(self, row: RolloutRow) -> dict[str, Any]:
        counts = self.db.query(
            "SELECT role, COUNT(*), SUM(desired = 'target'), SUM(sent IS NOT NULL AND sent = desired), "
            "SUM(adopted_at IS NOT NULL), SUM(laggard_reported) FROM rollout_devices "
            "WHERE rollout_id = ? GROUP BY role",
            (row.id,),
        )
        verdict = self.db.query("SELECT verdict FROM rollouts WHERE id = ?", (row.id,))[0][0]
        return {
            "id": row.id,
            "kind": row.kind,
            "target": row.plan.target.version,
            "baseline": row.plan.baseline.version,
            "state": row.state,
            "stage": row.stage + 1,
            "stages": list(row.plan.stages),
            "stage_started": row.stage_started,
            "bake_s": row.plan.bake_s,
            "info": row.info_spent,
            "devices": {
                role: {"total": n, "on_target": t or 0, "delivered": s or 0, "adopted": a or 0, "laggards": g or 0}
                for role, n, t, s, a, g in counts
            },
            "verdict": json.loads(verdict) if verdict else None,
        }

    def audit(self, rollout_id: str) -> list[Transition]:
        """Every recorded event of a rollout, oldest first."""
        rows = self.db.query(
            "SELECT rollout_id, at, actor, action, from_state, to_state, stage, reason, evidence "
            "FROM rollout_audit WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        )
        return [Transition(*r[:8], json.loads(r[8]) if r[8] else None) for r in rows]

    def devices(self, rollout_id: str) -> dict[str, dict[str, Any]]:
        """device -> role, join stage (1-based), desired and delivered state, adoption time."""
        rows = self.db.query(
            "SELECT device, role, join_stage, desired, sent, adopted_at FROM rollout_devices WHERE rollout_id = ?",
            (rollout_id,),
        )
        return {
            d: {"role": r, "stage": None if k is None else k + 1, "desired": w, "sent": s, "adopted_at": a}
            for d, r, k, w, s, a in rows
        }

    def pending(self) -> list[str]:
        """Rollouts the controller has work on: the active ones (oldest first), then those with commands
        not yet delivered."""
        active = self.db.query(f"SELECT id FROM rollouts WHERE state IN ({_marks(ACTIVE)}) ORDER BY created", ACTIVE)
        undelivered = self.db.query(
            "SELECT DISTINCT rollout_id FROM rollout_devices "
            "WHERE desired IS NOT NULL AND (sent IS NULL OR sent != desired)"
        )
        return list(dict.fromkeys([r for (r,) in active] + [r for (r,) in undelivered]))

    def metrics(self) -> list[Metric]:
        """Rollouts by state, and the stage and device counts of the active ones (from the database)."""
        states = dict.fromkeys((*ACTIVE, *TERMINAL), 0)
        states.update(self.db.query("SELECT state, COUNT(*) FROM rollouts GROUP BY state"))
        active = [
            self._status(self.row(r))
            for (r,) in self.db.query(f"SELECT id FROM rollouts WHERE state IN ({_marks(ACTIVE)})", ACTIVE)
        ]
        devices = tuple(
            ({"rollout": r["id"], "role": role, "status": status}, float(counts[status]))
            for r in active
            for role, counts in sorted(r["devices"].items())
            for status in ("total", "delivered", "adopted", "laggards")
        )
        return [
            Metric(
                "fleetwatch_rollouts",
                "gauge",
                "Rollouts by state (planned, baking, judged active; promoted, rolled_back, aborted)",
                tuple(({"state": state}, float(n)) for state, n in states.items()),
            ),
            Metric(
                "fleetwatch_rollout_stage",
                "gauge",
                "Stage (1-based) of each active rollout",
                tuple(({"rollout": r["id"], "state": r["state"]}, float(r["stage"])) for r in active),
            ),
            Metric(
                "fleetwatch_rollout_devices",
                "gauge",
                "Devices of each active rollout by role and status (total, delivered, adopted, laggards)",
                devices,
            ),
        ]

    def row(self, rollout_id: str) -> RolloutRow:
        rows = self.db.query(
            "SELECT id, kind, plan, state, stage, stage_started, info_spent FROM rollouts WHERE id = ?", (rollout_id,)
        )
        if not rows:
            raise RolloutError(f"no rollout {rollout_id}")
        rid, kind, plan, state, stage, started, info = rows[0]
        return RolloutRow(rid, kind, Plan.from_json(json.loads(plan)), state, stage, started, info)

    def roles(self, rollout_id: str) -> list[tuple[str, str, int]]:
        """(device, role, join stage; control: -1) of the devices (not the fleet-wide row)."""
        return self.db.query(
            "SELECT device, role, COALESCE(join_stage, -1) FROM rollout_devices "
            "WHERE rollout_id = ? AND role != 'fleet' ORDER BY device",
            (rollout_id,),
        )


class RolloutController:
    """Runs rollouts: operator actions (`start`, `promote`, `rollback`, `abort`) and the scheduled `tick`.

    Everything it decides is in the state database, so a new controller on the same database (a daemon
    restart) carries on where the last one stopped. `store` is where `tick` reads telemetry; the operator
    actions do not need it (the CLI runs them beside a daemon that holds the embedded store).
    """

    def __init__(
        self,
        db: StateDB,
        commander: Commander,
        config: RolloutConfig,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        store: Store | None = None,
        schema: Schema | None = None,
        baselines: BaselineStore | None = None,
    ) -> None:
        self.log = RolloutLog(db)
        self.db, self.store, self.commander, self.config = db, store, commander, config
        self.signing_key = signing_key
        self.schema = schema or Registry.builtin().get(1)
        self.baselines = baselines

    # -- operator actions ------------------------------------------------------------------------
    def start(
        self, rollout_id: str, plan: Plan, selection: Selection, *, now: int, actor: str, reason: str = ""
    ) -> list[Transition]:
        """Record the rollout (planned), enter stage 1 and send its commands."""
        active = self.db.query(f"SELECT id FROM rollouts WHERE state IN ({_marks(ACTIVE)})", ACTIVE)
        if active:
            raise RolloutError(f"rollout {active[0][0]} is active: finish it first (one desired state per device)")
        if self.db.query("SELECT 1 FROM rollouts WHERE id = ?", (rollout_id,)):
            raise RolloutError(f"rollout {rollout_id} exists")
        rows = [(rollout_id, d, "control", None) for d in selection.control]
        rows += [(rollout_id, d, "canary", k) for d, k in selection.canary]
        summary = {
            "plan": plan.to_json(),
            "eligible": selection.eligible,
            "control": list(selection.control),
            "canary": [{"device": d, "stage": k + 1} for d, k in selection.canary],
        }
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO rollouts (id, kind, plan, state, stage, created, updated) "
                "VALUES (?, ?, ?, 'planned', 0, ?, ?)",
                (rollout_id, plan.kind, json.dumps(plan.to_json()), now, now),
            )
            tx.executemany(
                "INSERT INTO rollout_devices (rollout_id, device, role, join_stage) VALUES (?, ?, ?, ?)", rows
            )
            self._audit(tx, rollout_id, now, actor, "create", None, "planned", None, reason or "start", summary)
        events = [self._last_event(rollout_id)]
        events += self._enter_stage(self.log.row(rollout_id), 0, now, actor, reason or "start")
        return events + self._flush(self.log.row(rollout_id), now)

    def promote(self, rollout_id: str, *, now: int, actor: str, reason: str, force: bool = False) -> list[Transition]:
        """Advance to the next stage (or promote the last): from `judged`, or from `baking` with `force`."""
        row = self.log.row(rollout_id)
        if row.state != "judged" and not (force and row.state == "baking"):
            hint = " (the stage is still baking: --force to promote anyway)" if row.state == "baking" else ""
            raise RolloutError(f"rollout {rollout_id} is {row.state}: cannot promote{hint}")
        return self._advance(row, now, actor, reason) + self._flush(self.log.row(rollout_id), now)

    def rollback(self, rollout_id: str, *, now: int, actor: str, reason: str) -> list[Transition]:
        """Return every canary device to the baseline (state rolled_back)."""
        return self._end(rollout_id, "rolled_back", now, actor, reason)

    def abort(self, rollout_id: str, *, now: int, actor: str, reason: str) -> list[Transition]:
        """Cancel: as a rollback (canary devices return to the baseline), recorded as aborted, not as a
        verdict on the version."""
        return self._end(rollout_id, "aborted", now, actor, reason)

    def _end(self, rollout_id: str, state: str, now: int, actor: str, reason: str) -> list[Transition]:
        row = self.log.row(rollout_id)
        if row.state not in ACTIVE:
            raise RolloutError(f"rollout {rollout_id} is {row.state}: nothing to {state.replace('_', ' ')}")
        return self._revert(row, state, now, actor, reason, None) + self._flush(self.log.row(rollout_id), now)

    # -- the scheduled step ----------------------------------------------------------------------
    def tick(self, now: int) -> list[Transition]:
        """One controller step at `now` (Unix s), for the daemon's scheduler: start planned rollouts, send
        undelivered commands, record adoption, report laggards, judge baking stages, act on verdicts."""
        events: list[Transition] = []
        for rollout_id in self.log.pending():
            try:
                events += self._step(self.log.row(rollout_id), now)
            except Exception:
                log.exception("rollout %s: step at %s failed", rollout_id, now)
        return events

    def _step(self, row: RolloutRow, now: int) -> list[Transition]:
        events: list[Transition] = []
        if row.state == "planned":
            events += self._enter_stage(row, 0, now, "controller", "resume: enter stage 1")
            row = self.log.row(row.id)
        events += self._flush(row, now)
        if row.state not in ("baking", "judged") or row.stage_started is None:
            return events
        if self.store is None:
            raise RolloutError("the controller has no store to read telemetry from")
        frames = self.store.read_frames(
            row.stage_started, now, schema=self.schema, devices=[d for d, _, _ in self.log.roles(row.id)]
        )
        events += self._adoption(row, frames, now)
        events += self._look(row, frames, now)
        return events + self._flush(self.log.row(row.id), now)

    def _look(self, row: RolloutRow, frames: Mapping[str, np.ndarray], now: int) -> list[Transition]:
        info = min(1.0, (now - (row.stage_started or now)) / row.plan.bake_s)
        if row.state == "baking" and info <= row.info_spent:
            return []
        look = Look(info, row.info_spent) if row.state == "baking" else Look(1.0, 1.0)
        canary, control = self._arms(row, frames)
        verdict = judge_frames(canary, control, self.config.judge, look, baselines=self._baselines(canary, control))
        evidence = verdict.to_json()
        reason = "; ".join(verdict.reasons)
        self._record(row, verdict, now)
        events: list[Transition] = []
        if row.state == "baking":
            with self.db.transaction() as tx:
                tx.execute(
                    "UPDATE rollouts SET info_spent = ?, verdict = ?, updated = ? WHERE id = ?",
                    (info, json.dumps(evidence), now, row.id),
                )
                self._audit(
                    tx,
                    row.id,
                    now,
                    "controller",
                    "judge",
                    row.state,
                    row.state,
                    row.stage,
                    f"{verdict.verdict}: {reason}",
                    evidence,
                )
            events.append(self._last_event(row.id))
        if verdict.verdict == "rollback":
            return events + self._revert(row, "rolled_back", now, "controller", f"judge: {reason}", evidence)
        if row.state != "baking" or not look.final:
            return events
        if verdict.verdict == "promote" and self.config.auto_promote:
            return events + self._advance(row, now, "controller", "judge: promote")
        why = (
            "judge: promote; awaiting operator"
            if verdict.verdict == "promote"
            else f"end of bake, inconclusive: {reason}"
        )
        return events + self._set_state(row, "judged", now, "controller", why, evidence)

    def _record(self, row: RolloutRow, verdict: Verdict, now: int) -> None:
        """The look for the dashboards (`write_judgement`); a store that cannot take it costs only the plot."""
        if self.store is None:
            return
        try:
            write_judgement(self.store, row.id, stage_label(row.plan.stages, row.stage), verdict, now)
        except (SinkUnavailable, SinkRejected) as exc:
            log.warning("rollout %s: judgement at %s not written to the store (%s)", row.id, now, exc)

    def _baselines(self, *arms: Mapping[str, np.ndarray]) -> dict[int, Baseline] | None:
        """The latest baseline of each model the arms ran (None without a baseline store: the judge's defaults)."""
        if self.baselines is None:
            return None
        return self.baselines.latest_for(np.unique(np.concatenate([a["model_id"] for a in arms]).astype(str)).tolist())

    def _arms(
        self, row: RolloutRow, frames: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Windows of canary devices running the target, and of control devices running the baseline."""
        devices = self.log.roles(row.id)
        canary = [d for d, role, joined in devices if role == "canary" and joined <= row.stage]
        control = [d for d, role, _ in devices if role == "control"]
        device = np.asarray(frames["device"]).astype(str)
        column = "fw_version" if row.kind == "firmware" else "model_id"
        running = np.asarray(frames[column]).astype(str)
        arms = []
        for members, artifact in ((canary, row.plan.target), (control, row.plan.baseline)):
            mask = np.isin(device, members) & (running == artifact.version)
            arms.append({name: np.asarray(values)[mask] for name, values in frames.items()})
        return arms[0], arms[1]

    def _adoption(self, row: RolloutRow, frames: Mapping[str, np.ndarray], now: int) -> list[Transition]:
        column = "fw_version" if row.kind == "firmware" else "model_id"
        on_target = np.asarray(frames[column]).astype(str) == row.plan.target.version
        device = np.asarray(frames["device"]).astype(str)[on_target]
        times = np.asarray(frames["time"])[on_target]
        first: dict[str, int] = {}
        for d, t in zip(device.tolist(), times.tolist(), strict=True):
            first[d] = min(first.get(d, t), t)
        waiting = self.db.query(
            "SELECT device, sent_at, laggard_reported FROM rollout_devices WHERE rollout_id = ? AND role != 'fleet' "
            "AND desired = 'target' AND adopted_at IS NULL",
            (row.id,),
        )
        adopted = [(first[d], row.id, d) for d, _, _ in waiting if d in first]
        deadline = self.config.adoption_deadline_s
        late = [
            d
            for d, sent_at, reported in waiting
            if d not in first and not reported and sent_at is not None and now - sent_at >= deadline
        ]
        with self.db.transaction() as tx:
            tx.executemany("UPDATE rollout_devices SET adopted_at = ? WHERE rollout_id = ? AND device = ?", adopted)
            if not late:
                return []
            tx.executemany(
                "UPDATE rollout_devices SET laggard_reported = 1 WHERE rollout_id = ? AND device = ?",
                [(row.id, d) for d in late],
            )
            evidence = {"devices": late, "transport": self.commander.status(late)}
            reason = f"{len(late)} devices did not report {row.plan.target.version} within {deadline} s"
            self._audit(tx, row.id, now, "controller", "adoption", row.state, row.state, row.stage, reason, evidence)
        return [self._last_event(row.id)]

    # -- transitions -----------------------------------------------------------------------------
    def _enter_stage(self, row: RolloutRow, stage: int, now: int, actor: str, reason: str) -> list[Transition]:
        with self.db.transaction() as tx:
            self._move(tx, row, "baking", now, stage=stage, stage_started=now)
            tx.execute(
                "UPDATE rollout_devices SET desired = 'target', commanded_at = ? "
                "WHERE rollout_id = ? AND role = 'canary' AND join_stage <= ? AND desired IS NULL",
                (now, row.id, stage),
            )
            count = tx.execute(
                "SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = ? AND role = 'canary' AND join_stage <= ?",
                (row.id, stage),
            ).fetchone()[0]
            pct = row.plan.stages[stage]
            text = f"{reason}: stage {stage + 1} of {len(row.plan.stages)} ({pct:g}%, {count} canary devices)"
            self._audit(tx, row.id, now, actor, "stage", row.state, "baking", stage, text, None)
        return [self._last_event(row.id)]

    def _advance(self, row: RolloutRow, now: int, actor: str, reason: str) -> list[Transition]:
        if row.stage + 1 < len(row.plan.stages):
            return self._enter_stage(row, row.stage + 1, now, actor, reason)
        with self.db.transaction() as tx:
            self._move(tx, row, "promoted", now)
            tx.execute(
                "UPDATE rollout_devices SET desired = 'target', commanded_at = ? "
                "WHERE rollout_id = ? AND desired IS NULL",
                (now, row.id),
            )
            if self.commander.fleet_wide:
                tx.execute(
                    "INSERT INTO rollout_devices (rollout_id, device, role, desired, commanded_at) "
                    "VALUES (?, ?, 'fleet', 'target', ?)",
                    (row.id, FLEET, now),
                )
            self._audit(tx, row.id, now, actor, "promote", row.state, "promoted", row.stage, reason, None)
        return [self._last_event(row.id)]

    def _revert(
        self, row: RolloutRow, state: str, now: int, actor: str, reason: str, evidence: dict[str, Any] | None
    ) -> list[Transition]:
        with self.db.transaction() as tx:
            self._move(tx, row, state, now)
            tx.execute(
                "UPDATE rollout_devices SET desired = 'baseline', commanded_at = ? "
                "WHERE rollout_id = ? AND role = 'canary' AND desired = 'target'",
                (now, row.id),
            )
            action = {"rolled_back": "rollback", "aborted": "abort"}[state]
            self._audit(tx, row.id, now, actor, action, row.state, state, row.stage, reason, evidence)
        return [self._last_event(row.id)]

    def _set_state(
        self, row: RolloutRow, state: str, now: int, actor: str, reason: str, evidence: dict[str, Any] | None
    ) -> list[Transition]:
        with self.db.transaction() as tx:
            self._move(tx, row, state, now)
            self._audit(tx, row.id, now, actor, "judged", row.state, state, row.stage, reason, evidence)
        return [self._last_event(row.id)]

    def _move(self, tx: Any, row: RolloutRow, state: str, now: int, **changes: Any) -> None:
        """Compare-and-set: the rollout must still be in the state and stage `row` saw."""
        sets = ", ".join(["state = ?", "updated = ?"] + [f"{k} = ?" for k in changes])
        if "stage" in changes:
            sets += ", info_spent = 0, verdict = NULL"
        done = tx.execute(
            f"UPDATE rollouts SET {sets} WHERE id = ? AND state = ? AND stage = ?",
            (state, now, *changes.values(), row.id, row.state, row.stage),
        ).rowcount
        if not done:
            raise RolloutError(f"rollout {row.id} changed meanwhile (was {row.state}, stage {row.stage + 1}): retry")

    # -- commands --------------------------------------------------------------------------------
    def _flush(self, row: RolloutRow, now: int) -> list[Transition]:
        """Send every desired state not yet delivered; record what went out."""
        pending = self.db.query(
            "SELECT device, desired FROM rollout_devices WHERE rollout_id = ? AND desired IS NOT NULL "
            "AND (sent IS NULL OR sent != desired) ORDER BY device",
            (row.id,),
        )
        if not pending:
            return []
        ttl = self.config.command_ttl_s
        wires = [
            (device, sign_command(command(row.plan, row.id, device, desired, now, ttl), self.signing_key))
            for device, desired in pending
        ]
        results = self.commander.send(wires)
        delivered = [(desired, now, row.id, d) for d, desired in pending if results.get(d, "no result") is None]
        failed = {d: results.get(d, "no result") for d, _ in pending if results.get(d, "no result") is not None}
        with self.db.transaction() as tx:
            tx.executemany(
                "UPDATE rollout_devices SET sent = ?, sent_at = ? WHERE rollout_id = ? AND device = ?", delivered
            )
            counts = {k: sum(1 for _, v in pending if v == k) for k in ("target", "baseline")}
            reason = (
                f"{len(delivered)} of {len(pending)} commands delivered "
                f"({counts['target']} target, {counts['baseline']} baseline)"
            )
            self._audit(
                tx,
                row.id,
                now,
                "controller",
                "command",
                row.state,
                row.state,
                row.stage,
                reason,
                {"failed": failed} if failed else None,
            )
        if failed:
            log.warning("rollout %s: %d commands not delivered, retried next tick", row.id, len(failed))
        return [self._last_event(row.id)]

    def _audit(
        self,
        tx: Any,
        rollout_id: str,
        at: int,
        actor: str,
        action: str,
        from_state: str | None,
        to_state: str | None,
        stage: int | None,
        reason: str,
        evidence: dict[str, Any] | None,
    ) -> None:
        tx.execute(
            "INSERT INTO rollout_audit (rollout_id, at, actor, action, from_state, to_state, stage, reason, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rollout_id,
                at,
                actor,
                action,
                from_state,
                to_state,
                stage,
                reason,
                json.dumps(evidence) if evidence else None,
            ),
        )

    def _last_event(self, rollout_id: str) -> Transition:
        return self.log.audit(rollout_id)[-1]


def stage_label(stages: Sequence[float], stage: int) -> str:
    """The `stage` tag of a judgement: "stage 2 (25%)" for the second of the plan's stages (0-based `stage`)."""
    return f"stage {stage + 1} ({stages[stage]:g}%)"


def write_judgement(store: Store, rollout_id: str, stage: str, verdict: Verdict, now: int) -> int:
    """Write one look of the judge as `rollout` points at `now`: per metric and arm (canary, control) the
    arm's median device value (`estimate`) with its interval (`lower`, `upper`; NaN where unbounded or
    without data), in the metric's natural unit, the devices with a value (`n_devices`) and the verdict.
    Tags `rollout_id`, `stage`, `arm`, `metric`; returns the points written."""
    rows = [
        (m.metric, arm, estimate, lower, upper, n)
        for m in verdict.metrics
        for arm, estimate, lower, upper, n in (
            ("canary", m.canary_median, m.canary_low, m.canary_high, m.n_canary),
            ("control", m.control_median, m.control_low, m.control_high, m.n_control),
        )
    ]
    metric, arm, estimate, lower, upper, n = zip(*rows, strict=True)

    def finite(values: Sequence[float]) -> np.ndarray:
        array = np.asarray(values, dtype=float)
        return np.where(np.isfinite(array), array, np.nan)

    count = len(rows)
    return store.write_table(
        "rollout",
        np.full(count, now, dtype=np.int64),
        {
            "rollout_id": np.full(count, rollout_id, dtype=object),
            "stage": np.full(count, stage, dtype=object),
            "arm": np.asarray(arm, dtype=object),
            "metric": np.asarray(metric, dtype=object),
        },
        {
            "estimate": finite(estimate),
            "lower": finite(lower),
            "upper": finite(upper),
            "n_devices": np.asarray(n, dtype=np.int64),
            "verdict": np.full(count, verdict.verdict, dtype=object),
        },
    )


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def controller_from_settings(
    settings: Settings, db: StateDB, store: Store | None = None, *, commander: Commander | None = None
) -> RolloutController:
    """The controller the `[rollout]` section describes: commands over `rollout.transport` (or through
    `commander`), signed with the configured key (ValueError naming the file when it cannot be read).
    The daemon's scheduled `tick` needs `store`; the CLI's operator actions do not."""
    config = settings.rollout
    key = load_private_key(config.signing_key_path(settings.data_dir))
    commander = commander or commander_from_settings(settings, config)
    return RolloutController(db, commander, config, key, store=store, baselines=BaselineStore(settings.baselines_dir))
