"""The drift engine's per-device count tests on a whole fleet: the C routines against the numpy code.

A synthetic window of `--devices` devices (not timed): inference counts from 0 to 2,000, a 10-bin confidence
histogram and 4 class counts drawn around baseline proportions shaped like the simulator's (the two lowest
confidence bins empty in the baseline) with some devices drifted, and beta-binomial anomaly counts. Timed,
best of `--repeat`, each call as `engine.device_scores` makes it: `g_test_p` and `psi` of both count
matrices, `estimated_accuracy` of the histogram, `anomaly_p`; once with the C routines of
fleetwatch/drift/_kernels.c and once with them switched off (the numpy code). For each call it also prints
how far the two results are apart (largest relative difference; the statistics' p-values and the anomaly
tail are compared where they are above 1e-300).

    python benchmarks/drift_kernels.py [--devices 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from _machine import describe, pin_to_one_core

from fleetwatch.drift import native
from fleetwatch.drift.stats import anomaly_p, estimated_accuracy, g_test_p, psi

CONFIDENCE = np.array([0.0, 0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.21, 0.48])
CLASSES = np.array([0.4, 0.3, 0.2, 0.1])
ACCURACY = np.linspace(0.1, 0.97, 10)
RATE, CONCENTRATION = 0.02, 200.0


def window(devices: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = rng.integers(0, 2001, devices)
    drift = rng.uniform(size=devices) < 0.05

    def counts(probs: np.ndarray) -> np.ndarray:
        mix = rng.dirichlet(probs * 400 + 0.01, devices)
        mix[drift] = rng.dirichlet(np.ones(len(probs)), drift.sum())
        return rng.multinomial(n, mix).astype(float)

    rates = rng.beta(RATE * CONCENTRATION, (1 - RATE) * CONCENTRATION, devices)
    return {
        "n": n.astype(float),
        "conf": counts(CONFIDENCE),
        "classes": counts(CLASSES),
        "anomalies": rng.binomial(n, rates),
    }


def calls(w: dict[str, np.ndarray]) -> dict[str, Callable[[], np.ndarray]]:
    return {
        "g_test_p, confidence (devices, 10)": lambda: g_test_p(w["conf"], CONFIDENCE, 2.25),
        "g_test_p, classes (devices, 4)": lambda: g_test_p(w["classes"], CLASSES, 2.25),
        "psi, confidence": lambda: psi(w["conf"], CONFIDENCE),
        "psi, classes": lambda: psi(w["classes"], CLASSES),
        "estimated_accuracy (estimate and se)": lambda: np.concatenate(estimated_accuracy(w["conf"], ACCURACY)),
        "anomaly_p (beta-binomial tail)": lambda: anomaly_p(w["anomalies"], w["n"], RATE, CONCENTRATION),
    }


def best(call: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    out = call()
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return min(seconds), out


def largest_difference(c: np.ndarray, reference: np.ndarray) -> float:
    assert np.array_equal(np.isnan(c), np.isnan(reference)), "the two paths disagree on which results are NaN"
    both = ~np.isnan(reference) & (np.abs(reference) > 1e-300)
    return float(np.max(np.abs(c[both] - reference[both]) / np.abs(reference[both]), initial=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    routines = native.routines
    if routines is None:
        raise SystemExit("fleetwatch.drift._kernels is not built: pip install -e . (or python setup.py build_ext -i)")
    pin_to_one_core()
    w = window(args.devices)
    print(describe())
    print(f"{args.devices:,} devices, best of {args.repeat}, milliseconds per call")
    print("| call | C | numpy | ratio | largest relative difference |")
    print("|---|---:|---:|---:|---:|")
    totals = [0.0, 0.0]
    for name, call in calls(w).items():
        native.routines = routines
        c_s, c_out = best(call, args.repeat)
        native.routines = None
        numpy_s, numpy_out = best(call, args.repeat)
        native.routines = routines
        totals[0] += c_s
        totals[1] += numpy_s
        difference = largest_difference(c_out, numpy_out)
        print(f"| {name} | {c_s * 1e3:.2f} | {numpy_s * 1e3:.2f} | {numpy_s / c_s:.1f}x | {difference:.1e} |")
    print(f"| **all** | **{totals[0] * 1e3:.2f}** | **{totals[1] * 1e3:.2f}** | **{totals[1] / totals[0]:.1f}x** | |")


if __name__ == "__main__":
    main()
