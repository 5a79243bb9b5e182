"""Ingest throughput: MQTT -> fleetwatch -> store against its two ceilings, in one run on the same frames.

Everything is real and local (mosquitto and influxd on 127.0.0.1, started here, with the configs that
`fleetwatch.localservers` gives them) and sees the same N pre-encoded schema-1 frames from the simulator,
one frame per MQTT message on `fleet/<device>/telemetry`:

- publisher: a separate process on one MQTT 3.1.1 connection writing pre-built QoS 1 PUBLISH packets (at
  most 20,000 unacknowledged), standing for the devices; paho's own publish path is slower than what is
  measured here, so it would cap every row;
- ceiling A: a bare paho-mqtt subscriber (MQTT v5, QoS 1, acknowledging as it receives): messages/s from
  the first publish to the last message received; the same with `fleetwatch.mqttclient.Client` (paho's
  client with the daemon's faster receive path) as ceiling A', the ceiling of the daemon's own client;
- ceiling B: bare `/write` of the same points to the same influxd (line protocol and gzip done beforehand,
  5000 lines per request, one connection): points/s;
- pipeline alone: `Pipeline.process` in this process on batches of 5000 messages, no MQTT: what the
  daemon's single writer thread can do (decode, points, encode, write, ack callbacks);
- end to end: `fleetwatch run` as a subprocess, from the first publish until its /metrics count every frame
  stored (polled every 50 ms); then zero loss checked in the store itself (`SELECT count(seq)` in influxd,
  `read_frames` of the embedded store) and the daemon's peak RSS read from /proc/<pid>/status (VmHWM);
  once with the default settings and once with `--set` ones (default: TUNED below).

    python benchmarks/ingest.py [--frames 100000] [--quick] [--set pipeline.batch_wait_s=0.05 ...]

The publisher, mosquitto, influxd and the daemon share the machine's cores (2 here): every rate is a lower
bound, and the CPU seconds each process used during the row are printed beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import paho.mqtt.client as mqtt
import requests
from _machine import describe
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.config import Settings
from fleetwatch.daemon import build_pipeline
from fleetwatch.frames import FrameBatch, Registry, decode_messages
from fleetwatch.localservers import Influxd, Mosquitto, free_port
from fleetwatch.metrics import Metrics
from fleetwatch.mqttclient import Client
from fleetwatch.pipeline import Message
from fleetwatch.simulate import FleetSpec, simulate
from fleetwatch.sinks import open_store
from fleetwatch.sinks._lineprotocol import encode
from fleetwatch.sinks.model import frame_points
from fleetwatch.state import StateDB

SCHEMA = Registry.builtin().get(1)
DEVICES = 1000
WRITE_CHUNK = 5000
#: Packets per send() of the publisher, and how many may wait for their PUBACK (below the 65535 packet ids).
SEND_CHUNK = 500
UNACKED_MAX = 20_000
POLL_S = 0.05
#: The setting measured beside the defaults (see the report in docs/benchmarks.md for why).
TUNED = {"pipeline.batch_wait_s": "0.05"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Fleet:
    """The frames every row sends: payloads, their devices, pre-built MQTT packets, the decoded batch."""

    payloads: list[bytes]
    devices: list[str]
    received: list[int]
    packets: bytes
    chunk_ends: list[int]

    def __len__(self) -> int:
        return len(self.payloads)

    def batch(self) -> FrameBatch:
        return decode_messages(self.payloads, self.devices, self.received, Registry.builtin()).batches[SCHEMA.id]


@dataclass
class Row:
    path: str
    rate: float
    unit: str = "frames/s"
    settings: str = ""
    stored: int | None = None
    expected: int | None = None
    rss_mb: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    note: str = ""


def make_fleet(n: int) -> Fleet:
    devices = min(DEVICES, n)
    telemetry = simulate(FleetSpec(n_devices=devices, seed=1), n_windows=-(-n // devices))
    payloads = telemetry.messages()[:n]
    names = [str(d) for d in telemetry.device[:n].tolist()]
    packets = bytearray()
    ends = []
    for i, (device, payload) in enumerate(zip(names, payloads, strict=True)):
        topic = f"fleet/{device}/telemetry".encode()
        body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", i % 65535 + 1) + payload
        packets += b"\x32" + _remaining_length(len(body)) + body
        if (i + 1) % SEND_CHUNK == 0 or i + 1 == n:
            ends.append(len(packets))
    received = [int(r) for r in telemetry.received[:n].tolist()]
    return Fleet(payloads, names, received, bytes(packets), ends)


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- the publisher (a forked process) --------------------------------------------------------------
class Publisher:
    """Connects in a child process; `start()` lets it publish every frame; `result()` is (seconds, CPU s)."""

    def __init__(self, port: int, fleet: Fleet) -> None:
        context = multiprocessing.get_context("fork")
        self._go = context.Event()
        self._result, child_end = context.Pipe(duplex=False)
        ready = context.Event()
        self._process = context.Process(target=_publish, args=(port, fleet, ready, self._go, child_end), daemon=True)
        self._process.start()
        if not ready.wait(10):
            raise RuntimeError("the publisher did not connect to mosquitto")

    def start(self) -> float:
        started = time.perf_counter()
        self._go.set()
        return started

    def result(self, timeout: float) -> tuple[float, float]:
        if not self._result.poll(timeout):
            self._process.kill()
            raise RuntimeError(f"the publisher got no PUBACK for every frame within {timeout:.0f}s")
        elapsed, cpu = self._result.recv()
        self._process.join(10)
        return elapsed, cpu


def _publish(port: int, fleet: Fleet, ready: threading.Event, go: threading.Event, result: Connection) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"bench-publisher-{os.getpid()}".encode()
    connect = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", len(client_id)) + client_id  # clean, no keepalive
    sock.sendall(b"\x10" + _remaining_length(len(connect)) + connect)
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise RuntimeError("mosquitto refused the publisher")
    acked = [0]
    progress = threading.Condition()

    def read_pubacks() -> None:  # only 4-byte PUBACKs come after the CONNACK (no keepalive, no subscription)
        while data := sock.recv(1 << 16):
            with progress:
                acked[0] += len(data)
                progress.notify_all()

    threading.Thread(target=read_pubacks, daemon=True).start()
    ready.set()
    go.wait()
    started = time.perf_counter()
    view = memoryview(fleet.packets)
    start = 0
    for k, end in enumerate(fleet.chunk_ends):
        sock.sendall(view[start:end])
        start = end
        sent = min((k + 1) * SEND_CHUNK, len(fleet))
        with progress:
            progress.wait_for(lambda sent=sent: sent - acked[0] // 4 <= UNACKED_MAX)
    with progress:
        progress.wait_for(lambda: acked[0] // 4 >= len(fleet))
    result.send((time.perf_counter() - started, time.process_time()))
    sock.sendall(b"\xe0\x00")
    sock.close()


# -- CPU accounting ------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def cpu_used(processes: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """CPU seconds each process (by pid; 0 = this process) used inside the block, added to `into`."""

    def now(pid: int) -> float:
        return time.process_time() if pid == 0 else cpu_seconds(pid)

    before = {name: now(pid) for name, pid in processes.items()}
    yield
    into.update({name: now(pid) - before[name] for name, pid in processes.items()})


# -- the rows ----------------------------------------------------------------------------------------
def ceiling_a(broker: Mosquitto, influxd: Influxd, fleet: Fleet, client_class: type[mqtt.Client], label: str) -> Row:
    publisher = Publisher(broker.port, fleet)
    n = len(fleet)
    count = [0]
    last = [0.0]
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == n:
            last[0] = time.perf_counter()
            done.set()

    client = client_class(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{os.getpid()}", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe("fleet/+/telemetry", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    row = Row(label, 0.0, "messages/s", expected=n)
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the bare subscriber did not subscribe")
        with cpu_used(_servers(broker, influxd, subscriber=0), row.cpu_s):
            started = publisher.start()
            finished = done.wait(deadline(n))
        row.cpu_s["publisher"] = publisher.result(30)[1]
    finally:
        client.disconnect()
        client.loop_stop()
    row.stored = count[0]
    row.rate = n / (last[0] - started) if finished else float("nan")
    return row


def ceiling_b(influxd: Influxd, fleet: Fleet) -> Row:
    database = "ceiling_b"
    influxd.query(f'CREATE DATABASE "{database}"')
    points = frame_points(fleet.batch())
    bodies = [
        gzip.compress(encode(points.take(slice(i, i + WRITE_CHUNK))), 1) for i in range(0, len(points), WRITE_CHUNK)
    ]
    row = Row("ceiling B: bare /write to influxd", 0.0, "points/s", expected=len(points))
    with requests.Session() as session, cpu_used({"influxd": _pid(influxd)}, row.cpu_s):
        started = time.perf_counter()
        for body in bodies:
            response = session.post(
                f"{influxd.http_url}/write",
                params={"db": database, "precision": "s"},
                data=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
                timeout=60,
            )
            response.raise_for_status()
        row.rate = len(points) / (time.perf_counter() - started)
    row.stored = influx_count(influxd, database)
    return row


def pipeline_alone(store_url: str, label: str, fleet: Fleet, data: Path, processes: dict[str, int]) -> Row:
    settings = Settings(data_dir=data, store={"url": store_url})
    db = StateDB(settings.state_path)
    store = open_store(store_url)
    pipeline = build_pipeline(settings, db, store, Metrics())
    acked = [0]

    def ack() -> None:
        acked[0] += 1

    now = int(time.time())
    messages = [Message(p, d, now, "mqtt", ack) for p, d in zip(fleet.payloads, fleet.devices, strict=True)]
    row = Row(f"pipeline alone -> {label} (`Pipeline.process`, no MQTT)", 0.0, expected=len(fleet))
    with cpu_used({**processes, "this process": 0}, row.cpu_s):
        started = time.perf_counter()
        for i in range(0, len(messages), WRITE_CHUNK):
            row.stored = (row.stored or 0) + pipeline.process(messages[i : i + WRITE_CHUNK]).stored
        row.rate = len(fleet) / (time.perf_counter() - started)
    store.close()
    db.close()
    if acked[0] != len(fleet):
        row.note = f"{acked[0]} acks"
    return row


def end_to_end(
    broker: Mosquitto,
    influxd: Influxd,
    fleet: Fleet,
    store_url: str,
    label: str,
    settings: dict[str, str],
    data: Path,
    count_stored: Callable[[], int],
) -> Row:
    n = len(fleet)
    http = free_port()
    env = {
        **os.environ,
        "FLEETWATCH_DATA_DIR": str(data),
        "FLEETWATCH_STORE__URL": store_url,
        "FLEETWATCH_MQTT__URL": broker.url,
        "FLEETWATCH_MQTT__CLIENT_ID": f"bench-daemon-{http}",
        "FLEETWATCH_HTTP__LISTEN": f"127.0.0.1:{http}",
        "FLEETWATCH_DRIFT__ENABLED": "false",
        "FLEETWATCH_LOG__LEVEL": "WARNING",
        **{"FLEETWATCH_" + key.upper().replace(".", "__"): value for key, value in settings.items()},
    }
    described = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    row = Row(f"`fleetwatch run`: MQTT -> {label}", 0.0, settings=described, expected=n)
    data.mkdir(parents=True)
    with (data / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "fleetwatch", "run"], env=env, stderr=log)
    try:
        wait_ready(daemon, http)
        publisher = Publisher(broker.port, fleet)
        metrics = requests.Session()
        stored = 0
        with cpu_used({"daemon": daemon.pid, **_servers(broker, influxd)}, row.cpu_s):
            started = publisher.start()
            limit = started + deadline(n)
            while time.perf_counter() < limit and stored < n:
                time.sleep(POLL_S)
                stored = frames_stored(metrics, http)
            elapsed = time.perf_counter() - started
        publish_s, row.cpu_s["publisher"] = publisher.result(30)
        row.rss_mb = peak_rss_mb(daemon.pid)
        row.rate = n / elapsed if stored >= n else float("nan")
        row.note = f"publisher done after {publish_s:.1f} s"
        if stored < n:
            row.note += f"; only {stored} stored within {deadline(n):.0f} s"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    row.stored = count_stored()
    return row


def wait_ready(daemon: subprocess.Popen, http: int) -> None:
    """Until /healthz/ready answers 200 (MQTT connected); then a moment for the SUBACK."""
    for _ in range(300):
        if daemon.poll() is not None:
            raise RuntimeError(f"fleetwatch run exited with {daemon.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{http}/healthz/ready", timeout=1).status_code == 200:
                time.sleep(0.5)
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError("fleetwatch run did not become ready within 30 s")


def frames_stored(session: requests.Session, http: int) -> int:
    for line in session.get(f"http://127.0.0.1:{http}/metrics", timeout=5).text.splitlines():
        if line.startswith("fleetwatch_frames_stored_total "):
            return int(float(line.split()[1]))
    return 0


def influx_count(influxd: Influxd, database: str) -> int:
    answer = json.loads(influxd.query(f'SELECT count(seq) FROM "{database}".."telemetry"'))
    series = answer["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def embedded_count(url: str) -> int:
    store = open_store(url, read_only=True)
    try:
        return len(store.read_frames(0, 2**32, schema=SCHEMA)["time"])
    finally:
        store.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def deadline(n: int) -> float:
    """Seconds a row may take: 1000 frames/s at worst, and at least a minute."""
    return max(60.0, n / 1000)


def _pid(server: Mosquitto | Influxd) -> int:
    if server.process is None:
        raise RuntimeError(f"{server.name} is not running")
    return server.process.pid


def _servers(broker: Mosquitto, influxd: Influxd, **more: int) -> dict[str, int]:
    return {**more, "mosquitto": _pid(broker), "influxd": _pid(influxd)}


# -- output --------------------------------------------------------------------------------------
def table(rows: list[Row], lower: float, lower_own: float) -> list[str]:
    out = [
        "| path | settings | rate | vs lower ceiling (A, B) | vs lower of A', B | stored / sent | daemon peak RSS "
        "| CPU s used during the row |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratio = f"{row.rate / lower:.0%} | {row.rate / lower_own:.0%}" if row.unit == "frames/s" else " | "
        stored = f"{row.stored:,} / {row.expected:,}" if row.stored is not None and row.expected else ""
        if row.stored is not None and row.stored != row.expected:
            stored += " **LOSS**"
        rss = f"{row.rss_mb:.0f} MB" if row.rss_mb is not None else ""
        cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in row.cpu_s.items())
        if row.note:
            cpu += f" ({row.note})"
        rate = f"{row.rate:,.0f} {row.unit}"
        out.append(f"| {row.path} | {row.settings} | {rate} | {ratio} | {stored} | {rss} | {cpu} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames (= MQTT messages) per row")
    parser.add_argument("--quick", action="store_true", help="20,000 frames: a smoke run of every row")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"settings of the second end-to-end run of each store (default: {TUNED})",
    )
    args = parser.parse_args()
    n = 20_000 if args.quick else args.frames
    tuned = dict(item.split("=", 1) for item in args.set) if args.set else TUNED
    fleet = make_fleet(n)
    print(f"machine: {describe()}")
    print(f"frames: {n:,}, one per MQTT message (QoS 1), {min(DEVICES, n)} devices")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker, Influxd() as influxd:
        work = Path(tmp)
        servers = _servers(broker, influxd)
        rows.append(ceiling_a(broker, influxd, fleet, mqtt.Client, "ceiling A: bare paho subscriber"))
        rows.append(ceiling_a(broker, influxd, fleet, Client, "ceiling A': bare subscriber on fleetwatch's Client"))
        rows.append(ceiling_b(influxd, fleet))
        influxd.query('CREATE DATABASE "alone"')
        rows.append(pipeline_alone(influxd.url("alone"), "InfluxDB", fleet, work / "alone-influx", servers))
        rows.append(
            pipeline_alone(f"embedded://{work / 'alone-store'}", "embedded", fleet, work / "alone-emb", servers)
        )
        for i, settings in enumerate(({}, tuned)):
            database = f"e2e{i}"
            influxd.query(f'CREATE DATABASE "{database}"')
            rows.append(
                end_to_end(
                    broker,
                    influxd,
                    fleet,
                    influxd.url(database),
                    "InfluxDB",
                    settings,
                    work / f"influx{i}",
                    lambda database=database: influx_count(influxd, database),
                )
            )
        for i, settings in enumerate(({}, tuned)):
            url = f"embedded://{work / f'store{i}'}"
            rows.append(
                end_to_end(
                    broker,
                    influxd,
                    fleet,
                    url,
                    "embedded",
                    settings,
                    work / f"embedded{i}",
                    lambda url=url: embedded_count(url),
                )
            )
    bare, own, write = (row.rate for row in rows[:3])
    print("\n".join(table(rows, min(bare, write), min(own, write))))


if __name__ == "__main__":
    main()
