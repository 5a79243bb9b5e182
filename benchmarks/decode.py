"""Decode throughput: fleetwatch's batch decoder vs a straightforward per-frame decoder, side by side.

Both decode the same homogeneous schema-1 frames (CRC included) on one core. The baseline is what one
would write first: `struct.iter_unpack` over each frame plus `binascii.crc_hqx` for its CRC, building the
same engineering-unit values. Two shapes: one frame per message (the common MQTT case) and 100-frame
messages (backlog flushes).

    python benchmarks/decode.py [--frames 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import binascii
import struct
import time
from collections.abc import Callable

import numpy as np
from _machine import describe, pin_to_one_core

from fleetwatch.frames import Registry, decode_buffer, decode_messages, encode_frames, native

FRAME = struct.Struct("<BBBBHIHII HHHHBBH3h3H10H4H H".replace(" ", ""))


def make_frames(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    count = rng.integers(0, 2000, n)
    hist = rng.multinomial(1, [0.1] * 10, size=n) * count[:, None]
    classes = rng.multinomial(1, [0.25] * 4, size=n) * count[:, None]
    p50 = rng.integers(10, 500, n)
    values = {
        "seq": np.arange(n) % 65536,
        "window_start": np.full(n, 1_795_000_000),
        "window_s": np.full(n, 3600),
        "fw_version": np.full(n, 0x01020003),
        "model_id": np.full(n, 123456789),
        "inference_count": count,
        "anomaly_count": count // 10,
        "latency_p50_ms": p50 / 10,
        "latency_p95_ms": (p50 + 50) / 10,
        "mem_peak_pct": rng.integers(0, 101, n),
        "battery_mv": rng.integers(3000, 4200, n),
        "input_mean": rng.integers(-2000, 2000, (n, 3)) / 1000,
        "input_var": rng.integers(0, 20000, (n, 3)) / 10000,
        "conf_hist": hist,
        "class_counts": classes,
    }
    return encode_frames(Registry.builtin().get(1), values)


def baseline(messages: list[bytes], received: int) -> int:
    """Per frame: walk, CRC with binascii, unpack with struct, convert units, check invariants."""
    ok = 0
    out = []
    for message in messages:
        for pos in range(0, len(message), 74):
            frame = message[pos : pos + 74]
            if binascii.crc_hqx(frame[:72], 0xFFFF) != int.from_bytes(frame[72:], "little"):
                continue
            for v in FRAME.iter_unpack(frame):
                count, anomalies, p50, p95, mem = v[9], v[10], v[11], v[12], v[13]
                if (
                    v[0] != 0xFB
                    or v[2] != 1
                    or v[6] == 0
                    or sum(v[22:32]) != count
                    or sum(v[32:36]) != count
                    or anomalies > count
                    or p50 > p95
                    or mem > 100
                    or v[5] > received + 86400
                ):
                    continue
                means = [x / 1000 for x in v[16:19]]
                variances = [x / 10000 for x in v[19:22]]
                out.append(
                    (
                        v[4],
                        v[5],
                        v[6],
                        v[7],
                        v[8],
                        count,
                        anomalies,
                        p50 / 10,
                        p95 / 10,
                        mem,
                        v[14],
                        v[15],
                        means,
                        variances,
                        v[22:32],
                        v[32:36],
                    )
                )
                ok += 1
    return ok


def best_of(repeat: int, fn: Callable[..., object], *args: object) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pin_to_one_core()
    n = args.frames
    registry = Registry.builtin()
    rows = make_frames(n)
    received = 1_795_003_600
    print(f"machine: {describe()}")
    if native.routines is not None:
        print("decoder routines: C, one pass per frame (header, CRC slicing-by-8, rules)")
    else:
        print("decoder routines: numpy fallback (C not built: pip install -e . first)")
    print("| shape | frames | fleetwatch (frames/s) | baseline (frames/s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for per_message in (1, 100):
        messages = [rows[i : i + per_message].tobytes() for i in range(0, n, per_message)]
        devices = np.array([f"dev-{i % 1000:05d}" for i in range(len(messages))], dtype=object)
        times = np.full(len(messages), received)
        assert decode_messages(messages, devices, times, registry).frame_count == n
        assert baseline(messages[: 1000 // per_message], received) == 1000
        fast = best_of(args.repeat, decode_messages, messages, devices, times, registry)
        slow = best_of(max(1, args.repeat // 2), baseline, messages, received)
        print(f"| {per_message} frame(s)/message | {n:,} | {n / fast:,.0f} | {n / slow:,.0f} | {slow / fast:.1f}x |")
    buf = rows.tobytes()
    lengths = np.full(n, 74)
    devices = np.array([f"dev-{i % 1000:05d}" for i in range(n)], dtype=object)
    fast = best_of(args.repeat, decode_buffer, buf, lengths, devices, np.full(n, received), registry)
    print(f"| 1 frame/message, one pre-joined buffer (`decode_buffer`) | {n:,} | {n / fast:,.0f} | | |")


if __name__ == "__main__":
    main()
