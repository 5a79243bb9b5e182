"""The canary judge: canary devices against control devices, the device as the unit of analysis. Pure.

Telemetry windows in (store columns, as `Store.read_frames` returns them), a verdict out: `rollback`,
`promote` or `continue`, with the evidence for every metric and guardrail. The live controller and
`fleetwatch rollout judge` call the same functions; nothing here reads a clock or does I/O.

Device values
-------------
Each device's windows in the look are reduced to one value per metric (`device_table`); windows are not
independent (a device that runs hot runs hot all day), devices are. Every metric is oriented so that
larger is worse, on the scale given:

=================  =====  =======================================================================
metric             scale  device value
=================  =====  =======================================================================
anomaly_rate       log    log((A + 0.5) / (N + 1)), A anomalies of N inferences over the windows
latency_p95        log    mean over active windows of log(latency_p95_ms)
accuracy           lin    -(sum_b H_b a_b / N): estimated accuracy from the pooled confidence
                          histogram H and the calibration map a (accuracy per bin), negated
confidence_psi     lin    PSI(H, reference): population stability index of the pooled histogram
memory             lin    mean over windows of mem_peak_pct
reboot_rate        lin    unexpected reboots per window
=================  =====  =======================================================================

A reboot is *expected*, and not counted, in a device's first window of the look and in a window whose
fw_version or model_id differs from the device's previous window: that is where an update reboots it.
Calibration map and reference (`judge_frames`): with the models' baselines (model_id -> `Baseline`), each
arm's accuracy uses the calibration map of the model most of its windows ran (`Baseline.accuracy_map`: the
fitted map, or the bin midpoints when the baseline has none) -- in a model rollout the canary's is the new
model's, control's the old one's -- and the reference is the control model's baseline confidence
proportions. A model without a baseline gets the bin midpoints (a calibrated model), said in the reasons;
a control model without one, or no baselines at all, makes the reference the control devices' pooled
histogram (no control windows: no PSI). `Verdict.sources` names what was used.

Tests
-----
For each metric with margin delta > 0 (the scale above; log(ratio) for ratio margins) and the shift
Delta = canary - control (the Hodges-Lehmann location shift of the device values):

- worse:        H0: Delta <= delta  against  Delta > delta,
- non-inferior: H0: Delta >= delta  against  Delta < delta,

both by the Mann-Whitney U test of (canary - delta) against control: U = R1 - n1 (n1 + 1) / 2 with R1 the
rank sum of the shifted canary values (mid-ranks for ties), normal approximation with continuity
correction and the tie-corrected variance

    sigma^2 = n1 n2 / 12 * ((n + 1) - sum_t (t^3 - t) / (n (n - 1))),   n = n1 + n2,

p_worse = P(Z >= (U - n1 n2 / 2 - 1/2) / sigma), p_noninferior = P(Z <= (U - n1 n2 / 2 + 1/2) / sigma).
The estimate is the Hodges-Lehmann shift median_ij(x_i - y_j); its interval [D_(C), D_(n1 n2 + 1 - C)]
over the sorted pairwise differences D with C = floor(n1 n2 / 2 + 1/2 - z sigma) inverts the same test,
shown at level 1 - 2 alpha_promote (so its upper end is the bound the promotion uses).

Multiplicity and repeated looks
-------------------------------
- Across metrics, rollback: Holm's step-down adjusted p_worse, family-wise error alpha_rollback.
- Across metrics, promotion: every metric must be non-inferior, each at alpha_promote. Promotion is an
  intersection-union test (all nulls rejected), whose error is at most alpha_promote without adjustment.
- Across looks: a stage is judged at several looks t_1 < t_2 < ... (t = elapsed bake fraction, capped at
  1). Look k tests at alpha(t_k) - alpha(t_{k-1}) with a Lan-DeMets spending function,
      pocock:          alpha(t) = a ln(1 + (e - 1) t)
      obrien_fleming:  alpha(t) = 2 - 2 Phi(z_{1 - a/2} / sqrt(t))
  so the sum over looks is at most a (a Bonferroni bound over looks; conservative, because it ignores
  that consecutive looks share devices). After the bake (t = 1) nothing is left to spend: only
  guardrails can still roll back.
- Promotion only at the final look (t >= 1), with at least `min_devices` devices per arm that reported at
  least `min_windows` windows each.

Guardrails roll back at once, without a test: a larger share of canary than control devices peaked at or
above `memory_ceiling_pct`, or canary unexpected reboots per window exceed control's by
`reboot_excess_rate` with at least `reboot_min_events` of them.

>>> rng = np.random.default_rng(1)
>>> x, y = rng.normal(1, 1, 30), rng.normal(0, 1, 30)
>>> mw = mann_whitney(x, y)
>>> bool(mw.p_greater < 0.01), float(hodges_lehmann(x, y, 0.9)[0]) > 0.5
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import special

from fleetwatch.drift.multitest import holm
from fleetwatch.drift.stats import estimated_accuracy, psi

if TYPE_CHECKING:
    from fleetwatch.actions.rollout_config import JudgeConfig
    from fleetwatch.baselines.model import Baseline

Decision = Literal["promote", "continue", "rollback"]
CONFIDENCE_BINS = 10
REBOOTED_BIT = 3
#: The default calibration map: the midpoint of each confidence bin.
MIDPOINTS = (np.arange(CONFIDENCE_BINS) + 0.5) / CONFIDENCE_BINS


@dataclass(frozen=True)
class Metric:
    """One compared metric: its name, which way is worse, its scale and its margin's config key."""

    name: str
    worse_if: Literal["higher", "lower"]
    ratio: bool
    margin_key: str


