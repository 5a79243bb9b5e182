"""The firmware telemetry library (firmware/telemetry) agrees with the server, byte for byte and value for value.

Builds and runs the C unit tests, checks the committed generated header is current, re-encodes the shared
golden vectors with the C packer, decodes frames the C aggregator produced from a known stream with
`fleetwatch.frames.decode_messages`, and checks the Cortex-M4 footprint targets. Needs gcc, make and
arm-none-eabi-gcc (Debian: gcc make gcc-arm-none-eabi; scripts/test installs them); fails, never skips,
when they are missing.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.frames import Registry, decode_messages, parse_fw_version
from fleetwatch.frames.cheader import header_filename, render_c_header
from fleetwatch.frames.snippet import Snippet, decode_snippet, encode_snippet

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware" / "telemetry"
BUILD = FIRMWARE / "build"
GOLDEN = ROOT.parent / "shared" / "golden" / "frames-v1.jsonl"
RECEIVED = 1_795_000_000
#: Latency percentile bound of the default build (FWT_LAT_SUB_BITS = 4): |reported - exact| <= exact / 32.
LATENCY_BOUND_DIVISOR = 32
CONF_EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], dtype=np.float32)
FW_VERSION = "2.7.1234"
MODEL_ID = 0x1234ABCD
LOW_BATTERY_MV = 3300


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not found: install it (Debian: apt-get install {package}; scripts/test does this)")


def _make(*targets: str) -> str:
    _require("make", "make")
    _require("gcc", "gcc")
    proc = subprocess.run(
        ["make", "-C", str(FIRMWARE), *targets], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"make {' '.join(targets)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _run(tool: str, stdin: str) -> list[str]:
    proc = subprocess.run([str(BUILD / tool)], input=stdin, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{tool} failed: {proc.stderr}"
    return proc.stdout.split()


@pytest.fixture(scope="module")
def make_test_output() -> str:
    """`make test`: builds the library, the unit tests (two builds) and the host tools, runs the tests."""
    return _make("test")


def test_c_unit_tests_pass(make_test_output: str) -> None:
    summaries = re.findall(r"^(\d+) passed, (\d+) failed$", make_test_output, flags=re.MULTILINE)
    assert len(summaries) == 2, make_test_output
    for passed, failed in summaries:
        assert int(failed) == 0
        assert int(passed) > 500
    bounds = re.findall(r"worst relative error ([0-9.]+), bound 1/(\d+)", make_test_output)
    assert [int(divisor) for _, divisor in bounds] == [LATENCY_BOUND_DIVISOR, 16]
    assert all(0 < float(worst) <= 1 / int(divisor) for worst, divisor in bounds)


def test_committed_c_header_matches_the_schema() -> None:
    schema = Registry.builtin().get(1)
    committed = FIRMWARE / "include" / header_filename(schema)
    assert committed.name == "fw_schema_tinyml_health.h"
    assert committed.read_text(encoding="utf-8") == render_c_header(schema), (
        f"{committed} is stale: regenerate it with `fleetwatch schema c-header 1 -o {committed}`"
    )


def test_c_header_is_deterministic_and_names_its_source() -> None:
    schema = Registry.builtin().get(1)
    text = render_c_header(schema)
    assert text == render_c_header(Registry.builtin().get(1))
    assert "fleetwatch.frames.cheader" in text and "tinyml-health.toml" in text
    assert str(ROOT) not in text
    assert not re.search(r"^\s*#\s*pragma", text, flags=re.MULTILINE) and "__attribute__" not in text
    assert "#define FW_SCHEMA_TINYML_HEALTH_ID 1u" in text
    assert "#define FW_SCHEMA_TINYML_HEALTH_FRAME_LEN 74u" in text
    assert "#define FW_SCHEMA_TINYML_HEALTH_CONF_BINS 10u" in text
    assert "#define FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED (1u << 1)" in text
    for offset, f in schema.field_offsets():
        assert f"#define FW_SCHEMA_TINYML_HEALTH_{f.name.upper()}_OFFSET {offset}u" in text


def _golden_vectors() -> list[dict]:
    if not GOLDEN.is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN}: the repo must sit beside shared/")
    return [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


def _pack_line(frame: dict) -> str:
    """One decoded golden frame as the 32 values fw_pack_lines reads."""
    values = [frame["seq"], frame["window_start"], frame["window_s"], parse_fw_version(frame["fw_version"])]
    values += [frame[k] for k in ("model_id", "inference_count", "anomaly_count", "latency_p50_ms", "latency_p95_ms")]
    values += [frame[k] for k in ("mem_peak_pct", "flags", "battery_mv")]
    values += [*frame["input_mean"], *frame["input_var"], *frame["conf_hist"], *frame["class_counts"]]
    return " ".join(repr(v) for v in values)


def test_c_packer_reencodes_golden_vectors_byte_identical(make_test_output: str) -> None:
    vectors = [v for v in _golden_vectors() if all("ok" in e for e in v["expect"])]
    frames = [e["ok"] for v in vectors for e in v["expect"]]
    assert len(vectors) >= 3 and len(frames) > len(vectors), "the golden set lost its valid vectors"
    packed = iter(_run("fw_pack_lines", "\n".join(_pack_line(f) for f in frames) + "\n"))
    for vector in vectors:
        message = "".join(next(packed) for _ in vector["expect"])
        assert message == vector["hex"], vector["id"]
    assert next(packed, None) is None


def test_c_snippet_packer_decodes_in_python_to_the_same_values(make_test_output: str) -> None:
    """fw_snippet_pack (the device's fws_pack) packs snippets; the server's decoder reads back every header
    field and every float32 sample bit for bit, and the Python encoder writes the same bytes."""
    rng = np.random.default_rng(8)
    cases = [
        (rng.normal([0.0, 0.0, 9.81], 0.5, size=(200, 3)).astype(np.float32), 10.0, 1_795_000_000, 0x1234ABCD, 1),
        (rng.uniform(-1e6, 1e6, size=(7, 16)).astype(np.float32), 0.0625, 0, 0xFFFFFFFF, 3),
        (np.array([[np.float32(1e-38)], [np.float32(-0.0)]], dtype=np.float32), 3_600_000.0, 4_000_000_000, 0, 255),
    ]
    lines = []
    for samples, interval, start, model, reason in cases:
        count, channels = samples.shape
        values = " ".join(repr(float(v)) for v in samples.ravel())
        lines.append(f"{channels} {count} {interval!r} {start} {model} {reason} {values}")
    packed = _run("fw_snippet_pack", "\n".join(lines) + "\n")
    assert len(packed) == len(cases)
    for hex_text, (samples, interval, start, model, reason) in zip(packed, cases, strict=True):
        data = bytes.fromhex(hex_text)
        snippet = decode_snippet(data)
        assert isinstance(snippet, Snippet), snippet
        assert snippet.samples.tobytes() == samples.tobytes()
        assert (snippet.interval_ms, snippet.start_time, snippet.model_id, snippet.reason_code) == (
            float(np.float32(interval)),
            start,
            model,
            reason,
        )
        assert data == encode_snippet(samples, interval_ms=interval, start_time=start, reason=reason, model_id=model)


@dataclass
class Window:
    """One window of the synthetic stream and what the aggregator must report for it."""

    window_start: int
    window_s: int
    latency_us: list[int] = field(default_factory=list)
    confidence: list[np.float32] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    anomalies: list[bool] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    system: list[tuple[int, int, bool]] = field(default_factory=list)

    def commands(self) -> list[str]:
        lines = [f"sys {mem} {battery} {int(rebooted)}" for mem, battery, rebooted in self.system]
        for i, latency in enumerate(self.latency_us):
            rows = self.inputs[i]
            values = " ".join(repr(float(v)) for v in rows.ravel())
            lines.append(
                f"inf {latency} {float(self.confidence[i])!r} {self.classes[i]} {int(self.anomalies[i])} "
                f"{len(rows)} {values}".rstrip()
            )
        return [*lines, f"close {self.window_start} {self.window_s}"]


def _synthetic_windows() -> list[Window]:
    rng = np.random.default_rng(20260523)
    busy = Window(window_start=1_794_992_800, window_s=3600)
    for i in range(400):
        busy.latency_us.append(int(rng.lognormal(np.log(21_000), 0.25)))
        busy.confidence.append(np.float32(rng.beta(5, 2)))
        busy.classes.append(int(rng.choice(4, p=[0.55, 0.25, 0.15, 0.05])))
        busy.anomalies.append(bool(rng.random() < 0.08))
        rows = int(rng.integers(0, 17))
        centre = np.array([-0.42, 0.13, 9.81]) + 0.002 * i
        busy.inputs.append((centre + rng.normal(0, [0.3, 1.1, 0.05], size=(rows, 3))).astype(np.float32))
    for edge in (np.float32(0.0), np.float32(0.7), np.float32(1.0), np.float32(0.099999994)):
        busy.latency_us.append(20_000)
        busy.confidence.append(edge)
        busy.classes.append(3)
        busy.anomalies.append(False)
        busy.inputs.append(np.zeros((0, 3), dtype=np.float32))
    busy.system = [(35, 3950, True), (61, 3890, False), (48, 3920, False)]

    idle = Window(window_start=0, window_s=600, system=[(12, 3250, False)])

    constant = Window(window_start=1_794_996_400, window_s=3600)
    for i in range(50):
        constant.latency_us.append(26_200)
        constant.confidence.append(np.float32(0.91))
        constant.classes.append(i % 4)
        constant.anomalies.append(i % 10 == 0)
        constant.inputs.append(np.full((4, 3), [1.5, -2.25, 0.0], dtype=np.float32))

    saturated = Window(window_start=1_794_996_400, window_s=3600)
    for _ in range(3):
        saturated.latency_us.append(7_000_000)
        saturated.confidence.append(np.float32(0.5))
        saturated.classes.append(1)
        saturated.anomalies.append(True)
        saturated.inputs.append(np.array([[40.0, 0.5, -3.0], [38.0, 0.25, 3.0]], dtype=np.float32))
    return [busy, idle, constant, saturated]


def _nearest_rank_units(latency_us: list[int], p: float) -> int:
    units = sorted(min(us // 100 + (us % 100 >= 50), 65535) for us in latency_us)
    rank = -(-len(units) * round(p * 100) // 100)
    return units[rank - 1]


def _assert_window(frame: dict, window: Window, seq: int) -> None:
    n = len(window.latency_us)
    assert frame["seq"] == seq
    assert (frame["window_start"], frame["window_s"]) == (window.window_start, window.window_s)
    assert (frame["fw_version"], frame["model_id"]) == (FW_VERSION, MODEL_ID)
    assert frame["inference_count"] == n
    assert frame["anomaly_count"] == sum(window.anomalies)
    assert frame["class_counts"] == np.bincount(window.classes, minlength=4).tolist()
    bins = np.clip(np.searchsorted(CONF_EDGES[1:-1], np.array(window.confidence, dtype=np.float32), "right"), 0, 9)
    assert frame["conf_hist"] == np.bincount(bins, minlength=10).tolist()
    assert frame["mem_peak_pct"] == max((m for m, _, _ in window.system), default=0)
    battery = min((b for _, b, _ in window.system if b), default=0)
    assert frame["battery_mv"] == battery
    if n:
        for p, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms")):
            exact = _nearest_rank_units(window.latency_us, p)
            reported = round(frame[name] * 10)
            assert abs(reported - exact) * LATENCY_BOUND_DIVISOR <= exact, (name, reported, exact)
    else:
        assert frame["latency_p50_ms"] == frame["latency_p95_ms"] == 0
    rows = np.concatenate(window.inputs).astype(np.float64) if window.inputs else np.zeros((0, 3))
    saturated = n == 65535 or any(us >= 6_553_450 for us in window.latency_us)
    if len(rows):
        mean, var = rows.mean(axis=0), rows.var(axis=0)
        for c in range(3):
            expected_mean = float(np.clip(mean[c], -32.768, 32.767))
            expected_var = float(min(var[c], 6.5535))
            assert abs(frame["input_mean"][c] - expected_mean) <= 0.001 + 1e-9, ("mean", c)
            assert abs(frame["input_var"][c] - expected_var) <= 0.0001 + 1e-9, ("var", c)
        saturated |= bool(np.any(mean >= 32.7665) or np.any(mean <= -32.7675) or np.any(var >= 6.55345))
    else:
        assert frame["input_mean"] == [0.0, 0.0, 0.0] and frame["input_var"] == [0.0, 0.0, 0.0]
    flags = (window.window_start != 0) | saturated << 1
    flags |= (0 < battery < LOW_BATTERY_MV) << 2 | any(r for _, _, r in window.system) << 3
    assert frame["flags"] == flags


def test_c_aggregated_frames_decode_to_the_expected_values(make_test_output: str) -> None:
    windows = _synthetic_windows()
    script = [f"init {parse_fw_version(FW_VERSION)} {MODEL_ID} {LOW_BATTERY_MV}"]
    script += [line for w in windows for line in w.commands()]
    frames = [bytes.fromhex(h) for h in _run("fw_synth", "\n".join(script) + "\n")]
    assert len(frames) == len(windows)
    assert all(len(f) == 74 for f in frames)

    result = decode_messages(frames, ["synthetic"] * len(frames), [RECEIVED] * len(frames), Registry.builtin())
    assert result.rejects == []
    records = sorted(result.batches[1].records(), key=lambda r: r["seq"])
    for seq, (frame, window) in enumerate(zip(records, windows, strict=True)):
        _assert_window(frame, window, seq)
    busy, idle, constant, saturated = records
    assert busy["flags"] == 0b1001 and idle["flags"] == 0b0100
    assert constant["latency_p50_ms"] == constant["latency_p95_ms"] == 26.2
    assert constant["input_mean"] == [1.5, -2.25, 0.0] and constant["input_var"] == [0.0, 0.0, 0.0]
    assert saturated["flags"] & 0b10 and saturated["input_mean"][0] == 32.767


def test_host_examples_emit_decodable_frames() -> None:
    out = _make("examples").splitlines()
    mqtt = out.index("MQTT PUBLISH topic=fleet/host-demo/telemetry qos=1 retain=0 bytes=74")
    mqtt_frame = bytes.fromhex(out[mqtt + 1])
    notecard = json.loads(next(line for line in out if line.startswith('{"req":"note.add"')))
    assert notecard["file"].endswith(".qo")
    assert base64.b64decode(notecard["payload"], validate=True) == mqtt_frame
    result = decode_messages([mqtt_frame], ["host-demo"], [RECEIVED], Registry.builtin())
    assert result.rejects == []
    (record,) = result.batches[1].records()
    assert record["inference_count"] == 120 and record["fw_version"] == "1.4.2"
    assert sum(record["conf_hist"]) == sum(record["class_counts"]) == 120
    assert record["input_mean"][2] == 1.0 and record["flags"] == 0b1001


def test_footprint_within_targets() -> None:
    _require("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    _require("arm-none-eabi-size", "binutils-arm-none-eabi")
    out = _make("footprint")
    objects = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+[0-9a-f]+\s+\S+/(fw_\w+\.o)$", out, flags=re.MULTILINE)
    assert sorted(name for *_, name in objects) == ["fw_aggregator.o", "fw_crc16.o", "fw_packer.o"]
    assert all(int(bss) == 0 and int(data) == 0 for _, data, bss, _ in objects), "the library keeps no globals"
    flash = int(re.search(r"aggregator \+ packer \+ crc objects: (\d+) bytes", out).group(1))
    state = int(re.search(r"sizeof\(fwt_aggregator_t\): (\d+) bytes", out).group(1))
    assert flash == sum(int(text) + int(data) for text, data, _, _ in objects)
    assert flash <= 2048, f"aggregator + packer take {flash} bytes of flash (target 2048)"
    assert state <= 512, f"aggregator state is {state} bytes (target 512)"
    snippet = re.search(r"snippet packer fw_snippet\.o .*: text (\d+), data (\d+), bss (\d+), flash (\d+) bytes", out)
    assert snippet, "the snippet packer has its own footprint line"
    text, data, bss, snippet_flash = (int(g) for g in snippet.groups())
    assert bss == 0 and data == 0 and snippet_flash == text > 0
