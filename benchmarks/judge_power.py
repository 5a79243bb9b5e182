"""Judge power and error rates on simulated rollouts: the figures of docs/rollouts.md, "Measured".

Every rollout has 20 canary and 20 control devices, hourly windows and a 6-hour bake judged at 6 looks
(`fleetwatch.simulate.rollouts`, the same helpers as tests/test_judge.py), default `JudgeConfig`. Two tables:

1. Default config (pocock spending): the clearly worse canaries of `WORSE_CANARIES`, N rollouts each;
   a canary equal to the control, 2N rollouts (its rollbacks are false rollbacks); p95 latency exactly at
   the margin (x `latency_p95_ratio`), N rollouts. For each: rolled back (with a 95% Clopper-Pearson
   interval), the look of the rollback (median and worst, over the rolled-back rollouts), promoted at the
   end of the bake, and for the worse canaries the judge's estimate of the worsened metric at the
   rollback look (median over rollouts; a ratio for anomaly rate and latency). Then, for the equal
   canaries that ended neither promoted nor rolled back, which metrics were not shown non-inferior.
2. Subtler harm, N rollouts each, judged with each spending function on the same simulated fleets.

Scenario i (in the order printed) simulates its fleet with seed `--seed` + i.

    python benchmarks/judge_power.py [--rollouts 100] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections import Counter

import numpy as np
from _machine import describe
from scipy import stats

from fleetwatch.actions.rollout_config import JudgeConfig
from fleetwatch.simulate import ModelProfile
from fleetwatch.simulate.rollouts import LOOKS, PER_ARM, WORSE_CANARIES, Outcome, judge_rollouts, simulate_rollouts

SUBTLE = {"anomaly rate x1.6": ModelProfile(anomaly_factor=1.6), "p95 latency x1.2": ModelProfile(latency_factor=1.2)}
SPENDINGS = ("pocock", "obrien_fleming")
EQUAL = "equal to control"


def worsened_metric(profile: ModelProfile) -> str:
    """The judge's metric that `profile` makes worse (the first one, if several)."""
    if profile.anomaly_factor != 1.0:
        return "anomaly_rate"
    if profile.confidence_degradation:
        return "accuracy"
    if profile.latency_factor != 1.0:
        return "latency_p95"
    return "memory"


def rolled_back(outcomes: list[Outcome]) -> str:
    """'k / n (p%, 95% CI low-high%)'."""
    k, n = sum(o.rolled_back_at is not None for o in outcomes), len(outcomes)
    ci = stats.binomtest(k, n).proportion_ci(method="exact")
    return f"{k} / {n} ({k / n:.0%}; {ci.low:.0%}-{ci.high:.0%})"


def rollback_looks(outcomes: list[Outcome]) -> str:
    """'median (worst)' look of the rollbacks, '-' without any."""
    looks = [o.rolled_back_at for o in outcomes if o.rolled_back_at is not None]
    return f"{np.median(looks):g} ({max(looks)})" if looks else "-"


def promoted(outcomes: list[Outcome]) -> str:
    k = sum(o.verdict.verdict == "promote" for o in outcomes)
    return f"{k} / {len(outcomes)} ({k / len(outcomes):.0%})"


def estimate_at_rollback(outcomes: list[Outcome], metric: str) -> str:
    """Median over the rolled-back rollouts of the judge's estimate of `metric` at the rollback look."""
    evidence = [
        next(m for m in o.verdict.metrics if m.metric == metric) for o in outcomes if o.rolled_back_at is not None
    ]
    if not evidence:
        return "-"
    median = float(np.median([e.estimate for e in evidence]))
    return f"{metric} x{median:.3g}" if evidence[0].scale == "ratio" else f"{metric} {median:+.3g}"


def blocking_metrics(outcomes: list[Outcome]) -> str:
    """Of the rollouts neither promoted nor rolled back: how often each metric was not shown non-inferior
    at the last look (a rollout can count for several)."""
    stuck = [o for o in outcomes if o.verdict.verdict == "continue"]
    counts = Counter(m.metric for o in stuck for m in o.verdict.metrics if m.status != "noninferior")
    listed = ", ".join(f"{metric} {k}" for metric, k in counts.most_common())
    return f"{len(stuck)} / {len(outcomes)} neither promoted nor rolled back; not shown non-inferior: {listed or '-'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100, help="rollouts per scenario (the equal canary: twice)")
    parser.add_argument("--seed", type=int, default=0, help="scenario i simulates with seed + i")
    parser.add_argument("--quick", action="store_true", help="10 rollouts per scenario: a smoke run")
    args = parser.parse_args()
    n = 10 if args.quick else args.rollouts
    config = JudgeConfig()
    started = time.perf_counter()
    print(f"command: python benchmarks/judge_power.py --rollouts {n} --seed {args.seed}")
    print(f"machine: {describe()}")
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{PER_ARM} canary and {PER_ARM} control devices per rollout, {LOOKS} looks, default JudgeConfig")
    print()
    print("| canary | rollouts | rolled back (95% CI) | at look: median (worst) | promoted | estimate at rollback |")
    print("|---|---:|---|---|---|---|")
    scenarios = [
        *((name, profile, n) for name, profile in WORSE_CANARIES.items()),
        (EQUAL, ModelProfile(), 2 * n),
        (
            f"p95 latency at the margin (x{config.latency_p95_ratio:g})",
            ModelProfile(latency_factor=config.latency_p95_ratio),
            n,
        ),
    ]
    judged: dict[str, list[Outcome]] = {}
    for i, (name, profile, count) in enumerate(scenarios):
        judged[name] = outcomes = judge_rollouts(simulate_rollouts(profile, count, args.seed + i), config)
        shift = estimate_at_rollback(outcomes, worsened_metric(profile)) if name in WORSE_CANARIES else ""
        print(
            f"| {name} | {count} | {rolled_back(outcomes)} | {rollback_looks(outcomes)} | {promoted(outcomes)} "
            f"| {shift} |"
        )
    print()
    print(f"{EQUAL}: {blocking_metrics(judged[EQUAL])}")
    print()
    print(f"Subtler harm, {n} rollouts each, both spending functions on the same simulated fleets:")
    print()
    print("| canary | " + " | ".join(f"{s}: rolled back (95% CI), look: median (worst)" for s in SPENDINGS) + " |")
    print("|---|" + "---|" * len(SPENDINGS))
    for i, (name, profile) in enumerate(SUBTLE.items(), start=len(scenarios)):
        rollouts = simulate_rollouts(profile, n, args.seed + i)
        cells = []
        for spending in SPENDINGS:
            outcomes = judge_rollouts(rollouts, JudgeConfig(spending=spending))
            cells.append(f"{rolled_back(outcomes)}, look {rollback_looks(outcomes)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print(f"elapsed: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