METRICS = (
    Metric("anomaly_rate", "higher", True, "anomaly_rate_ratio"),
    Metric("latency_p95", "higher", True, "latency_p95_ratio"),
    Metric("accuracy", "lower", False, "accuracy_drop"),
    Metric("confidence_psi", "higher", False, "confidence_psi"),
    Metric("memory", "higher", False, "memory_pct"),
    Metric("reboot_rate", "higher", False, "reboot_rate"),
)


# -- kernels ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MannWhitney:
    """U of the first sample and the one-sided p-values (arrays over any leading axes)."""

    u: np.ndarray
    sigma: np.ndarray
    p_greater: np.ndarray
    p_less: np.ndarray


def mann_whitney(x: np.ndarray, y: np.ndarray) -> MannWhitney:
    """Mann-Whitney U of x against y along the last axis (see the module docstring for the formulas).

    Agrees with `scipy.stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True)`; when every
    value is tied (sigma = 0) both p-values are 1.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = x.shape[-1], y.shape[-1]
    ranks, tie_term = _midranks(_combined(x, y))
    u = ranks[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2
    sigma = _mw_sigma(tie_term, n1, n2)
    mu = n1 * n2 / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        p_greater = np.where(sigma > 0, special.ndtr(-(u - mu - 0.5) / sigma), 1.0)
        p_less = np.where(sigma > 0, special.ndtr((u - mu + 0.5) / sigma), 1.0)
    return MannWhitney(u, sigma, np.minimum(p_greater, 1.0), np.minimum(p_less, 1.0))


def _combined(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x and y side by side along the last axis, their leading axes broadcast."""
    lead = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    return np.concatenate([np.broadcast_to(x, (*lead, x.shape[-1])), np.broadcast_to(y, (*lead, y.shape[-1]))], axis=-1)


def _midranks(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mid-ranks along the last axis, sum over tie groups of t^3 - t) from one sort.

    In sorted order each value's tie group spans [first, last]; its mid-rank is (first + last) / 2 + 1
    and summing t^2 - 1 over the values of a group of size t gives t^3 - t.
    """
    n = z.shape[-1]
    order = np.argsort(z, axis=-1, kind="stable")
    ordered = np.take_along_axis(z, order, axis=-1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    index = np.broadcast_to(np.arange(n), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, index, n - 1), axis=-1), axis=-1), axis=-1)
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks, ((last - first + 1) ** 2 - 1).sum(axis=-1)


def _mw_sigma(tie_term: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Standard deviation of U under H0, tie-corrected."""
    n = n1 + n2
    return np.sqrt(np.maximum(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))), 0.0))


