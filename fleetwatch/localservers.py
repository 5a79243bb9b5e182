"""Real local servers for tests, benchmarks and the demo: mosquitto and influxd, on 127.0.0.1 only.

Each server gets a free loopback port and a throw-away directory holding its config, its data and its log.
`start()` waits until the server answers (and fails with the log when it does not); `stop()` sends
SIGTERM, then SIGKILL after a timeout; `restart()` is stop + start on the same port and data directory,
for fault tests. As a context manager a server is started on entry, and stopped and its directory
removed on exit.

>>> with Mosquitto() as broker, Influxd() as influxd:  # doctest: +SKIP
...     broker.url, influxd.url("fleet")
('mqtt://127.0.0.1:40127', 'influxdb://127.0.0.1:38411/fleet')

The binaries come from Debian packages: `mosquitto` (/usr/sbin/mosquitto) and `influxdb` 1.x
(/usr/bin/influxd). They are looked up on PATH and in the sbin directory beside each bin directory on it.
Where no mosquitto is installed, `EmbeddedBroker` runs the amqtt broker (PyPI `amqtt`, the `demo` extra)
in this process instead: MQTT 3.1.1 only, no persistence, for the demo.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

HOST = "127.0.0.1"
log = logging.getLogger(__name__)
_LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """A local server that could not be found or started; the message says what to install or read."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def find_binary(name: str, package: str) -> str:
    """The path of `name` on PATH (or in an sbin beside a bin on it); ServerError naming the package if none."""
    path = os.environ.get("PATH", "")
    dirs = [d for d in path.split(os.pathsep) if d]
    dirs += [str(Path(d).with_name("sbin")) for d in dirs if Path(d).name == "bin"]
    found = shutil.which(name, path=os.pathsep.join(dirs)) if dirs else None
    if found is None:
        raise ServerError(
            f"{name} not found on PATH ({path or 'empty'}) nor in the sbin directories beside it: "
            f"install the Debian package `{package}` (apt-get install {package})"
        )
    return found


