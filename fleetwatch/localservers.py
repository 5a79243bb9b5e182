"""Real local servers for tests, benchmarks and the demo: mosquitto and influxd on loopback.

Each runs on a free 127.0.0.1 port in a throw-away directory, is waited for until it answers, and is
stopped with SIGTERM (SIGKILL after a timeout). `stop()` / `start()` keep the port and the data directory,
so a fault test can take a server away and bring it back.

>>> with Mosquitto() as broker:              # doctest: +SKIP
...     print(broker.url)                    # mqtt://127.0.0.1:PORT
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


class ServerError(RuntimeError):
    """A local server that could not be found or started; the message says what to install or read."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(candidates: tuple[str, ...], package: str) -> str:
    for name in candidates:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    raise ServerError(f"{candidates[0]} not found: install the Debian package `{package}` (apt-get install {package})")


class _Server(ABC):
    """Start/stop bookkeeping shared by the servers."""

    name = "server"

    def __init__(self, directory: Path | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix=f"fleetwatch-{self.name}-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.dir / f"{self.name}.log"

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def _ready(self) -> bool:
        """True once the server answers."""

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            return
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise ServerError(f"{self.name} did not start on 127.0.0.1:{self.port} within {timeout}s; log:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Mosquitto(_Server):
    """A mosquitto broker on 127.0.0.1 that keeps every QoS 1 message for offline persistent sessions."""

    name = "mosquitto"

    def __init__(self, directory: Path | None = None, *, persistence: bool = False, extra_config: str = "") -> None:
        super().__init__(directory)
        self.binary = _binary(MOSQUITTO_PATHS, "mosquitto")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "user root",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "max_packet_size 1048576",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            extra_config,
        ]
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config)]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


class Influxd(_Server):
    """An InfluxDB 1.x server (the v1 HTTP API) on 127.0.0.1, data in its directory."""

    name = "influxd"

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__(directory)
        self.binary = _binary(("influxd",), "influxdb")
        data = self.dir / "data"
        self.config = self.dir / "influxdb.conf"
        self.config.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:0"

[meta]
  dir = "{data}/meta"
  logging-enabled = false

[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = false
"""
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        """A fleetwatch store URL for `database` on this server."""
        return f"influxdb://127.0.0.1:{self.port}/{database}"

    def query(self, q: str) -> bytes:
        """Run an InfluxQL statement (POST /query); returns the JSON body."""
        data = urllib.parse.urlencode({"q": q}).encode()
        with urllib.request.urlopen(f"{self.http_url}/query", data=data, timeout=10) as response:
            return response.read()

    def _command(self) -> list[str]:
        return [self.binary, "-config", str(self.config)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/ping", timeout=0.5) as response:
                return response.status == 204
        except OSError:
            return False
