"""Settings: one YAML file plus ``MCP_GATEWAY_*`` environment overrides.

Environment variables win over the file (``MCP_GATEWAY_IDENTITY__ISSUER`` overrides ``identity.issuer``).
Relative paths in the file are resolved against the file's own folder, so a config works from any
working directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mcp_gateway.config.base import ALLOWED_ALGORITHMS
from mcp_gateway.config.boundary import EgressSettings, HttpSettings, IdentitySettings
from mcp_gateway.config.evidence import AuditSettings, MetricsSettings, TelemetrySettings
from mcp_gateway.config.limits import LimitsSettings
from mcp_gateway.config.people import AdminSettings, BreakGlassSettings, ConsoleSettings
from mcp_gateway.errors import ConfigError

FileModelT = TypeVar("FileModelT", bound=BaseModel)

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_CONFIG",
    "AdminSettings",
    "AuditSettings",
    "BreakGlassSettings",
    "ConsoleSettings",
    "EgressSettings",
    "HttpSettings",
    "IdentitySettings",
    "LimitsSettings",
    "MetricsSettings",
    "Settings",
    "TelemetrySettings",
    "describe_validation_error",
    "load_settings",
    "read_yaml_file",
]

DEFAULT_CONFIG = "mcp-gateway.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCP_GATEWAY_", env_nested_delimiter="__", extra="forbid", frozen=True)

    identity: IdentitySettings
    egress: EgressSettings = EgressSettings()
    http: HttpSettings = HttpSettings()
    state_dir: Path = Field(default=Path(".mcp-gateway"), description="Runtime state: dev keys, SQLite trail.")
    catalogs_dir: Path = Field(default=Path("catalogs"), description="One YAML file per catalog, and models.yaml.")
    policies_dir: Path = Field(default=Path("policies"), description="model.conf and the CSV policy files.")
    database_url: str = Field(
        default="sqlite:///.mcp-gateway/audit.db",
        description="The audit trail; postgresql+psycopg://... when several replicas share it.",
    )
    policy_reload_interval: float = Field(default=2.0, gt=0, description="Seconds between policy/catalog checks.")
    max_argument_bytes: int = Field(
        default=65_536, ge=256, le=16 * 1024 * 1024, description="Larger arguments are refused before any backend work."
    )
    max_argument_depth: int = Field(default=32, ge=2, le=256, description="Deeper nesting of arguments is refused.")
    audit: AuditSettings = AuditSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    metrics: MetricsSettings = MetricsSettings()
    breakglass: BreakGlassSettings = BreakGlassSettings()
    console: ConsoleSettings = ConsoleSettings()
    admin: AdminSettings = AdminSettings()
    limits: LimitsSettings = LimitsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _egress(self) -> Settings:
        if self.identity.jwks_url is not None and not self.egress.permits(self.identity.jwks_url):
            raise ValueError(f"identity.jwks_url {self.identity.jwks_url!r} is not on egress.allow")
        endpoint = self.telemetry.otlp_endpoint
        if endpoint is not None and not self.egress.permits(endpoint):
            raise ValueError(f"telemetry.otlp_endpoint {endpoint!r} is not on egress.allow")
        return self

    @model_validator(mode="after")
    def _https_origin(self) -> Settings:
        # Behind TLS the resource callers reach is https: the audience (advertised in the RFC 9728 metadata and
        # compared with `aud`) and the public URL must say so, or clients would be told to use plain http.
        if self.http.tls:
            for key, url in (("identity.audience", self.identity.audience), ("http.public_url", self.http.public_url)):
                if url is not None and not url.startswith("https://"):
                    raise ValueError(f"{key} must be an https:// URL when http.tls_cert_file is set")
        metrics = self.metrics
        if metrics.enabled and metrics.port != 0 and (metrics.host, metrics.port) == (self.http.host, self.http.port):
            raise ValueError("metrics.port must differ from http.port: /metrics is never served on the MCP port")
        return self

    # Where load_settings read these settings from, and the bytes it read (configfile.py digests them at start).
    _loaded_from: tuple[Path, bytes] | None = PrivateAttr(default=None)

    @property
    def loaded_from(self) -> tuple[Path, bytes] | None:
        """The config file and its bytes as :func:`load_settings` read them; None for settings built in code."""
        return self._loaded_from

    @property
    def signing_key_path(self) -> Path:
        return self.audit.signing_key or self.state_dir / "audit-signing.key"

    @property
    def checkpoint_path(self) -> Path:
        return self.audit.checkpoint_file or self.state_dir / "audit-checkpoints.jsonl"


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value and not os.path.isabs(value):
        return str(base / value)
    return value


def _resolve_sqlite(base: Path, url: str) -> str:
    """A relative ``sqlite:///`` path is relative to the config file's folder, like every other path in it."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(base / url.removeprefix("sqlite:///"))
    return url


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from ``path`` (default: ``$MCP_GATEWAY_CONFIG`` or ``mcp-gateway.yaml``).

    Raises:
        ConfigError: the file is missing or unreadable, or a key is invalid; the message names the key.
    """
    config_path = Path(path or os.environ.get("MCP_GATEWAY_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = config_path.read_bytes()
        data = yaml.safe_load(raw) or {}
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping")
    base = config_path.resolve().parent
    for key, default in (("catalogs_dir", "catalogs"), ("policies_dir", "policies"), ("state_dir", ".mcp-gateway")):
        data[key] = _resolve(base, data.get(key, default))
    audit = data.get("audit")
    if isinstance(audit, dict):
        for key in ("signing_key", "checkpoint_file"):
            if key in audit:
                audit[key] = _resolve(base, audit[key])
    identity = data.get("identity")
    if isinstance(identity, dict) and "jwks_file" in identity:
        identity["jwks_file"] = _resolve(base, identity["jwks_file"])
    http = data.get("http")
    if isinstance(http, dict):
        for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            if key in http:
                http[key] = _resolve(base, http[key])
    url = data.get("database_url")
    if isinstance(url, str):
        data["database_url"] = _resolve_sqlite(base, url)
    elif url is None:
        data["database_url"] = "sqlite:///" + str(Path(data["state_dir"]) / "audit.db")
    limits = data.get("limits")
    if isinstance(limits, dict) and isinstance(limits.get("database_url"), str):
        limits["database_url"] = _resolve_sqlite(base, limits["database_url"])
    _check_environment(os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{config_path}: {describe_validation_error(exc)}") from exc
    settings._loaded_from = (config_path.resolve(), raw)
    return settings


# Variables with the prefix that are not settings: read by the CLI and the stdio transport.
_NOT_SETTINGS = frozenset({"MCP_GATEWAY_CONFIG", "MCP_GATEWAY_TOKEN", "MCP_GATEWAY_TOKEN_FILE"})


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``MCP_GATEWAY_*`` variables that name no setting: a misspelt override must not be ignored."""
    for name in sorted(environ):
        if not name.startswith("MCP_GATEWAY_") or name in _NOT_SETTINGS:
            continue
        path = name.removeprefix("MCP_GATEWAY_").lower().split("__")
        model: Any = Settings
        for part in path:
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                raise ConfigError(
                    f"environment: {name} names no setting (nested keys use __, e.g. MCP_GATEWAY_IDENTITY__ISSUER)"
                )
            model = fields[part].annotation
        if getattr(model, "model_fields", None) is not None:
            raise ConfigError(f"environment: {name} names a section; set its keys with __")


def read_yaml_file(
    path: Path, model: type[FileModelT], describe: Callable[[ValidationError], str] | None = None
) -> tuple[FileModelT, bytes]:
    """Read and strictly validate one YAML file of the configuration; returns the model and the raw bytes.

    Raises:
        ConfigError: the file is unreadable, not YAML, or invalid; the message names the file and the key.
    """
    try:
        raw = path.read_bytes()
        return model.model_validate(yaml.safe_load(raw)), raw
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: {(describe or describe_validation_error)(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted key and why."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"{key}: {error['msg']}")
    return "; ".join(lines)