class LocalServer(ABC):
    """One server process on a loopback port, with its config, data and log in `dir`."""

    name: ClassVar[str]
    binary_name: ClassVar[str]
    package: ClassVar[str]

    def __init__(self, directory: Path | None = None, *, startup_timeout: float = 30.0) -> None:
        self.binary = find_binary(self.binary_name, self.package)
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=f"fleetwatch-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / f"{self.name}.log"
        self.config = self.dir / f"{self.name}.conf"
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_start = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it answers; a no-op when it runs. Raises ServerError."""
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._launch()
                break
            except ServerError:
                # Another process may have taken the free port between our check and the bind; a first
                # start may move on to another port, a restart must keep its port.
                if self._started_once or attempt == 2 or "in use" not in self._log_tail():
                    raise
                self.port = free_port()
        self._started_once = True
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the directory stays (for `start()` again)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def restart(self) -> Self:
        """Stop and start again on the same port with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the directory when this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def _config_text(self) -> str:
        """The whole config file (written before each start; it names the port and the directories)."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def _ready(self) -> bool:
        """True once this server (not something else on the port) answers."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _launch(self) -> None:
        self.config.write_text(self._config_text())
        command = self._command()
        with self.log.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(command)}\n".encode())
            log.flush()
            self._log_start = log.tell()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._environment()
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._ready():
                return
            time.sleep(0.05)
        code = self.process.poll()
        self.stop()
        state = f"exited with code {code}" if code is not None else f"did not answer within {self.startup_timeout}s"
        raise ServerError(
            f"{self.name} on {HOST}:{self.port} {state}.\ncommand: {' '.join(command)}\nconfig: {self.config}\n"
            f"last lines of {self.log}:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        """The last lines the server logged since it was last started."""
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


class Mosquitto(LocalServer):
    """A mosquitto 2.x broker on 127.0.0.1 (anonymous access), sized for tests that publish a lot.

    `max_queued_messages` is raised so QoS 1 messages for an offline persistent session are not dropped
    (the default keeps 1000), and in-flight messages are not limited. `persistence=True` keeps sessions and
    queued messages across `restart()` (saved on SIGTERM). `extra_config` is appended to the config.
    """

    name = "mosquitto"
    binary_name = "mosquitto"
    package = "mosquitto"
    mqtt_protocol: ClassVar[str] = "5"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        persistence: bool = False,
        extra_config: str = "",
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.persistence = persistence
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def _config_text(self) -> str:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            # Started as root, mosquitto would switch to the `mosquitto` user and lose access to this
            # directory; as another user this line has no effect.
            "user root",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {data}/",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages false",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config)]

    def _ready(self) -> bool:
        if " running" not in self._log_tail():
            return False
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False


class Influxd(LocalServer):
    """An InfluxDB 1.x server (the v1 HTTP API) on 127.0.0.1, data and log in its directory.

    The config is written in full, because influxd silently ignores keys it does not know: HTTP on
    127.0.0.1:<port>, the RPC (backup) service on 127.0.0.1 with a kernel-chosen port, no usage
    reporting, no self-monitoring database, and every other listener (UDP, Graphite, collectd, OpenTSDB)
    off. INFLUXDB_* environment variables, which would override the file, are not passed on.
    """

    name = "influxd"
    binary_name = "influxd"
    package = "influxdb"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, database: str) -> str:
        """The fleetwatch store URL of `database` on this server."""
        return f"influxdb://{HOST}:{self.port}/{database}"

    def query(self, statement: str) -> bytes:
        """Run InfluxQL (POST /query); returns the JSON body."""
        data = urllib.parse.urlencode({"q": statement}).encode()
        with urllib.request.urlopen(f"{self.http_url}/query", data=data, timeout=10) as response:
            return response.read()

    def _config_text(self) -> str:
        return f"""reporting-disabled = true
bind-address = "{HOST}:0"

[meta]
  dir = "{self.dir}/meta"
  retention-autocreate = true
  logging-enabled = true

[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  index-version = "inmem"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{self.port}"
  auth-enabled = false
  log-enabled = false
  write-tracing = false
  pprof-enabled = false
  https-enabled = false
  max-row-limit = 0

[logging]
  format = "logfmt"
  level = "info"
  suppress-logo = true

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

    def _command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.config)]

    def _environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/ping", timeout=0.5) as response:
                return response.status == 204 and response.headers.get("X-Influxdb-Version") is not None
        except (OSError, urllib.error.URLError):
            return False


class EmbeddedBroker:
    """The amqtt broker on a free loopback port, in an asyncio loop on a thread of this process.

    Anonymous access, QoS 0-2, retained messages and persistent sessions while it runs; MQTT 3.1.1 only
    (clients must set `mqtt.protocol = "3.1.1"`). `start()` and `stop()` as with `Mosquitto`.
    """

    mqtt_protocol: ClassVar[str] = "3.1.1"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise ServerError(
                "the embedded MQTT broker needs amqtt: pip install 'fleetwatch[demo]' (or install mosquitto)"
            ) from None
        self._broker_type = Broker
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    def start(self) -> Self:
        """Start the broker and wait until it listens; a no-op when it runs. Raises ServerError."""
        if self.running:
            return self
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fleetwatch-amqtt", daemon=True)
        self._thread.start()
        self._loop = loop
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def launch() -> Any:
            broker = self._broker_type(config)
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(launch(), loop).result(self.startup_timeout)
        except Exception as exc:
            self._stop_loop()
            raise ServerError(f"embedded MQTT broker (amqtt) on {HOST}:{self.port} did not start: {exc}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down (clients are disconnected) and end its thread."""
        broker, self._broker = self._broker, None
        if broker is not None and self._loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), self._loop).result(timeout)
            except Exception as exc:  # its loop is stopped below all the same
                log.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
        self._stop_loop()

    def close(self) -> None:
        self.stop()

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if loop is not None and not loop.is_running():
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
