"""One typed configuration: a TOML file plus FLEETWATCH_* environment variables (`__` between levels).

Precedence, highest first: environment, the TOML file, defaults. So
`FLEETWATCH_STORE__URL=influxdb://127.0.0.1:8086/fleet fleetwatch run` overrides `[store] url` of the file.
Secrets (`*.password`, `*.secret`, `*.token`) may also come from files: set `<name>_file` to a path
(e.g. a systemd credential) and the value is read from it at load time. Secrets print masked and never
reach the logs.

A bad value fails at start with the key and what is expected, e.g.
`mqtt.url: expected mqtt://host[:port] or mqtts://host[:port] (user:password@ allowed), got 'http://broker'`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.rollout_config import RolloutConfig
from fleetwatch.configbase import Section, check_command_topic, check_device_topic

ENV_PREFIX = "FLEETWATCH_"


def default_data_dir() -> Path:
    """Where state lives when nothing says otherwise: systemd's StateDirectory, else the XDG data dir."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fleetwatch"


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key and what is expected."""


class MqttConfig(Section):
    url: str | None = Field(
        None, description="Broker, mqtt://host:port or mqtts://host:port (TLS); user:password@ allowed. Unset: no MQTT."
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version: 5, or 3.1.1 for brokers without v5 (the demo's embedded broker); 3.1.1 has no "
        "session expiry or receive maximum (the broker's own limits apply) but keeps the persistent session.",
    )
    topic: str = Field("fleet/+/telemetry", description="Subscription; the `+` level is the device id.")
    client_id: str = Field(
        "fleetwatch", description="Fixed client id: the broker keeps the session (and unacked messages) under it."
    )
    shared_group: str | None = Field(
        None, description="Subscribe as $share/<group>/<topic> so several daemons split the load."
    )
    username: str | None = Field(None, description="Overrides the user in the URL.")
    password: SecretStr | None = Field(None, description="Overrides the password in the URL.")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="How long the broker keeps the session offline.")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive.")
    receive_maximum: int = Field(
        10_000,
        ge=1,
        le=65535,
        description="Unacked QoS 1 messages the broker may have in flight to us (MQTT v5 Receive Maximum). "
        "Messages are acked only once durable, so throughput <= receive_maximum / batch latency; the broker's "
        "own limit (mosquitto max_inflight_messages) must be at least this.",
    )
    tls_ca: Path | None = Field(None, description="CA bundle for mqtts:// (default: the system's).")
    tls_cert: Path | None = Field(None, description="Client certificate for mutual TLS.")
    tls_key: Path | None = Field(None, description="Client key for mutual TLS.")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay; doubles on each failure.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"expected mqtt://host[:port] or mqtts://host[:port] (user:password@ allowed), got {value!r}"
            )
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"port in {value!r} is not a number 1..65535") from None
        return value

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_device_topic(value)

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "")
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url or "").scheme == "mqtts"

    def credentials(self) -> tuple[str | None, str | None]:
        parts = urlsplit(self.url or "")
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password.get_secret_value() if self.password else None
        return user, password or (unquote(parts.password) if parts.password else None)

    @property
    def subscription(self) -> str:
        return f"$share/{self.shared_group}/{self.topic}" if self.shared_group else self.topic


class HttpConfig(Section):
    listen: str = Field(
        "127.0.0.1:8080", description="host:port of the HTTP server (Notehub routes, /healthz, /metrics)."
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger request bodies get 413.")
    threads: int = Field(8, ge=1, le=256, description="Worker threads of the HTTP server.")
    enabled: bool = Field(True, description="Serve HTTP (off: no Notehub routes, /healthz or /metrics).")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port (e.g. 127.0.0.1:8080), got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class NotehubConfig(Section):
    secret: SecretStr | None = Field(
        None, description="Shared secret a Notehub route sends in secret_header. Unset: the routes are refused (401)."
    )
    secret_header: str = Field("X-Fleetwatch-Secret", description="Header that carries the route secret.")
    device_field: Literal["device", "sn", "best_id"] = Field("device", description="Event field that names the device.")
    device_header: str = Field(
        "X-Fleetwatch-Device",
        description="For /notehub/binary: header (or query parameter `device`) naming the device.",
    )
    api_url: str = Field("https://api.notefile.net", description="Notehub API base URL (backfill, device commands).")
    token: SecretStr | None = Field(None, description="Notehub API token (backfill, device commands).")
    project: str | None = Field(None, description="Notehub project UID (app:...).")


class StoreConfig(Section):
    url: str = Field(
        "",
        description="embedded:///path/to/dir (default, under the data dir) or "
        "influxdb://[user:password@]host:port/database[?rp=...&token=...&tls=1].",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "":
            return value
        scheme = urlsplit(value).scheme
        if scheme not in ("embedded", "influxdb"):
            raise ValueError(f"expected embedded:///path/to/dir or influxdb://host:port/database, got {value!r}")
        if scheme == "influxdb" and not re.fullmatch(r"/[A-Za-z0-9_\-]+", urlsplit(value).path):
            raise ValueError(f"expected influxdb://host:port/<database> with a plain database name, got {value!r}")
        return value


class StateConfig(Section):
    path: Path | None = Field(None, description="SQLite state database (default: <data_dir>/state.db).")


class FramesConfig(Section):
    schema_dirs: list[Path] = Field(default_factory=list, description="Directories of extra schema *.toml files.")


class PipelineConfig(Section):
    queue_max_messages: int = Field(20_000, ge=1, description="Bounded ingest queue; full = sources stop reading.")
    batch_max_messages: int = Field(5_000, ge=1, description="Decode and write at most this many messages at once.")
    batch_wait_s: float = Field(0.2, gt=0, description="Write a partial batch after this long.")
    spool_dir: Path | None = Field(
        None, description="Disk spool used while the store is down (default: <data_dir>/spool)."
    )
    spool_max_bytes: int = Field(10 << 30, gt=0, description="Spool size at which ingest stops acking (backpressure).")
    replay_interval_s: float = Field(2.0, gt=0, description="How often to retry the store while spooling.")
    ack_timeout_s: float = Field(30.0, gt=0, description="HTTP ingest waits this long for durability before 503.")
    counters_interval_s: int = Field(
        60,
        ge=1,
        description="Write this daemon's ingest counters to the store (measurement `ingest`, tagged with "
        "mqtt.client_id as `instance`) this often; the dashboards' ingest panels and alert rules read them.",
    )


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="text, or JSON lines for log shippers.")


class FleetConfig(Section):
    inventory: Path | None = Field(
        None, description="CSV with a `device` column plus one column per tag (each tag value is a cohort)."
    )


class DriftConfig(Section):
    baselines_dir: Path | None = Field(None, description="Versioned baseline files (default: <data_dir>/baselines).")
    window_s: int = Field(3600, gt=0, description="The aggregation window the devices use (checks align to it).")
    check_delay_s: int = Field(300, ge=0, description="Wait this long after a window ends for late frames.")
    misfire_grace_s: int = Field(900, ge=0, description="A check missed by less than this still runs.")
    q_max: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="BH q-value of a device's snapshot findings and of a cohort's devices-in-alarm count.",
    )
    arl0_windows: float = Field(
        24_000, gt=1, description="CUSUM false-alarm budget: expected windows between false alarms of one device."
    )
    cusum_delta: float = Field(1.0, gt=0, description="CUSUM tuned to detect a shift of this many sigma.")
    cohort_arl0_windows: float = Field(
        8_760, gt=1, description="A cohort's own false-alarm budget: expected windows between its false alarms."
    )
    min_inferences: int = Field(30, ge=1, description="Windows with fewer inferences are not tested on counts.")
    enabled: bool = Field(True, description="Run scheduled drift checks in the daemon.")


class SensorConfig(Section):
    name: str = Field(min_length=1, description="Sensor (channel) name, e.g. accX.")
    units: str = Field("N/A", min_length=1, description="Units, e.g. m/s2.")


def _default_sensors() -> list[SensorConfig]:
    return [SensorConfig(name=axis, units="m/s2") for axis in ("accX", "accY", "accZ")]


class SnippetsConfig(Section):
    """Snippets: raw sensor recordings from devices, kept as a dataset and forwarded to Edge Impulse."""

    enabled: bool = Field(True, description="Ingest snippets (MQTT topic, Notehub notefile and /notehub/snippet).")
    topic: str = Field("fleet/+/snippet", description="MQTT subscription for snippets; the `+` level is the device.")
    notefile: str = Field(
        "snippets.qo", description="Notehub events of this notefile (`file`) carry a snippet in `payload`."
    )
    label_header: str = Field(
        "X-Notecard-Label", description="For /notehub/snippet: header with the snippet's label (optional)."
    )
    dir: Path | None = Field(
        None, description="Dataset directory, one file per snippet (default: <data_dir>/snippets)."
    )
    max_bytes: int = Field(1 << 30, gt=0, description="Dataset size limit; the oldest snippets are pruned beyond it.")
    max_age_days: float = Field(180.0, gt=0, description="Snippets received longer ago than this are pruned.")
    sensors: list[SensorConfig] = Field(
        default_factory=_default_sensors,
        description="Name and units of each channel, in order (channels beyond the list are ch<N>, N/A).",
    )
    device_type: str = Field("fleetwatch", min_length=1, description="Edge Impulse `device_type` of forwarded data.")
    default_label: str = Field(
        "unlabeled", min_length=1, description="Edge Impulse label when neither --label nor the snippet has one."
    )
    ingestion_url: str = Field(
        "https://ingestion.edgeimpulse.com", description="Edge Impulse ingestion service base URL."
    )
    api_key: SecretStr | None = Field(None, description="Edge Impulse project API key (ei_...) for forwarding.")
    hmac_key: SecretStr | None = Field(
        None, description="Edge Impulse project HMAC key: signs forwarded data (HS256). Unset: alg none."
    )
    category: Literal["training", "testing"] = Field("training", description="Edge Impulse dataset category.")
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one forward request.")
    retries: int = Field(5, ge=0, le=20, description="Retries of a forward answered 429/5xx or not answered.")
    backoff_base_s: float = Field(1.0, gt=0, description="First retry waits up to this long (full jitter).")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between forward retries (or Retry-After).")
    request_transport: Literal["mqtt", "notehub"] = Field(
        "mqtt", description="How snippet requests reach devices (MQTT command or Notehub environment variable)."
    )
    command_topic: str = Field("fleet/{device}/cmd/snippet", description="MQTT topic of a snippet request.")
    env_var: str = Field("fleetwatch_snippet", description="Notehub environment variable of a snippet request.")
    request_count: int = Field(3, ge=1, le=100, description="Snippets a request asks each device for.")
    request_ttl_s: int = Field(24 * 3600, gt=0, description="A snippet request expires this long after it is sent.")
    request_on_alert: bool = Field(
        False, description="New or escalated drift requests snippets from the drifted devices automatically."
    )
    request_max_devices: int = Field(
        100, ge=1, description="At most this many devices are asked per drift notification."
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_device_topic(value)

    @field_validator("command_topic")
    @classmethod
    def _command_topic(cls, value: str) -> str:
        return check_command_topic(value)

    @field_validator("ingestion_url")
    @classmethod
    def _ingestion_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://host[:port], got {value!r}")
        return value.rstrip("/")

    @field_validator("sensors")
    @classmethod
    def _sensors(cls, value: list[SensorConfig]) -> list[SensorConfig]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"sensor names must be unique, got {names}")
        return value


class Settings(BaseSettings):
    """The whole configuration; see docs/configuration.md and deploy/fleetwatch.toml for every key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="State, spool, baselines and the embedded store ($STATE_DIRECTORY under systemd, else XDG).",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    notehub: NotehubConfig = Field(default_factory=NotehubConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    snippets: SnippetsConfig = Field(default_factory=SnippetsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the TOML file (passed as init values) over defaults."""
        return (env_settings, init_settings)

    @property
    def store_url(self) -> str:
        return self.store.url or f"embedded://{self.data_dir / 'store'}"

    @property
    def state_path(self) -> Path:
        return self.state.path or self.data_dir / "state.db"

    @property
    def baselines_dir(self) -> Path:
        return self.drift.baselines_dir or self.data_dir / "baselines"

    @property
    def spool_dir(self) -> Path:
        return self.pipeline.spool_dir or self.data_dir / "spool"

    @property
    def snippets_dir(self) -> Path:
        return self.snippets.dir or self.data_dir / "snippets"


def load_config(path: Path | None) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming the first bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see deploy/fleetwatch.toml for every key)"
        lines.append(f"{key}: {message}")
    return "\n".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain values, secrets and URL passwords masked."""
    data = settings.model_dump(mode="json")
    data["store"]["url"] = settings.store_url
    data["state"]["path"] = str(settings.state_path)
    data["pipeline"]["spool_dir"] = str(settings.spool_dir)
    data["snippets"]["dir"] = str(settings.snippets_dir)
    return _mask(data)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


def mask_url(text: str) -> str:
    """Hide the password in scheme://user:password@host and any token=... query parameter."""
    text = re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", r"\1***@", text)
    return re.sub(r"((?:token|password|secret)=)[^&\s]+", r"\1***", text, flags=re.IGNORECASE)


def reference_markdown() -> str:
    """docs/configuration.md: every key, its type, default and meaning."""
    lines = [
        "# Configuration",
        "",
        "One TOML file (`fleetwatch run --config F`, or env `FLEETWATCH_CONFIG`) plus environment variables",
        "`FLEETWATCH_<SECTION>__<KEY>` that override it (`FLEETWATCH_STORE__URL=influxdb://127.0.0.1:8086/fleet`).",
        'Secrets (`password`, `secret`, `token`) may come from files: `<key>_file = "/path"`. A bad value stops',
        "the daemon at start with the key and what it expects; `fleetwatch config check` prints the effective",
        "configuration with secrets masked. An example with every key: `deploy/fleetwatch.toml`.",
        "",
        "Generated from `fleetwatch/config.py` (`fleetwatch config reference`); a test fails when it is stale.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, type_name, default, description in reference():
        escaped = type_name.replace("|", "\\|")
        lines.append(f"| `{key}` | {escaped} | `{default}` | {description} |")
    return "\n".join(lines) + "\n"


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every config key, in order: the source of
    docs/configuration.md and deploy/fleetwatch.toml. Nested sections (`rollout.judge`) follow their
    parent's own keys."""
    rows = []
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, Section):
            rows += _section_rows(section, model)
        else:
            rows.append((section, _type_name(info.annotation), "<data dir>", info.description or ""))
    return rows


def _section_rows(prefix: str, model: type[Section]) -> list[tuple[str, str, str, str]]:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            nested += _section_rows(f"{prefix}.{name}", field.annotation)
        else:
            rows.append((f"{prefix}.{name}", _type_name(field.annotation), _default(field), field.description or ""))
    return rows + nested


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is list and _is_tables(get_args(annotation)[0]):
        return "list of tables"
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    return text.replace("fleetwatch.config.", "")


def _is_tables(item: Any) -> bool:
    """A model, or a union of models (possibly `Annotated` with a discriminator)."""
    if get_origin(item) is Annotated:
        item = get_args(item)[0]
    return all(isinstance(m, type) and issubclass(m, BaseModel) for m in (get_args(item) or (item,)))


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        tables = (", ".join(f'{k} = "{v}"' for k, v in item.model_dump().items()) for item in value)
        return "[" + ", ".join(f"{{{t}}}" for t in tables) + "]"
    return repr(value)


def example_toml() -> str:
    """deploy/fleetwatch.toml: every key, commented, with its default."""
    lines = [
        "# fleetwatch configuration: every key with its default (generated: fleetwatch config example).",
        "# Environment variables override it: FLEETWATCH_<SECTION>__<KEY>, e.g. FLEETWATCH_STORE__URL.",
        '# Secrets (password, secret, token) may instead be read from files: <key>_file = "/path".',
        "",
    ]
    current = ""
    for key, type_name, default, description in reference():
        section, _, name = key.rpartition(".")
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        lines.append(f"# {description} [{type_name}]")
        value = default if default not in ("None", "''") else '""'
        value = value.replace("'", '"').replace("PosixPath(", "").replace(")", "") if value != "[]" else "[]"
        lines.append(f"# {name or key} = {value}")
    return "\n".join(lines) + "\n"
