"""One typed configuration: a TOML file plus EDGEBOX_SECTION__KEY environment overrides.

Every section is a frozen dataclass; unknown sections or keys and values of the
wrong type are rejected with the key and, when it comes from the file, its line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from edgebox.errors import ConfigError

ENV_PREFIX = "EDGEBOX_"
CONFIG_ENV = "EDGEBOX_CONFIG"


@dataclass(frozen=True)
class BoxSection:
    """Who this box is and where it keeps its data."""

    box_id: str = "box-0001"
    organisation: str = "Demo Organisation"
    site: str = "Demo Vehicle"
    data_dir: str = "data"


@dataclass(frozen=True)
class ServerSection:
    """The HTTPS server that cameras and the web UI talk to."""

    listen: str = "0.0.0.0:8443"
    tls: bool = True
    threads: int = 16
    public_url: str = ""


@dataclass(frozen=True)
class IngestSection:
    """Limits of the tus ingest endpoint."""

    max_upload_bytes: int = 64 * 1024**3
    expire_hours: int = 24
    reserve_free_bytes: int = 256 * 1024**2
    pairing_code_minutes: int = 10
    revoke_on_repair: bool = True


@dataclass(frozen=True)
class VaultSection:
    """How recordings are encrypted at rest."""

    suite: str = "AES-256-GCM"
    segment_size: int = 1024 * 1024


@dataclass(frozen=True)
class CustodySection:
    """The custody log's signed checkpoints."""

    checkpoint_minutes: int = 15


@dataclass(frozen=True)
class UpstreamSection:
    """The MQTT 5 link to central; an empty broker means the box runs offline."""

    broker: str = ""
    username: str = ""
    password_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    ca: str = ""
    chunk_size: int = 1024 * 1024
    window: int = 16
    bandwidth_bytes_per_second: int = 0
    session_expiry_hours: int = 168
    keepalive_seconds: int = 30
    ack_timeout_seconds: int = 20


@dataclass(frozen=True)
class ReplicationSection:
    """Litestream replication of the metadata database to a second medium."""

    enabled: bool = True
    replica_dir: str = "data/replica"
    sync_interval_seconds: int = 1
    s3_url: str = ""
    litestream_bin: str = ""
    ship_interval_seconds: int = 60


@dataclass(frozen=True)
class RetentionSection:
    """How long footage is kept; nothing ever goes before central confirmed its copy."""

    floor_days: int = 30
    default_days: int = 31
    category_days: dict[str, int] = field(default_factory=dict)
    keep_synced_days: int = 7


@dataclass(frozen=True)
class StorageSection:
    """Disk watermarks (fractions of the data disk in use)."""

    low_watermark: float = 0.80
    high_watermark: float = 0.90


ORGANISATION_TYPES = ("police", "fire", "ambulance", "rail", "security", "other", "unspecified")


@dataclass(frozen=True)
class ComplianceSection:
    """The compliance report's rules (docs/compliance.md): the pre-event minimum, when a camera
    counts as silent, how early an unsynced recording is flagged before the retention floor,
    and the organisation type (fire and ambulance crews get no per-user statistics)."""

    min_pre_event_seconds: float = 30.0
    silent_camera_hours: int = 24
    at_risk_days: int = 7
    organisation_type: str = "unspecified"


@dataclass(frozen=True)
class AxisSection:
    """The Axis body-worn content destination (Swift subset at /auth/v1.0 and /v1/)."""

    enabled: bool = True
    categories: str = "Incident,Patrol,Traffic,Medical,Other"
    token_minutes: int = 60
    max_parallel_uploads: int = 4


@dataclass(frozen=True)
class UiSection:
    """The local web UI: the crews' time zone and shift, the language before anyone chose one,
    and the memory the posters and thumbnails may take."""

    timezone: str = "Europe/Brussels"
    shift_start: str = "07:00"
    shift_hours: int = 12
    default_language: str = "en"
    picture_cache_mb: int = 64


@dataclass(frozen=True)
class RecorderSection:
    """RTSP cameras the box pulls from (edgebox/recorder): defaults for new cameras."""

    enabled: bool = True
    pre_event_seconds: float = 30.0
    post_event_seconds: float = 10.0
    max_event_seconds: int = 3600


