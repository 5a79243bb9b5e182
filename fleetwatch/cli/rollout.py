"""`fleetwatch rollout start | status | promote | rollback | abort | judge | keygen`: staged canary rollouts.

`start`, `promote`, `rollback` and `abort` change the rollout in the state database and send the commands
they imply at once (over `rollout.transport`); the daemon's controller does the rest (looks, verdicts,
next stages). `judge` is the same judge over any two lists of devices and a time range, read from the
configured store. See docs/rollouts.md.
"""

from __future__ import annotations

import getpass
import json
import time
import zlib
from pathlib import Path
from typing import Any

import click
import numpy as np

from fleetwatch.actions.judge import Look, MetricEvidence, Verdict, judge_frames
from fleetwatch.actions.rollout import (
    Artifact,
    Plan,
    RolloutController,
    RolloutError,
    RolloutLog,
    Transition,
    controller_from_settings,
    select_devices,
)
from fleetwatch.actions.rollout_config import RolloutConfig, check_stages, public_key_path
from fleetwatch.actions.signing import generate_private_key, public_pem, write_key_pair
from fleetwatch.baselines.model import BaselineStore
from fleetwatch.cli._common import config_option, settings_from
from fleetwatch.cli.backfill import parse_time
from fleetwatch.cli.quarantine import parse_duration
from fleetwatch.config import Settings
from fleetwatch.drift.scopes import read_inventory
from fleetwatch.frames import Registry, format_fw_version, parse_fw_version
from fleetwatch.sinks import open_store
from fleetwatch.state import StateDB


@click.group("rollout")
def command() -> None:
    """Staged canary rollouts of firmware or models, judged against a control group."""


def _actor() -> str:
    return f"{getpass.getuser()}@cli"


def _controller(settings: Settings) -> RolloutController:
    try:
        return controller_from_settings(settings, StateDB(settings.state_path))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a percentage like 5% or 12.5") from None
    if not 0 < value <= 100:
        raise click.BadParameter(f"{text!r}: a percentage in (0, 100]")
    return value


