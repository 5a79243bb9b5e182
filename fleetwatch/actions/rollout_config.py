"""The `[rollout]` config section: stages, bake time, the judge's margins and guardrails, keys, transports.

The daemon embeds `RolloutConfig` in the root config as `rollout`; Notehub's API URL, token and project
come from the root `[notehub]` section. docs/rollouts.md explains each default.

>>> cfg = RolloutConfig.model_validate({"stages": [10, 50, 100], "judge": {"accuracy_drop": 0.01}})
>>> cfg.stages, cfg.judge.alpha_rollback, cfg.command_topic
([10.0, 50.0, 100.0], 0.05, 'fleet/{device}/cmd/ota')
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from fleetwatch.configbase import Section, check_command_topic

Spending = Literal["pocock", "obrien_fleming"]


class JudgeConfig(Section):
    """How canary and control are compared (see `fleetwatch.actions.judge`)."""

    alpha_rollback: float = Field(
        0.05, gt=0, lt=0.5, description="Family-wise error (Holm across metrics) of a statistical rollback per stage."
    )
    alpha_promote: float = Field(
        0.05, gt=0, lt=0.5, description="Error of promoting a canary that is worse than a margin (each metric)."
    )
    spending: Spending = Field(
        "pocock",
        description="Lan-DeMets alpha spending over the looks of a stage: pocock (spends early: quick rollbacks) "
        "or obrien_fleming (keeps alpha for the end of the bake).",
    )
    min_devices: int = Field(8, ge=2, description="Devices per arm, each with min_windows windows, before a promote.")
    min_windows: int = Field(3, ge=1, description="Windows a device needs to count towards min_devices.")
    anomaly_rate_ratio: float = Field(1.25, gt=1, description="Margin: canary/control anomaly rate.")
    latency_p95_ratio: float = Field(1.10, gt=1, description="Margin: canary/control p95 latency.")
    accuracy_drop: float = Field(0.02, gt=0, lt=1, description="Margin: estimated accuracy drop (absolute).")
    confidence_psi: float = Field(
        0.05, gt=0, description="Margin: rise of the PSI of the confidence histogram against the reference."
    )
    memory_pct: float = Field(5.0, gt=0, description="Margin: rise of peak RAM, percentage points.")
    reboot_rate: float = Field(0.01, gt=0, description="Margin: rise of unexpected reboots per window.")
    memory_ceiling_pct: float = Field(
        95.0, gt=0, le=100, description="Guardrail: canary devices peaking at or above this % of RAM."
    )
    reboot_excess_rate: float = Field(
        0.05, gt=0, description="Guardrail: unexpected reboots per window, canary minus control."
    )
    reboot_min_events: int = Field(3, ge=1, description="Guardrail: unexpected canary reboots needed to trip.")


class RolloutNotehubConfig(Section):
    """Commands through the Notehub API (API URL, token and project: the root `[notehub]` section)."""

    env_var: str = Field("fleetwatch_ota", description="Environment variable that carries the signed command.")
    dfu: bool = Field(
        False,
        description="Also start a host-firmware DFU (firmware rollouts; url = notehub:<file uploaded to Notehub>).",
    )
    fleet_uid: str | None = Field(
        None, description='On promotion, also set the fleet\'s variable (a fleet-wide command, device "*").'
    )
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one API request.")


class RolloutConfig(Section):
    transport: Literal["mqtt", "notehub"] = Field("mqtt", description="How commands reach devices.")
    stages: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 100.0],
        description="Canary share of the eligible fleet at each stage, percent, ascending; the last may be 100.",
    )
    control_pct: float = Field(5.0, gt=0, lt=100, description="Control share held on the baseline, percent.")
    bake_s: int = Field(6 * 3600, gt=0, description="How long each stage bakes before it may be promoted.")
    auto_promote: bool = Field(True, description="Advance on a promote verdict (off: wait for `rollout promote`).")
    adoption_deadline_s: int = Field(
        2 * 3600, gt=0, description="Devices not reporting the new version this long after the command are reported."
    )
    command_ttl_s: int = Field(7 * 24 * 3600, gt=0, description="A command expires this long after it is issued.")
    command_topic: str = Field("fleet/{device}/cmd/ota", description="MQTT topic of a device's desired state.")
    signing_key: Path | None = Field(
        None, description="ECDSA P-256 private key, PEM (default: <data_dir>/keys/ota-signing.pem)."
    )
    stratify_by: list[str] = Field(
        default_factory=list, description="Inventory tags to stratify canary and control by (empty: every tag)."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    notehub: RolloutNotehubConfig = Field(default_factory=RolloutNotehubConfig)

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[float]) -> list[float]:
        return check_stages(value)

    @field_validator("command_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_command_topic(value)

    def signing_key_path(self, data_dir: Path) -> Path:
        return self.signing_key or data_dir / "keys" / "ota-signing.pem"


def check_stages(stages: list[float]) -> list[float]:
    """Stages as percents: strictly ascending, each in (0, 100]."""
    if not stages:
        raise ValueError("at least one stage")
    if any(not 0 < s <= 100 for s in stages) or any(b <= a for a, b in itertools.pairwise(stages)):
        raise ValueError(f"stages must be percents in (0, 100], strictly ascending, got {stages}")
    return [float(s) for s in stages]


def public_key_path(signing_key: Path) -> Path:
    """Where the public key of `signing_key` lives: beside it, `<name>.pub.pem`."""
    return signing_key.with_name(signing_key.name.removesuffix(".pem") + ".pub.pem")