@dataclass(frozen=True)
class Config:
    """The whole box configuration; `base_dir` anchors relative paths."""

    box: BoxSection = field(default_factory=BoxSection)
    server: ServerSection = field(default_factory=ServerSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    vault: VaultSection = field(default_factory=VaultSection)
    custody: CustodySection = field(default_factory=CustodySection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    storage: StorageSection = field(default_factory=StorageSection)
    compliance: ComplianceSection = field(default_factory=ComplianceSection)
    axis: AxisSection = field(default_factory=AxisSection)
    ui: UiSection = field(default_factory=UiSection)
    recorder: RecorderSection = field(default_factory=RecorderSection)
    base_dir: Path = Path(".")
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        """The absolute data folder (database, vault, keys, uploads)."""
        return (self.base_dir / self.box.data_dir).resolve()

    @property
    def listen_address(self) -> tuple[str, int]:
        """`server.listen` split into host and port."""
        return parse_listen(self.server.listen)

    def to_dict(self) -> dict:
        """The configuration as plain data (for `config check --json`)."""
        return {
            f.name: dataclasses.asdict(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("base_dir", "source")
        }


SUITES = ("AES-256-GCM", "ChaCha20-Poly1305")
_SECTIONS = {
    f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("base_dir", "source")
}
_BOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets) into its parts, or raise ConfigError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT", field="server.listen")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the box serves its LAN


def _section_class(name: str) -> type:
    hint = typing.get_type_hints(Config)[name]
    return hint


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Best-effort line number of `[section]` or of `key` inside it."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
            continue
        if current == section and key and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def _where(source: str, text: str | None, section: str, key: str | None) -> str:
    line = _line_of(text, section, key) if text else None
    name = f"{section}.{key}" if key else f"[{section}]"
    return f"{source}:{line}: {name}" if line else f"{source}: {name}"


def _coerce(value, kind, where: str, from_env: bool = False):
    """Check (and for env strings, convert) one value against its declared type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if origin is dict or kind is dict:
        return _coerce_days(value, where, from_env)
    if from_env and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text in ("true", "1", "yes")
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(
            f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _coerce_days(value, where: str, from_env: bool) -> dict:
    """A table of category -> days (TOML table, or `a=1,b=2` in the environment)."""
    if from_env:
        try:
            pairs = [item.split("=") for item in value.split(",") if item.strip()]
            value = {k.strip(): int(v) for k, v in pairs}
        except ValueError:
            raise ConfigError(f"{where}: expected CATEGORY=DAYS,... got {value!r}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigError(f"{where}: expected a table of category = days")
    return dict(value)


def _validate(config: Config) -> None:
    if not _BOX_ID.match(config.box.box_id):
        raise ConfigError(
            "box.box_id must be 1-63 letters, digits, '.', '_' or '-'", field="box.box_id"
        )
    parse_listen(config.server.listen)
    if config.vault.suite not in SUITES:
        raise ConfigError(f"vault.suite must be one of {', '.join(SUITES)}", field="vault.suite")
    if config.vault.segment_size < 4096 or config.vault.segment_size > 16 * 1024**2:
        raise ConfigError("vault.segment_size must be 4 KiB to 16 MiB", field="vault.segment_size")
    for name, minimum in (
        ("server.threads", 1),
        ("ingest.max_upload_bytes", 1),
        ("ingest.expire_hours", 1),
        ("ingest.reserve_free_bytes", 0),
        ("ingest.pairing_code_minutes", 1),
        ("custody.checkpoint_minutes", 1),
        ("upstream.chunk_size", 1024),
        ("upstream.window", 1),
        ("upstream.bandwidth_bytes_per_second", 0),
        ("upstream.session_expiry_hours", 1),
        ("upstream.keepalive_seconds", 5),
        ("upstream.ack_timeout_seconds", 1),
        ("replication.ship_interval_seconds", 0),
        ("axis.token_minutes", 1),
        ("axis.max_parallel_uploads", 1),
        ("ui.shift_hours", 1),
        ("ui.picture_cache_mb", 1),
        ("recorder.pre_event_seconds", 30),  # the police-function floor
        ("recorder.post_event_seconds", 0),
        ("recorder.max_event_seconds", 60),
    ):
        section, key = name.split(".")
        if getattr(getattr(config, section), key) < minimum:
            raise ConfigError(f"{name} must be at least {minimum}", field=name)
    retention = config.retention
    if retention.floor_days < 1:
        raise ConfigError("retention.floor_days must be at least 1", field="retention.floor_days")
    for name, days in [
        ("default_days", retention.default_days),
        *((f"category_days.{k}", v) for k, v in retention.category_days.items()),
    ]:
        if days < retention.floor_days:
            raise ConfigError(
                f"retention.{name} = {days} is below the floor of {retention.floor_days} days",
                field="retention.default_days",
            )
    if retention.keep_synced_days < 0:
        raise ConfigError(
            "retention.keep_synced_days must be 0 or more", field="retention.keep_synced_days"
        )
    _validate_ui(config.ui)
    low, high = config.storage.low_watermark, config.storage.high_watermark
    if not 0 < low < high < 1:
        raise ConfigError(
            "storage watermarks need 0 < low_watermark < high_watermark < 1",
            field="storage.low_watermark",
        )
    _validate_compliance(config)
    if config.replication.sync_interval_seconds < 1:
        raise ConfigError(
            "replication.sync_interval_seconds must be at least 1",
            field="replication.sync_interval_seconds",
        )
    if config.upstream.chunk_size > 16 * 1024**2:
        raise ConfigError("upstream.chunk_size must be at most 16 MiB", field="upstream.chunk_size")
    if config.upstream.broker:
        parse_broker_url(config.upstream.broker)
    if any(not 0 < len(n.strip()) <= 64 for n in config.axis.categories.split(",")):
        raise ConfigError(
            "axis.categories must be comma-separated names of 1-64 characters",
            field="axis.categories",
        )
    if bool(config.upstream.client_cert) != bool(config.upstream.client_key):
        raise ConfigError(
            "upstream.client_cert and upstream.client_key go together", field="upstream.client_cert"
        )


def _validate_compliance(config: Config) -> None:
    rules = config.compliance
    if not 0 <= rules.min_pre_event_seconds <= 3600:
        raise ConfigError(
            "compliance.min_pre_event_seconds must be 0 to 3600",
            field="compliance.min_pre_event_seconds",
        )
    if rules.silent_camera_hours < 1:
        raise ConfigError(
            "compliance.silent_camera_hours must be at least 1",
            field="compliance.silent_camera_hours",
        )
    if not 0 <= rules.at_risk_days < config.retention.floor_days:
        raise ConfigError(
            f"compliance.at_risk_days must be 0 to {config.retention.floor_days - 1} "
            "(below retention.floor_days)",
            field="compliance.at_risk_days",
        )
    if rules.organisation_type not in ORGANISATION_TYPES:
        raise ConfigError(
            f"compliance.organisation_type must be one of {', '.join(ORGANISATION_TYPES)}",
            field="compliance.organisation_type",
        )


UI_LANGUAGES = ("en", "nl", "fr", "de")


def _validate_ui(ui: UiSection) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(ui.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"ui.timezone {ui.timezone!r} is not a known time zone (e.g. Europe/Brussels)",
            field="ui.timezone",
        ) from None
    if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", ui.shift_start):
        raise ConfigError("ui.shift_start must be HH:MM, e.g. 07:00", field="ui.shift_start")
    if ui.default_language not in UI_LANGUAGES:
        raise ConfigError(
            f"ui.default_language must be one of {', '.join(UI_LANGUAGES)}",
            field="ui.default_language",
        )


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """Split `mqtt://host:port` or `mqtts://host:port` into (scheme, host, port)."""
    match = re.match(r"^(mqtts?)://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?$", url)
    if not match:
        raise ConfigError(
            f"upstream.broker {url!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT",
            field="upstream.broker",
        )
    scheme, host, port = match.groups()
    return scheme, host.strip("[]"), int(port or (8883 if scheme == "mqtts" else 1883))


def resolve(config: Config, value: str) -> Path | None:
    """A path from the config, relative to the config file's folder; None when empty."""
    return (config.base_dir / value).resolve() if value else None


def load_config(path: str | Path | None = None, environ: dict | None = None) -> Config:
    """Load the config file (or defaults), apply environment overrides, validate, and return it."""
    environ = os.environ if environ is None else environ
    text = None
    raw: dict = {}
    source = "<defaults>"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        base_dir = p.resolve().parent

    values: dict[str, dict] = {}
    from_env: dict[str, str] = {}  # "section.key" -> the variable that set it
    for section, body in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{_where(source, text, section, None)}: unknown section")
        if not isinstance(body, dict):
            raise ConfigError(f"{_where(source, text, section, None)}: must be a table")
        fields = {f.name: f for f in dataclasses.fields(_section_class(section))}
        hints = typing.get_type_hints(_section_class(section))
        for key, value in body.items():
            where = _where(source, text, section, key)
            if key not in fields:
                raise ConfigError(f"{where}: unknown key")
            values.setdefault(section, {})[key] = _coerce(value, hints[key], where)

    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"environment {name}: unknown section {section!r}")
        hints = typing.get_type_hints(_section_class(section))
        if key not in hints:
            raise ConfigError(f"environment {name}: unknown key {section}.{key}")
        values.setdefault(section, {})[key] = _coerce(
            value, hints[key], f"environment {name}", from_env=True
        )
        from_env[f"{section}.{key}"] = name

    sections = {name: _section_class(name)(**values.get(name, {})) for name in _SECTIONS}
    config = Config(**sections, base_dir=base_dir, source=source)
    try:
        _validate(config)
    except ConfigError as exc:
        if exc.field in from_env:  # the environment won over the file: name the variable
            exc.message = f"environment {from_env[exc.field]}: {exc.message}"
        elif exc.field and text:
            section, key = exc.field.split(".")
            exc.message = f"{_where(source, text, section, key)}: {exc.message}"
        exc.args = (exc.message,)
        raise
    return config


def check(config: Config) -> None:
    """Validate a Config built in memory (as `edgebox init` does before writing it); the
    ConfigError names the field (`section.key`)."""
    _validate(config)


def config_path_from(option: str | None, environ: dict | None = None) -> Path | None:
    """The config file named by --config, else by EDGEBOX_CONFIG, else None."""
    environ = os.environ if environ is None else environ
    chosen = option or environ.get(CONFIG_ENV)
    return Path(chosen) if chosen else None


def render_config(config: Config) -> str:
    """Write a config back as TOML text (used by `edgebox init`)."""
    return tomli_w.dumps(config.to_dict())