def _stages(canary: str | None, stages: str | None, config: RolloutConfig) -> tuple[float, ...]:
    """`--stages` as given, else the configured stages from `--canary` on; they must agree."""
    first = _percent(canary) if canary else None
    if stages:
        values = [_percent(s) for s in stages.split(",")]
        if first is not None and values[0] != first:
            raise click.BadParameter(f"--canary {canary} differs from the first of --stages {stages}")
    else:
        values = config.stages if first is None else [first, *(s for s in config.stages if s > first)]
    try:
        return tuple(check_stages(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _print_events(events: list[Transition]) -> None:
    for e in events:
        arrow = f"{e.from_state} -> {e.to_state}" if e.from_state != e.to_state else (e.to_state or "")
        click.echo(f"{e.rollout_id}: {e.action:<9} {arrow:<24} {e.reason}")


@command.command("start")
@click.option("--firmware", help="Roll out this firmware version (major.minor.patch).")
@click.option("--model", help="Roll out this model (model_id: the CRC-32 of the model blob, decimal or 0x hex).")
@click.option("--baseline", required=True, help="What the fleet runs now (version or model_id): revert target.")
@click.option("--url", default="", help="Where devices fetch the new artifact (notehub:<file> for Notehub DFU).")
@click.option("--sha256", default="", help="SHA-256 of the new artifact (hex).")
@click.option("--baseline-url", default="", help="Where devices fetch the baseline (empty: their kept image).")
@click.option("--baseline-sha256", default="", help="SHA-256 of the baseline artifact.")
@click.option("--canary", help="First stage: share of the eligible fleet, e.g. 5%.")
@click.option("--control", help="Control share held on the baseline (default rollout.control_pct).")
@click.option("--stages", help="Comma-separated stage shares, e.g. 5,25,100 (default rollout.stages).")
@click.option("--bake", help="Bake time per stage, e.g. 6h (default rollout.bake_s).")
@click.option("--cohort", multiple=True, help="Only devices with this tag, e.g. site=north or site=north|east.")
@click.option("--seed", type=int, help="Seed of the draw (default: from the rollout id).")
@click.option("--id", "rollout_id", help="Rollout id (default: <kind>-<version>-<UTC time>).")
@click.option("--reason", default="", help="Why (kept in the audit).")
@click.option("--dry-run", is_flag=True, help="Show the draw; record and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def start(
    firmware: str | None,
    model: str | None,
    baseline: str,
    url: str,
    sha256: str,
    baseline_url: str,
    baseline_sha256: str,
    canary: str | None,
    control: str | None,
    stages: str | None,
    bake: str | None,
    cohort: tuple[str, ...],
    seed: int | None,
    rollout_id: str | None,
    reason: str,
    dry_run: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Start a rollout: draw control and canary devices from the inventory, enter stage 1, send commands."""
    if (firmware is None) == (model is None):
        raise click.UsageError("give exactly one of --firmware X.Y.Z or --model ID")
    settings = settings_from(config_path)
    config = settings.rollout
    kind = "firmware" if firmware else "model"
    target, base = (_version(kind, v) for v in ((firmware or model or ""), baseline))
    if settings.fleet.inventory is None:
        raise click.ClickException("fleet.inventory is not set: the draw needs the inventory CSV")
    now = int(time.time())
    rollout_id = rollout_id or f"{kind}-{target}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
    plan = Plan(
        kind=kind,
        target=Artifact(target, url, sha256.lower()),
        baseline=Artifact(base, baseline_url, baseline_sha256.lower()),
        stages=_stages(canary, stages, config),
        control_pct=_percent(control) if control else config.control_pct,
        bake_s=parse_duration(bake) if bake else config.bake_s,
        cohort=cohort,
        seed=seed if seed is not None else zlib.crc32(rollout_id.encode()),
    )
    try:
        selection = select_devices(
            read_inventory(settings.fleet.inventory),
            stages=plan.stages,
            control_pct=plan.control_pct,
            seed=plan.seed,
            cohort=cohort,
            stratify_by=config.stratify_by,
        )
    except (RolloutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    draw = {
        "id": rollout_id,
        "plan": plan.to_json(),
        "eligible": selection.eligible,
        "control": list(selection.control),
        "stages": [selection.canary_at(k) for k in range(len(plan.stages))],
    }
    if dry_run:
        _show_draw(draw, as_json)
        return
    try:
        events = _controller(settings).start(rollout_id, plan, selection, now=now, actor=_actor(), reason=reason)
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**draw, "events": [e.__dict__ for e in events]}))
    else:
        _show_draw(draw, False)
        _print_events(events)


def _version(kind: str, text: str) -> str:
    """A firmware version normalised to major.minor.patch, or a model_id in decimal."""
    try:
        if kind == "firmware":
            return format_fw_version(parse_fw_version(text))
        if 0 <= int(text, 0) < 2**32:
            return str(int(text, 0))
    except ValueError:
        pass
    expected = "major.minor.patch" if kind == "firmware" else "a model_id, 0 .. 2^32 - 1 (decimal or 0x hex)"
    raise click.BadParameter(f"{text!r} is not {expected}")


def _show_draw(draw: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(draw))
        return
    plan = draw["plan"]
    click.echo(
        f"{draw['id']}: {plan['kind']} {plan['baseline']['version']} -> {plan['target']['version']}, "
        f"{draw['eligible']} eligible devices, control {len(draw['control'])}, "
        f"bake {plan['bake_s']} s, seed {plan['seed']}"
    )
    for k, devices in enumerate(draw["stages"]):
        click.echo(f"  stage {k + 1} ({plan['stages'][k]:g}%): {len(devices)} canary devices")


@command.command("status")
@click.argument("rollout_id", required=False)
@click.option("--audit", is_flag=True, help="Also print the audit trail (needs ROLLOUT_ID).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def status(rollout_id: str | None, audit: bool, as_json: bool, config_path: Path | None) -> None:
    """Rollouts (or one): state, stage, devices commanded / delivered / adopted, the last verdict."""
    log = RolloutLog(StateDB(settings_from(config_path).state_path))
    try:
        rows = log.status(rollout_id)
        trail = log.audit(rollout_id) if audit and rollout_id else []
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps({"rollouts": rows, "audit": [e.__dict__ for e in trail]} if audit else {"rollouts": rows})
        )
        return
    for r in rows:
        click.echo(
            f"{r['id']}: {r['state']}, {r['kind']} {r['baseline']} -> {r['target']}, stage {r['stage']} of "
            f"{len(r['stages'])} ({r['stages'][r['stage'] - 1]:g}%), judged {r['info']:.0%} of the bake"
        )
        for role, c in sorted(r["devices"].items()):
            click.echo(
                f"  {role:<8} {c['total']:>5} devices, {c['on_target']} on target, {c['delivered']} delivered, "
                f"{c['adopted']} adopted, {c['laggards']} late"
            )
        if r["verdict"]:
            click.echo(f"  last look: {r['verdict']['verdict']}: {'; '.join(r['verdict']['reasons'])}")
    for e in trail:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at))
        click.echo(f"{when} {e.actor:<16} {e.action:<9} {e.from_state or '-'} -> {e.to_state or '-'}: {e.reason}")


def _operator(action: str, rollout_id: str, reason: str, config_path: Path | None, **options: Any) -> None:
    controller = _controller(settings_from(config_path))
    try:
        events = getattr(controller, action)(rollout_id, now=int(time.time()), actor=_actor(), reason=reason, **options)
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    _print_events(events)


@command.command("promote")
@click.argument("rollout_id")
@click.option("--force", is_flag=True, help="Promote a stage that is still baking.")
@click.option("--reason", required=True, help="Why (kept in the audit).")
@config_option
def promote(rollout_id: str, force: bool, reason: str, config_path: Path | None) -> None:
    """Advance a judged rollout to its next stage (the last stage: promote to every device)."""
    _operator("promote", rollout_id, reason, config_path, force=force)


@command.command("rollback")
@click.argument("rollout_id")
@click.option("--reason", required=True, help="Why (kept in the audit).")
@config_option
def rollback(rollout_id: str, reason: str, config_path: Path | None) -> None:
    """Return every canary device to the baseline: the new version is bad."""
    _operator("rollback", rollout_id, reason, config_path)


@command.command("abort")
@click.argument("rollout_id")
@click.option("--reason", required=True, help="Why (kept in the audit).")
@config_option
def abort(rollout_id: str, reason: str, config_path: Path | None) -> None:
    """Cancel the rollout (canary devices return to the baseline); no verdict on the version."""
    _operator("abort", rollout_id, reason, config_path)


def _device_list(path: Path) -> list[str]:
    devices = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not devices:
        raise click.BadParameter(f"{path} lists no devices (one device id per line)")
    return devices


@command.command("judge")
@click.option(
    "--canary",
    "canary_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Canary devices, one id per line.",
)
@click.option(
    "--control",
    "control_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Control devices, one id per line.",
)
@click.option("--from", "start", required=True, help="Unix s or ISO time (windows starting at or after).")
@click.option("--to", "end", required=True, help="Unix s or ISO time (windows starting before).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: verdict, metrics, guardrails, reasons.")
@config_option
def judge(canary_file: Path, control_file: Path, start: str, end: str, as_json: bool, config_path: Path | None) -> None:
    """Judge canary devices against control devices over [FROM, TO) as one final look: every metric, its
    estimate and interval, the tests, the guardrails, and the verdict (promote, continue or rollback)."""
    settings = settings_from(config_path)
    canary, control = _device_list(canary_file), _device_list(control_file)
    store = open_store(settings.store_url, read_only=True)
    try:
        frames = store.read_frames(
            parse_time(start), parse_time(end), schema=Registry.builtin().get(1), devices=canary + control
        )
    finally:
        store.close()
    device = frames["device"].astype(str)
    arms = [{k: v[np.isin(device, members)] for k, v in frames.items()} for members in (canary, control)]
    baselines = BaselineStore(settings.baselines_dir).latest_for(np.unique(frames["model_id"].astype(str)).tolist())
    verdict = judge_frames(arms[0], arms[1], settings.rollout.judge, Look(1.0), baselines=baselines)
    if as_json:
        click.echo(json.dumps(verdict.to_json()))
    else:
        _print_verdict(verdict)


def _effect(metric: MetricEvidence, value: float) -> str:
    """A ratio as x1.25, a difference as +0.02."""
    return f"x{value:.3g}" if metric.scale == "ratio" else f"{value:+.3g}"


def _print_verdict(verdict: Verdict) -> None:
    click.echo(f"verdict: {verdict.verdict} ({verdict.n_canary} canary, {verdict.n_control} control devices)")
    for reason in verdict.reasons:
        click.echo(f"  - {reason}")
    click.echo(
        f"{'metric':<15}{'status':<14}{'canary':>10}{'control':>10}  {'canary vs control [interval]':<30}"
        f"{'limit':>9}{'p worse':>10}{'p nonInf':>10}"
    )
    for m in verdict.metrics:
        shown = f"{_effect(m, m.estimate)} [{m.ci_low:.3g}, {m.ci_high:.3g}]" if m.status != "no_data" else "-"
        click.echo(
            f"{m.metric:<15}{m.status:<14}{m.canary_median:>10.4g}{m.control_median:>10.4g}  {shown:<30}"
            f"{_effect(m, m.limit):>9}{m.p_worse_holm:>10.2g}{m.p_noninferior:>10.2g}"
        )
    for g in verdict.guardrails:
        click.echo(f"guardrail {g.name}: {'TRIPPED' if g.tripped else 'ok'} ({g.detail})")
    for what, source in verdict.sources.items():
        click.echo(f"{what}: {source}")


@command.command("keygen")
@config_option
def keygen(config_path: Path | None) -> None:
    """Create the command-signing key pair (rollout.signing_key; never overwritten) and print the public key."""
    settings = settings_from(config_path)
    private = settings.rollout.signing_key_path(settings.data_dir)
    key = generate_private_key()
    try:
        write_key_pair(key, private, public_key_path(private))
    except FileExistsError:
        raise click.ClickException(f"{private} exists: a signing key is never overwritten") from None
    click.echo(f"private key: {private} (mode 0600)\npublic key:  {public_key_path(private)}")
    click.echo(public_pem(key.public_key()).decode("ascii"), nl=False)