def hodges_lehmann(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high): the median of the pairwise differences x_i - y_j and the two-sided interval at
    `confidence` that inverts the Mann-Whitney test (unbounded ends are -inf / inf)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = x.shape[-1], y.shape[-1]
    combined = _combined(x, y)
    diffs = combined[..., :n1, None] - combined[..., None, n1:]
    diffs = np.sort(diffs.reshape(*combined.shape[:-1], n1 * n2), axis=-1)
    estimate = np.median(diffs, axis=-1)
    z = special.ndtri(1 - (1 - confidence) / 2)
    c = np.floor(n1 * n2 / 2 + 0.5 - z * _mw_sigma(_midranks(combined)[1], n1, n2)).astype(np.int64)
    index = np.clip(c - 1, 0, n1 * n2 - 1)
    low = np.where(c >= 1, np.take_along_axis(diffs, index[..., None], axis=-1)[..., 0], -np.inf)
    high = np.where(c >= 1, np.take_along_axis(diffs, (n1 * n2 - 1 - index)[..., None], axis=-1)[..., 0], np.inf)
    return estimate, low, high


def median_interval(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(median, low, high) of x: the distribution-free interval [x_(c), x_(n + 1 - c)] at `confidence` from
    the sign test, c = floor(n / 2 + 1/2 - z sqrt(n) / 2) (unbounded ends are -inf / inf; NaN when empty).

    >>> median_interval(np.arange(1.0, 21.0), 0.9)
    (10.5, 6.0, 15.0)
    """
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    if not n:
        return math.nan, math.nan, math.nan
    c = math.floor(n / 2 + 0.5 - float(special.ndtri(1 - (1 - confidence) / 2)) * math.sqrt(n) / 2)
    if c < 1:
        return float(np.median(x)), -math.inf, math.inf
    return float(np.median(x)), float(x[c - 1]), float(x[n - c])


def spent_alpha(alpha: float, t: float, spending: str) -> float:
    """Lan-DeMets alpha spent by information fraction t (0 at t <= 0, alpha at t >= 1)."""
    if t <= 0:
        return 0.0
    if t >= 1:
        return alpha
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    if spending == "obrien_fleming":
        return float(2 - 2 * special.ndtr(special.ndtri(1 - alpha / 2) / math.sqrt(t)))
    raise ValueError(f"unknown spending function {spending!r}")


# -- device values ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceTable:
    """One row per device: windows seen, each metric's value (oriented, scaled; NaN = no data), and the
    guardrail inputs (unexpected reboots, highest peak memory)."""

    devices: np.ndarray
    windows: np.ndarray
    values: dict[str, np.ndarray]
    reboots: np.ndarray
    memory_max: np.ndarray

    def __len__(self) -> int:
        return len(self.devices)


def pooled_histogram(frames: Mapping[str, np.ndarray]) -> np.ndarray:
    """The confidence histogram summed over every window in `frames` (10 bins)."""
    return _hist(frames).sum(axis=0)


def device_table(
    frames: Mapping[str, np.ndarray], *, calibration: np.ndarray = MIDPOINTS, reference: np.ndarray
) -> DeviceTable:
    """Reduce schema-1 windows (store columns: time, device, fw_version, model_id, inference_count,
    anomaly_count, latency_p95_ms, mem_peak_pct, flags, conf_hist_0..9) to one row per device."""
    device = np.asarray(frames["device"]).astype(str)
    order = np.lexsort((np.asarray(frames["time"]), device))
    device = device[order]
    ids, first, inverse = np.unique(device, return_index=True, return_inverse=True)
    k = len(ids)

    def col(name: str) -> np.ndarray:
        return np.nan_to_num(np.asarray(frames[name], dtype=float)[order])

    windows = np.bincount(inverse, minlength=k)
    inferences = col("inference_count")
    active = inferences > 0
    n = np.bincount(inverse, inferences, minlength=k)
    anomalies = np.bincount(inverse, col("anomaly_count"), minlength=k)
    latency = np.log(np.maximum(col("latency_p95_ms"), 0.1))
    active_windows = np.bincount(inverse, active, minlength=k)
    hist = np.zeros((k, CONFIDENCE_BINS))
    np.add.at(hist, inverse, _hist(frames)[order])
    accuracy, _ = estimated_accuracy(hist, calibration)
    memory = col("mem_peak_pct")
    nan = np.full(k, np.nan)

    version = np.char.add(np.asarray(frames["fw_version"]).astype(str)[order], "/")
    version = np.char.add(version, np.asarray(frames["model_id"]).astype(str)[order])
    expected = np.ones(len(device), dtype=bool)
    expected[1:] = version[1:] != version[:-1]
    expected[first] = True
    rebooted = (col("flags").astype(np.int64) >> REBOOTED_BIT) & 1 == 1
    reboots = np.bincount(inverse, rebooted & ~expected, minlength=k)

    with np.errstate(divide="ignore", invalid="ignore"):
        values = {
            "anomaly_rate": np.where(n > 0, np.log((anomalies + 0.5) / (n + 1)), np.nan),
            "latency_p95": np.where(
                active_windows > 0,
                np.bincount(inverse, np.where(active, latency, 0), minlength=k) / active_windows,
                np.nan,
            ),
            "accuracy": -accuracy,
            "confidence_psi": np.where(n > 0, psi(hist, reference), np.nan) if reference.sum() > 0 else nan,
            "memory": np.bincount(inverse, memory, minlength=k) / windows,
            "reboot_rate": reboots / windows,
        }
    memory_max = np.maximum.reduceat(memory, first) if k else np.zeros(0)
    return DeviceTable(ids.astype(object), windows, values, reboots.astype(np.int64), memory_max)


def _hist(frames: Mapping[str, np.ndarray]) -> np.ndarray:
    columns = [np.asarray(frames[f"conf_hist_{b}"], dtype=float) for b in range(CONFIDENCE_BINS)]
    return np.nan_to_num(np.stack(columns, axis=1)) if columns[0].size else np.zeros((0, CONFIDENCE_BINS))


# -- the verdict -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """Where a look falls in its stage: the bake fraction now and at the previous look (0 at the first)."""

    info: float
    info_before: float = 0.0

    @property
    def final(self) -> bool:
        return self.info >= 1.0


@dataclass(frozen=True)
class MetricEvidence:
    """One metric: each arm's median device value with its interval (`median_interval`), canary - control
    in natural units (a ratio for log-scale metrics) with its interval, the non-inferiority limit, the test
    results and the status (worse, noninferior, inconclusive, no_data). Intervals are at 1 - 2 alpha_promote."""

    metric: str
    worse_if: str
    scale: str
    n_canary: int
    n_control: int
    canary_median: float
    canary_low: float
    canary_high: float
    control_median: float
    control_low: float
    control_high: float
    estimate: float
    ci_low: float
    ci_high: float
    limit: float
    p_worse: float
    p_worse_holm: float
    p_noninferior: float
    status: str


@dataclass(frozen=True)
class GuardrailEvidence:
    name: str
    value: float
    limit: float
    tripped: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What the judge decided and why; `sources` names each arm's calibration map and the confidence
    reference (`judge_frames`)."""

    verdict: Decision
    reasons: tuple[str, ...]
    metrics: tuple[MetricEvidence, ...]
    guardrails: tuple[GuardrailEvidence, ...]
    info: float
    info_before: float
    alpha_look: float
    n_canary: int
    n_control: int
    sources: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (infinities and NaN as null)."""
        return _jsonable(asdict(self))


def judge(canary: DeviceTable, control: DeviceTable, config: JudgeConfig, look: Look) -> Verdict:
    """The verdict of one look (see the module docstring)."""
    alpha_look = spent_alpha(config.alpha_rollback, look.info, config.spending) - spent_alpha(
        config.alpha_rollback, look.info_before, config.spending
    )
    raw = [_compare(m, canary, control, config) for m in METRICS]
    p_worse = np.array([r[0] for r in raw])
    adjusted = holm(np.nan_to_num(p_worse, nan=1.0))
    evidence = tuple(
        _evidence(m, r, float(q), alpha_look, config.alpha_promote)
        for m, r, q in zip(METRICS, raw, adjusted, strict=True)
    )
    guardrails = _guardrails(canary, control, config)
    short = [
        f"{name} has {int((table.windows >= config.min_windows).sum())} devices with >= {config.min_windows} windows "
        f"(need {config.min_devices})"
        for name, table in (("canary", canary), ("control", control))
        if (table.windows >= config.min_windows).sum() < config.min_devices
    ]
    tripped = [f"guardrail {g.name}: {g.detail}" for g in guardrails if g.tripped]
    worse = [
        f"{e.metric} worse than its margin (Holm p {e.p_worse_holm:.2g} <= {alpha_look:.2g})"
        for e in evidence
        if e.status == "worse"
    ]
    pending = [f"{e.metric} {e.status}" for e in evidence if e.status != "noninferior"]
    if tripped or worse:
        decision: Decision = "rollback"
        reasons = tripped + worse
    elif look.final and not short and not pending:
        decision, reasons = "promote", ["every metric non-inferior with enough devices at the end of the bake"]
    else:
        decision = "continue"
        reasons = ([] if look.final else [f"baking ({look.info:.0%} of the bake time)"]) + short + pending
    return Verdict(
        decision,
        tuple(reasons),
        evidence,
        guardrails,
        look.info,
        look.info_before,
        alpha_look,
        len(canary),
        len(control),
    )


def judge_frames(
    canary: Mapping[str, np.ndarray],
    control: Mapping[str, np.ndarray],
    config: JudgeConfig,
    look: Look,
    *,
    baselines: Mapping[int, Baseline] | None = None,
) -> Verdict:
    """`judge` on raw windows (`device_table` of each arm). Each arm's calibration map is its model's
    baseline's and the reference the control model's baseline confidence proportions (module docstring);
    without `baselines` (model_id -> its latest baseline), the bin midpoints and control's pooled histogram."""
    arms = {"canary": canary, "control": control}
    found = {arm: _arm_baseline(frames, baselines) for arm, frames in arms.items()}
    calibrations, sources, notes = {}, {}, []
    for arm, (model, baseline) in found.items():
        if baseline is None:
            calibrations[arm] = MIDPOINTS
            sources[f"{arm} calibration"] = "bin midpoints"
            if model is not None:
                sources[f"{arm} calibration"] += f" (model {model} has no baseline)"
                notes.append(f"{arm} model {model} has no baseline: its accuracy is estimated with the bin midpoints")
        else:
            calibrations[arm] = baseline.accuracy_map()
            fitted = "fitted calibration" if baseline.calibration is not None else "unfitted: bin midpoints"
            sources[f"{arm} calibration"] = f"{baseline.version} ({fitted})"
    reference_baseline = found["control"][1]
    if reference_baseline is None:
        reference = pooled_histogram(control)
        sources["confidence reference"] = "control pooled histogram"
    else:
        reference = np.asarray(reference_baseline.confidence, dtype=float)
        sources["confidence reference"] = f"{reference_baseline.version} confidence proportions"
    tables = [device_table(frames, calibration=calibrations[arm], reference=reference) for arm, frames in arms.items()]
    verdict = judge(tables[0], tables[1], config, look)
    return replace(verdict, reasons=verdict.reasons + tuple(notes), sources=sources)


def _arm_baseline(
    frames: Mapping[str, np.ndarray], baselines: Mapping[int, Baseline] | None
) -> tuple[int | None, Baseline | None]:
    """(the model_id most of the arm's windows ran, its baseline); (None, None) without `baselines` or windows."""
    models, counts = np.unique(np.asarray(frames["model_id"]).astype(str), return_counts=True)
    if baselines is None or not len(models):
        return None, None
    model = int(models[np.argmax(counts)])
    return model, baselines.get(model)


Raw = tuple[float, float, int, int, tuple[float, float, float], tuple[float, float, float], float, float, float, float]


def _compare(metric: Metric, canary: DeviceTable, control: DeviceTable, config: JudgeConfig) -> Raw:
    """(p_worse, p_noninferior, n1, n2, canary and control (median, low, high), estimate, low, high, margin)
    on the oriented analysis scale; p-values NaN below two devices per arm."""
    margin = getattr(config, metric.margin_key)
    delta = math.log(margin) if metric.ratio else margin
    x = canary.values[metric.name][np.isfinite(canary.values[metric.name])]
    y = control.values[metric.name][np.isfinite(control.values[metric.name])]
    confidence = 1 - 2 * config.alpha_promote
    medians = (median_interval(x, confidence), median_interval(y, confidence))
    if len(x) < 2 or len(y) < 2:
        return (math.nan, math.nan, len(x), len(y), *medians, math.nan, math.nan, math.nan, delta)
    mw = mann_whitney(x - delta, y)
    estimate, low, high = hodges_lehmann(x, y, confidence)
    return (
        float(mw.p_greater),
        float(mw.p_less),
        len(x),
        len(y),
        *medians,
        float(estimate),
        float(low),
        float(high),
        delta,
    )


def _evidence(metric: Metric, raw: Raw, p_holm: float, alpha_look: float, alpha_promote: float) -> MetricEvidence:
    p_worse, p_ni, n1, n2, canary, control, estimate, low, high, delta = raw
    sign = 1.0 if metric.worse_if == "higher" else -1.0

    def natural(value: float) -> float:
        return math.exp(value) if metric.ratio else sign * value

    if math.isnan(p_worse):
        status = "no_data"
    elif p_holm <= alpha_look:
        status = "worse"
    elif p_ni <= alpha_promote:
        status = "noninferior"
    else:
        status = "inconclusive"

    def interval(low: float, high: float) -> list[float]:
        return sorted((natural(low), natural(high)))

    canary_low, canary_high = interval(*canary[1:])
    control_low, control_high = interval(*control[1:])
    low_n, high_n = interval(low, high)
    return MetricEvidence(
        metric=metric.name,
        worse_if=metric.worse_if,
        scale="ratio" if metric.ratio else "difference",
        n_canary=n1,
        n_control=n2,
        canary_median=natural(canary[0]),
        canary_low=canary_low,
        canary_high=canary_high,
        control_median=natural(control[0]),
        control_low=control_low,
        control_high=control_high,
        estimate=natural(estimate),
        ci_low=low_n,
        ci_high=high_n,
        limit=natural(delta),
        p_worse=p_worse,
        p_worse_holm=p_holm if not math.isnan(p_worse) else math.nan,
        p_noninferior=p_ni,
        status=status,
    )


def _guardrails(canary: DeviceTable, control: DeviceTable, config: JudgeConfig) -> tuple[GuardrailEvidence, ...]:
    ceiling = config.memory_ceiling_pct
    over_c = int((canary.memory_max >= ceiling).sum())
    over_k = int((control.memory_max >= ceiling).sum())
    share_c = over_c / max(len(canary), 1)
    share_k = over_k / max(len(control), 1)
    memory = GuardrailEvidence(
        "memory_ceiling",
        share_c,
        share_k,
        over_c > 0 and share_c > share_k,
        f"{over_c} of {len(canary)} canary devices peaked at >= {ceiling:g}% RAM (control: {over_k} of {len(control)})",
    )
    events = int(canary.reboots.sum())
    rate_c = events / max(int(canary.windows.sum()), 1)
    rate_k = int(control.reboots.sum()) / max(int(control.windows.sum()), 1)
    reboots = GuardrailEvidence(
        "reboots",
        rate_c - rate_k,
        config.reboot_excess_rate,
        events >= config.reboot_min_events and rate_c - rate_k > config.reboot_excess_rate,
        f"{events} unexpected canary reboots, {rate_c:.3f} per window against control's {rate_k:.3f}",
    )
    return (memory, reboots)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value
