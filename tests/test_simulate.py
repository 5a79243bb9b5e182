"""The fleet simulator: valid frames under every scenario, reproducibility, and the statistics it promises."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import stats

from fleetwatch.frames import Registry, decode_messages
from fleetwatch.simulate import (
    KINDS,
    Change,
    Fleet,
    FleetSimulator,
    FleetSpec,
    ModelProfile,
    Target,
    Telemetry,
    aggregate_inputs,
    inventory_csv,
    model_crc,
    simulate,
    training_windows,
    truth,
)

REGISTRY = Registry.builtin()
SPEC = FleetSpec(n_devices=60, seed=11)
BODY = (
    "inference_count",
    "anomaly_count",
    "latency_p50_ms",
    "latency_p95_ms",
    "mem_peak_pct",
    "battery_mv",
    "input_mean",
    "input_var",
    "conf_hist",
    "class_counts",
)
SATURATED, REBOOTED = 2, 8

# One change of each kind, on the "north" devices from window 12 to window 36.
EXAMPLES = {
    "input_mean_shift": Change("input_mean_shift", 1.5, channels=(0,)),
    "input_var_change": Change("input_var_change", 2.0, channels=(1,)),
    "confidence_degradation": Change("confidence_degradation", 0.3),
    "class_prior_shift": Change("class_prior_shift", 1.0, priors=(0.1, 0.1, 0.1, 0.7)),
    "anomaly_rate": Change("anomaly_rate", 0.08),
    "latency_increase": Change("latency_increase", 1.5),
    "memory_increase": Change("memory_increase", 10.0),
    "reboots": Change("reboots", 0.5),
}
NORTH, ONSET, END, WINDOWS = Target(where="site=north"), 12, 36, 48


def scenario(kind: str) -> Change:
    example = EXAMPLES[kind]
    return Change(kind, example.value, NORTH, ONSET, END, example.channels, example.priors)


def decoded(t: Telemetry) -> dict[str, np.ndarray]:
    """Decode every frame; fail on any reject; the decoded columns."""
    result = decode_messages(t.messages(), t.device, t.received, REGISTRY)
    assert result.reject_counts() == {}
    assert result.frame_count == len(t)
    return result.batches[1].columns()


def assert_round_trip(t: Telemetry) -> None:
    cols = decoded(t)
    for name, value in t.columns.items():
        np.testing.assert_array_equal(cols[name], value, err_msg=name)
    np.testing.assert_array_equal(cols["device"], t.device)


@pytest.fixture(scope="module")
def baseline() -> Telemetry:
    return simulate(SPEC, n_windows=WINDOWS)


@pytest.fixture(scope="module")
def changed() -> dict[str, Telemetry]:
    return {kind: simulate(SPEC, [scenario(kind)], n_windows=WINDOWS) for kind in KINDS}


def test_every_frame_decodes_to_exactly_the_simulated_columns(baseline: Telemetry) -> None:
    assert_round_trip(baseline)
    assert (baseline.columns["inference_count"] == 0).any(), "idle windows are part of the default scenario"


@pytest.mark.parametrize("kind", KINDS)
def test_frames_decode_under_every_change_kind(changed: dict[str, Telemetry], kind: str) -> None:
    assert_round_trip(changed[kind])


def test_extreme_parameters_clip_to_the_wire_and_say_so() -> None:
    spec = FleetSpec(
        n_devices=40,
        seed=3,
        input_level=(40.0, -40.0, 0.0),
        input_spread=(5.0, 0.0, 0.3),
        inferences_per_window=90_000.0,
        idle_probability=0.5,
        anomaly_rate=1.0,
        latency_p50_ms=9000.0,
        latency_p95_factor=3.0,
        memory_pct=99.0,
        battery_full_mv=70_000.0,
        reboot_rate=1.0,
        no_clock_fraction=0.5,
        models={7: ModelProfile(1.0, 50.0, 100.0, 60.0)},
    )
    everything = [
        Change("input_mean_shift", -1e6, onset=2),
        Change("input_var_change", 1e4, onset=2),
        Change("confidence_degradation", 1.0, onset=1),
        Change("class_prior_shift", 1.0, priors=(0.0, 0.0, 0.0, 1.0), onset=1),
        Change("anomaly_rate", 0.0, onset=3),
        Change("latency_increase", 1e3, onset=1),
        Change("memory_increase", 500.0, onset=1),
        Change("reboots", 0.0, onset=3),
    ]
    sim = FleetSimulator(spec, everything)
    sim.deploy(Target(fraction=0.5), 7, "255.255.65535")
    t = sim.run(4)
    assert_round_trip(t)
    busy = t.columns["inference_count"] > 0
    assert (t.columns["flags"][busy] & SATURATED).all()
    assert t.columns["inference_count"].max() == 65535
    assert t.columns["latency_p95_ms"].max() == 6553.5
    assert t.columns["mem_peak_pct"].max() == 100


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    spec = FleetSpec(n_devices=30, seed=5)
    first, again = simulate(spec, n_windows=6), simulate(spec, n_windows=6)
    assert first.messages() == again.messages()
    other = simulate(FleetSpec(n_devices=30, seed=6), n_windows=6)
    assert not np.array_equal(first.frames(), other.frames())


def test_window_by_window_equals_one_batch_including_reboots_and_seq() -> None:
    spec = FleetSpec(n_devices=25, seed=9, reboot_rate=0.1)
    changes = [Change("input_mean_shift", 2.0, Target(fraction=0.3), onset=5), Change("reboots", 0.3, onset=8)]
    batch = simulate(spec, changes, n_windows=20)
    sim = FleetSimulator(spec, changes)
    stepped = Telemetry.concat([sim.step() for _ in range(12)] + [sim.run(8)])
    np.testing.assert_array_equal(stepped.frames(), batch.frames())
    np.testing.assert_array_equal(stepped.received, batch.received)
    late = simulate(spec, changes, n_windows=7, start_window=13)
    np.testing.assert_array_equal(late.frames(), batch.frames().reshape(25, 20, -1)[:, 13:].reshape(25 * 7, -1))
    seq, rebooted = batch.grid("seq"), (batch.grid("flags") & REBOOTED) > 0
    assert (seq[rebooted] == 0).all() and rebooted.sum() > 20
    running = ~rebooted[:, 1:]
    assert (np.diff(seq.astype(np.int64), axis=1)[running] % 65536 == 1).all()


def test_sigma_is_the_sd_of_a_devices_window_means_around_its_level() -> None:
    spec = FleetSpec(n_devices=300, seed=21)
    t = simulate(spec, n_windows=14 * 24)
    means = t.grid("input_mean")
    busy = t.grid("inference_count") > 0
    for c in range(3):
        centred = np.where(busy, means[:, :, c] - Fleet.of(spec).level[:, c, None], np.nan)
        measured = np.sqrt(np.nanmean(np.nanvar(centred, axis=1, ddof=1)))
        assert measured == pytest.approx(spec.sigma(c), rel=0.03)
        device_means = np.nanmean(centred, axis=1)
        assert abs(device_means.mean()) < 0.002


def unchanged_outside_the_change(
    base: Telemetry, t: Telemetry, change: Change, columns: tuple[str, ...], lasting: tuple[str, ...] = ()
) -> np.ndarray:
    """Assert that non-target devices, and target devices outside [onset, end), are bit-identical to the
    baseline (for `lasting` columns only before onset), and that columns outside `columns` are untouched.
    Returns the (devices, windows) mask of the windows the change applies to."""
    touched = np.zeros((base.n_devices, base.n_windows), dtype=bool)
    targets = change.target.mask(Fleet.of(SPEC))
    touched[np.ix_(targets, np.arange(change.onset, change.end))] = True
    since_onset = touched.copy()
    since_onset[np.ix_(targets, np.arange(change.onset, base.n_windows))] = True
    for name in (*BODY, "flags", "seq"):
        same = base.grid(name) == t.grid(name)
        same = same.all(axis=-1) if same.ndim == 3 else same
        assert same[~(since_onset if name in lasting else touched)].all(), name
        if name not in columns:
            assert same.all(), f"{change.kind} should not touch {name}"
    return touched


def test_mean_shift_moves_target_means_by_k_sigma(baseline: Telemetry, changed: dict[str, Telemetry]) -> None:
    change = scenario("input_mean_shift")
    t = changed[change.kind]
    touched = unchanged_outside_the_change(baseline, t, change, ("input_mean",))
    busy = touched & (baseline.grid("inference_count") > 0)
    delta = t.grid("input_mean")[busy] - baseline.grid("input_mean")[busy]
    np.testing.assert_allclose(delta[:, 0], 1.5 * SPEC.sigma(0), atol=0.0011)
    assert (delta[:, 1:] == 0).all()


def test_variance_change_scales_within_window_variance(baseline: Telemetry, changed: dict[str, Telemetry]) -> None:
    change = scenario("input_var_change")
    t = changed[change.kind]
    touched = unchanged_outside_the_change(baseline, t, change, ("input_var", "input_mean"))
    busy = touched & (baseline.grid("inference_count") > 0)
    ratio = t.grid("input_var")[busy].sum(axis=0) / baseline.grid("input_var")[busy].sum(axis=0)
    np.testing.assert_allclose(ratio, [1.0, 2.0, 1.0], rtol=0.002)
    drift = t.grid("input_mean")[busy][:, 1] - baseline.grid("input_mean")[busy][:, 1]
    assert abs(drift.mean()) < 0.2 * SPEC.sigma(1), "more sampling noise, but no shift of the mean"


def test_confidence_degradation_moves_high_mass_down(baseline: Telemetry, changed: dict[str, Telemetry]) -> None:
    change = scenario("confidence_degradation")
    t = changed[change.kind]
    touched = unchanged_outside_the_change(baseline, t, change, ("conf_hist",))
    before = baseline.grid("conf_hist")[touched].sum(axis=0)
    after = t.grid("conf_hist")[touched].sum(axis=0)
    assert after.sum() == before.sum()
    assert after[5:].sum() / before[5:].sum() == pytest.approx(0.7, abs=0.01)
    assert (after[:2] == 0).all() and (after[2:5] > before[2:5]).all()


def test_class_prior_shift_brings_the_new_priors(baseline: Telemetry, changed: dict[str, Telemetry]) -> None:
    change = scenario("class_prior_shift")
    t = changed[change.kind]
    touched = unchanged_outside_the_change(baseline, t, change, ("class_counts",))
    counts = t.grid("class_counts")[touched].sum(axis=0)
    np.testing.assert_allclose(counts / counts.sum(), change.priors, atol=0.01)
    half = Change("class_prior_shift", 0.5, NORTH, ONSET, END, priors=(0.0, 0.0, 0.0, 1.0))
    counts = simulate(SPEC, [half], n_windows=WINDOWS).grid("class_counts")[touched].sum(axis=0)
    np.testing.assert_allclose(counts / counts.sum(), [0.2, 0.15, 0.1, 0.55], atol=0.01)


@pytest.mark.parametrize("rate", [0.08, 0.005])
def test_anomaly_rate_change_sets_the_new_rate(baseline: Telemetry, rate: float) -> None:
    change = Change("anomaly_rate", rate, NORTH, ONSET, END)
    t = simulate(SPEC, [change], n_windows=WINDOWS)
    touched = unchanged_outside_the_change(baseline, t, change, ("anomaly_count",))
    observed = t.grid("anomaly_count")[touched].sum() / t.grid("inference_count")[touched].sum()
    assert observed == pytest.approx(rate, rel=0.1)
    base_rate = baseline.columns["anomaly_count"].sum() / baseline.columns["inference_count"].sum()
    assert base_rate == pytest.approx(SPEC.anomaly_rate, rel=0.1)


def test_latency_memory_and_reboot_changes(baseline: Telemetry, changed: dict[str, Telemetry]) -> None:
    change = scenario("latency_increase")
    touched = unchanged_outside_the_change(baseline, changed[change.kind], change, ("latency_p50_ms", "latency_p95_ms"))
    busy = touched & (baseline.grid("inference_count") > 0)
    ratio = changed[change.kind].grid("latency_p50_ms")[busy] / baseline.grid("latency_p50_ms")[busy]
    np.testing.assert_allclose(ratio, 1.5, rtol=0.01)

    change = scenario("memory_increase")
    touched = unchanged_outside_the_change(baseline, changed[change.kind], change, ("mem_peak_pct",))
    before = baseline.grid("mem_peak_pct")[touched].astype(int)
    np.testing.assert_array_equal(changed[change.kind].grid("mem_peak_pct")[touched], np.minimum(before + 10, 100))

    change = scenario("reboots")
    touched = unchanged_outside_the_change(baseline, changed[change.kind], change, ("flags", "seq"), lasting=("seq",))
    rebooted = (changed[change.kind].grid("flags")[touched] & REBOOTED) > 0
    assert rebooted.mean() == pytest.approx(0.5, abs=0.05)
    assert (changed[change.kind].grid("seq")[touched][rebooted] == 0).all()


def test_truth_lists_targets_and_windows() -> None:
    changes = [scenario("anomaly_rate"), Change("latency_increase", 2.0, Target(devices=(0, 3)), onset=5)]
    result = truth(SPEC, changes)
    north = Fleet.of(SPEC).tags["site"] == "north"
    np.testing.assert_array_equal(result.targets[0], north)
    assert result.active(ONSET - 1)[0].sum() == 0 and (result.active(ONSET)[0] == north).all()
    assert not result.active(END)[0].any() and result.active(END)[1].sum() == 2
    rows = result.records()
    assert len(rows) == north.sum() + 2
    assert rows[-1] == {"change": 1, "kind": "latency_increase", "device": "dev-00003", "onset": 5, "end": None}


def test_models_follow_deployments_and_rollbacks() -> None:
    spec = FleetSpec(
        n_devices=200,
        seed=4,
        models={model_crc("kws-b"): ModelProfile(confidence_degradation=0.2, anomaly_factor=3.0, latency_factor=1.3)},
    )
    sim = FleetSimulator(spec)
    before = sim.run(6)
    canary = Target(fraction=0.2, seed=1).mask(sim.fleet)
    sim.deploy(Target(fraction=0.2, seed=1), model_crc("kws-b"), "1.1.0")
    during = sim.run(24)
    sim.deploy(canary, spec.model_id, spec.fw_version)
    after = sim.run(6)
    baseline = simulate(spec, n_windows=36)

    assert_round_trip(Telemetry.concat([before, during, after]))
    assert (during.grid("model_id")[canary] == model_crc("kws-b")).all()
    assert (during.grid("model_id")[~canary] == spec.model_id).all()
    assert (after.grid("model_id") == spec.model_id).all() and (before.grid("model_id") == spec.model_id).all()
    for part in (during, after):
        assert (part.grid("flags")[canary, 0] & REBOOTED).all() and (part.grid("seq")[canary, 0] == 0).all()

    def canary_sum(t: Telemetry, name: str, windows: slice = slice(None)) -> np.ndarray:
        return t.grid(name)[canary, windows].sum(axis=(0, 1))

    same = slice(6, 30)
    anomaly_ratio = canary_sum(during, "anomaly_count") / canary_sum(baseline, "anomaly_count", same)
    assert anomaly_ratio == pytest.approx(3.0, rel=0.1)
    high_ratio = canary_sum(during, "conf_hist")[5:].sum() / canary_sum(baseline, "conf_hist", same)[5:].sum()
    assert high_ratio == pytest.approx(0.8, abs=0.01)
    busy = during.grid("inference_count")[canary] > 0
    latency = during.grid("latency_p50_ms")[canary][busy] / baseline.grid("latency_p50_ms")[canary, same][busy]
    np.testing.assert_allclose(latency, 1.3, rtol=0.01)
    for name in BODY:
        np.testing.assert_array_equal(during.grid(name)[~canary], baseline.grid(name)[:, 6:30][~canary], err_msg=name)
        np.testing.assert_array_equal(after.grid(name), baseline.grid(name)[:, 30:], err_msg=name)


def test_tag_selectors_and_random_targets() -> None:
    fleet = Fleet.of(SPEC)
    site = fleet.tags["site"]
    np.testing.assert_array_equal(Target(where="site=north").mask(fleet), site == "north")
    np.testing.assert_array_equal(Target(where="site=north|east").mask(fleet), np.isin(site, ["north", "east"]))
    assert set(site) == {"north", "south", "east", "west"}
    some = Target(where="site=south", count=5, seed=2).mask(fleet)
    assert some.sum() == 5 and (site[some] == "south").all()
    small, large = Target(fraction=0.1, seed=3).mask(fleet), Target(fraction=0.5, seed=3).mask(fleet)
    assert small.sum() == 6 and large.sum() == 30 and not (small & ~large).any()
    assert not np.array_equal(large, Target(fraction=0.5, seed=4).mask(fleet))
    assert Target(devices=(1, 2), where="site=nowhere").mask(fleet).sum() == 0
    with pytest.raises(ValueError):
        Target(where="room=3").mask(fleet)


def test_inventory_csv_parses_with_the_csv_module() -> None:
    spec = FleetSpec(n_devices=12, seed=2, tags={"site": ("north", "south"), "hw": ("a", "b", "c")})
    rows = list(csv.DictReader(io.StringIO(inventory_csv(spec))))
    fleet = Fleet.of(spec)
    assert [r["device"] for r in rows] == [f"dev-{i:05d}" for i in range(12)]
    assert [r["hw"] for r in rows] == fleet.tags["hw"].tolist()
    assert set(rows[0]) == {"device", "site", "hw"}


def test_tag_shares_are_exact_and_placed_at_random() -> None:
    shares = {"north": 0.05, "south": 0.25, "east": 0.35, "west": 0.35}
    site = Fleet.of(FleetSpec(n_devices=1000, seed=3, tags={"site": shares})).tags["site"]
    assert {name: int((site == name).sum()) for name in shares} == {"north": 50, "south": 250, "east": 350, "west": 350}
    assert 0 < np.flatnonzero(site == "north").mean() < 999 and not (site[:50] == "north").all()
    thirds = Fleet.of(FleetSpec(n_devices=10, tags={"hw": {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}})).tags["hw"]
    assert sorted((thirds == v).sum() for v in "abc") == [3, 3, 4]
    with pytest.raises(ValueError, match="shares"):
        FleetSpec(tags={"site": {"north": 0.5, "south": 0.4}})


def test_devices_without_a_clock_report_window_start_zero() -> None:
    t = simulate(FleetSpec(n_devices=40, seed=1, no_clock_fraction=0.25), n_windows=3)
    starts, synced = t.grid("window_start"), (t.grid("flags") & 1) > 0
    clockless = (starts == 0).all(axis=1)
    assert clockless.sum() == 10
    assert not synced[clockless].any() and synced[~clockless].all()
    decoded(t)


def test_backlog_messages_carry_several_frames() -> None:
    t = simulate(FleetSpec(n_devices=7, seed=8), n_windows=10)
    backlog = t.backlog(4)
    assert len(backlog.payloads) == 7 * 3 and len(backlog.payloads[0]) == 4 * 74 and len(backlog.payloads[2]) == 2 * 74
    result = decode_messages(backlog.payloads, backlog.device, backlog.received, REGISTRY)
    assert result.reject_counts() == {}
    np.testing.assert_array_equal(result.batches[1].raw.view(np.uint8).reshape(-1, 74), t.frames())
    np.testing.assert_array_equal(result.batches[1].device, t.device)


def test_training_windows_aggregate_like_the_fleet() -> None:
    spec = FleetSpec(n_devices=100, seed=13, device_offset_sd=(0.0, 0.0, 0.0))
    fleet = simulate(spec, n_windows=48)
    busy = fleet.columns["inference_count"] > 0
    data = training_windows(spec, n_windows=3000, n_validation=50_000, seed=1)
    mean, var = aggregate_inputs(data.samples)
    for c in range(3):
        assert stats.ks_2samp(mean[:, c], fleet.columns["input_mean"][busy, c]).pvalue > 0.01
        assert stats.ks_2samp(var[:, c], fleet.columns["input_var"][busy, c]).pvalue > 0.01
    shifted = fleet.columns["input_mean"][busy, 0] + spec.sigma(0)
    assert stats.ks_2samp(mean[:, 0], shifted).pvalue < 1e-6, "the test can tell a 1-sigma shift"

    bins = np.minimum((data.confidence * 10).astype(int), 9)
    np.testing.assert_allclose(np.bincount(bins, minlength=10) / len(bins), spec.confidence_probs, atol=0.006)
    correct = data.labels == data.predicted
    for b in (6, 9):
        assert correct[bins == b].mean() == pytest.approx(b / 10 + 0.05, abs=0.03)
    np.testing.assert_allclose(np.bincount(data.predicted) / len(bins), spec.class_priors, atol=0.01)


def test_invalid_specs_and_changes_are_refused() -> None:
    with pytest.raises(ValueError):
        FleetSpec(class_priors=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        FleetSpec(window_s=0)
    with pytest.raises(ValueError):
        Change("confidence_degradation", 1.5)
    with pytest.raises(ValueError):
        Change("class_prior_shift", 0.5)
    with pytest.raises(ValueError):
        Change("input_mean_shift", 1.0, onset=5, end=5)
    with pytest.raises(ValueError):
        Change("teleport", 1.0)  # type: ignore[arg-type]
