"""Settings: one YAML file plus ``MCP_GATEWAY_*`` environment overrides.

Environment variables win over the file (``MCP_GATEWAY_IDENTITY__ISSUER`` overrides ``identity.issuer``).
Relative paths in the file are resolved against the file's own folder, so a config works from any
working directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mcp_gateway.errors import ConfigError
from mcp_gateway.fieldchecks import checked_origins, origin_in

FileModelT = TypeVar("FileModelT", bound=BaseModel)

__all__ = [
    "DEFAULT_CONFIG",
    "AdminSettings",
    "AuditSettings",
    "BreakGlassSettings",
    "EgressSettings",
    "HttpSettings",
    "IdentitySettings",
    "Settings",
    "TelemetrySettings",
    "load_settings",
    "read_yaml_file",
]

DEFAULT_CONFIG = "mcp-gateway.yaml"

# Asymmetric algorithms only. HS* would let anyone holding the verification key mint tokens, and a
# symmetric key configured next to a public JWKS invites algorithm confusion (RFC 8725 §2.1, §3.1).
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentitySettings(_Section):
    """Who callers are: the IdP whose tokens the gateway accepts, and the limits on those tokens."""

    issuer: str = Field(min_length=1, description="Exact `iss` every token must carry.")
    audience: str = Field(min_length=1, description="This gateway's resource URI; exact `aud` every token must carry.")
    jwks_file: Path | None = Field(
        default=None, description="The IdP's public keys as a JWKS file (one of jwks_file, jwks_url)."
    )
    jwks_url: str | None = Field(default=None, description="Must be on `egress.allow`.")
    algorithms: tuple[str, ...] = Field(
        default=("RS256", "ES256", "EdDSA"),
        description="Security: only asymmetric algorithms are accepted; `none` and HS* are refused.",
    )
    max_token_lifetime: int = Field(default=3600, gt=0, le=86_400, description="Seconds between `iat`/`nbf` and `exp`.")
    leeway: int = Field(default=30, ge=0, le=60, description="Clock skew tolerated on `exp`/`nbf`/`iat`, seconds.")
    max_token_bytes: int = Field(
        default=8192, ge=512, le=65_536, description="Security: larger tokens are refused before they are parsed."
    )

    @field_validator("audience")
    @classmethod
    def _resource_uri(cls, value: str) -> str:
        # The audience is this gateway's resource URI (MCP authorization, RFC 8707): advertised verbatim in the
        # RFC 9728 metadata and compared exactly with `aud`, so it must already be in normalised form.
        try:
            normal = str(AnyHttpUrl(value))
        except ValidationError as exc:
            raise ValueError("must be this gateway's http(s) resource URI, e.g. https://gateway.example/mcp") from exc
        if normal != value:
            raise ValueError(f"write it in normalised form: {normal!r}")
        if urlsplit(value).username is not None or urlsplit(value).fragment:
            raise ValueError("must not carry credentials or a fragment")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_over_tls(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("keys must be fetched over https (plain http only on loopback)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is required")
        refused = [alg for alg in value if alg not in ALLOWED_ALGORITHMS]
        if refused:
            raise ValueError(f"not allowed: {refused}; choose from {sorted(ALLOWED_ALGORITHMS)}")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IdentitySettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of identity.jwks_file and identity.jwks_url")
        return self


class EgressSettings(_Section):
    """Where the gateway may connect: nothing outside this allowlist, ever."""

    allow: tuple[str, ...] = Field(
        default=(),
        description="Origins (scheme://host:port) the gateway may connect to. Everything else is refused.",
    )
    pool_size: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Connections open to backends at once (REST tools, model endpoints); a call past it waits inside "
        "its deadline, and its audit row says upstream: pool_timeout if the deadline passes while it "
        "waits.",
    )

    _origins = field_validator("allow")(checked_origins)

    def permits(self, url: str) -> bool:
        """True when ``url``'s origin (scheme, host, port) is on the allowlist."""
        return origin_in(url, self.allow)


class HttpSettings(_Section):
    """The HTTP transports (streamable HTTP at /mcp, SSE at /sse) and their bounds on slow or greedy clients."""

    host: str = Field(default="127.0.0.1", description="Where the HTTP transports listen.")
    port: int = Field(default=8080, ge=0, le=65_535, description="The HTTP transports' port (0: any free port).")
    public_url: str | None = Field(
        default=None, description="Externally visible base URL; defaults to http://host:port. Used in 401 metadata."
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(),
        description="Security: browser origins (e.g. the MCP Inspector's http://localhost:6274) allowed to call, "
        "with CORS; none by default. Requests with any other Origin get 403.",
    )
    authorization_servers: tuple[str, ...] = Field(
        default=(), description="Advertised in RFC 9728 metadata; defaults to identity.issuer."
    )
    # Slow and greedy clients (transports/guards.py, transports/sse.py; docs/configuration.md lists the defaults).
    # Each bound drops the connection or session past it; none limits an answer being produced, or a stream the
    # client reads.
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a connection may take to send a request's headers (from connecting, or from the "
        "previous response); then 408 and closed.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds from a request's headers to the end of its body, read or not; then the connection is "
        "dropped.",
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds output may wait unread by the client; then the connection is dropped (a client that "
        "reads is never cut off).",
    )
    max_connections_per_client: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Open connections per client address (an MCP session holds one or two); more get 503. Behind a "
        "reverse proxy, size it for the proxy.",
    )
    max_queued_messages: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Answers an SSE session may leave unread on its stream; past it the session is closed.",
    )

    _browser_origins = field_validator("allowed_origins")(checked_origins)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class AuditSettings(_Section):
    """The hash-chained audit trail: how durable a record is, and its signed checkpoints."""

    durability: Literal["process", "power"] = Field(
        default="process",
        description="process: a record survives the gateway being killed (SQLite synchronous=NORMAL); "
        "power: it survives power loss too (synchronous=FULL, one fsync per group commit).",
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs checkpoints; keep it outside the database. "
        "Default <state_dir>/audit-signing.key, created on first use.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="Signed checkpoints are mirrored here (JSON lines) as well as in the database. "
        "Default <state_dir>/audit-checkpoints.jsonl; ship it off the host.",
    )
    checkpoint_interval: float = Field(default=60.0, gt=0, description="Seconds between checkpoints while serving.")
    max_batch: int = Field(default=256, ge=1, le=10_000, description="Most records committed in one group commit.")
    write_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds a commit may wait for the trail's write lock (held by another process) before the call "
        "is refused as unavailable; a caller learns within twice this. The event loop itself never waits.",
    )


class TelemetrySettings(_Section):
    """OpenTelemetry spans, sent only to an in-boundary collector."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL of an in-boundary collector (http://host:4318); must be on egress.allow. "
        "Unset: spans and metrics are not recorded, but every call still gets a trace id (audit rows, traceparent).",
    )
    service_name: str = Field(default="mcp-gateway", description="The OpenTelemetry service.name of spans.")
    detail: Literal["calls", "stages"] = Field(
        default="calls", description="stages adds one span per pipeline stage (debugging; costs ~30 µs each)."
    )
    capture_arguments: bool = Field(
        default=False, description="Security: puts tool arguments in spans. Off unless you need it."
    )
    max_queue_size: int = Field(
        default=2048, ge=1, le=1_000_000, description="Spans held for export; more are dropped."
    )
    export_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds one span export may take.")
    schedule_delay: float = Field(default=1.0, gt=0, le=60, description="Seconds between span exports.")
    metric_interval: float = Field(default=15.0, gt=0, description="Seconds between metric exports.")


class BreakGlassSettings(_Section):
    """Time-bound emergency access and held calls, approved by a second person."""

    mfa_methods: tuple[str, ...] = Field(
        default=("mfa", "otp", "hwk", "sc"),
        description="Security: `amr` values (RFC 8176) that prove a second factor; a request or approval needs one.",
    )
    approver_roles: tuple[str, ...] = Field(
        default=("breakglass-approver",), description="Token roles allowed to approve grants and held calls."
    )
    max_ttl: int = Field(default=3600, ge=60, le=86_400, description="Longest grant, seconds.")
    pending_ttl: int = Field(default=3600, ge=60, le=86_400, description="Unapproved requests lapse after this.")
    approval_ttl: int = Field(default=900, ge=30, le=86_400, description="How long an approved held call stays usable.")
    catalogs: tuple[str, ...] = Field(default=("internal",), description="Catalogs whose callers may request grants.")


class ConsoleSettings(_Section):
    """The web console under /console on the HTTP server: access, changes, audit search, approvals, health."""

    enabled: bool = Field(default=True, description="Serve the console on the HTTP transports' app.")
    auditor_roles: tuple[str, ...] = Field(
        default=("auditor",), description="Token roles that may read the console's pages (approvers may too)."
    )
    oidc_client_id: str | None = Field(
        default=None,
        description="Sign-in with the IdP (OpenID Connect, authorization code with PKCE) as this client; "
        "unset: no IdP sign-in. The IdP's token endpoint must be on egress.allow.",
    )
    oidc_client_secret_env: str | None = Field(
        default=None, description="Environment variable holding the client secret, for a confidential client."
    )
    token_sign_in: bool = Field(
        default=True,
        description="Allow signing in by pasting a token (development: `mcp-gateway token issue`). The token is "
        "verified exactly like a caller's.",
    )
    session_idle: int = Field(
        default=900, ge=60, le=86_400, description="Seconds without a request after which a session ends."
    )
    max_sessions: int = Field(default=10_000, ge=1, le=1_000_000, description="Sessions held at once (per process).")


class AdminSettings(_Section):
    """Token roles that let an operator change the gateway's state from the command line (mcp_gateway.operators).

    The approver role is not here: it is ``breakglass.approver_roles``, one list for approving grants and held
    calls, so the two can never disagree.
    """

    policy_roles: tuple[str, ...] = Field(
        default=("policy-admin",),
        description="Security: token roles allowed to change access: `policy add|remove`, `models import`, "
        "catalog pins. Approvers use breakglass.approver_roles.",
    )
    reviewer_roles: tuple[str, ...] = Field(
        default=("breakglass-reviewer",),
        description="Security: token roles allowed to review break-glass grants and list them (approvers may list "
        "them too).",
    )


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
    breakglass: BreakGlassSettings = BreakGlassSettings()
    console: ConsoleSettings = ConsoleSettings()
    admin: AdminSettings = AdminSettings()

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
    url = data.get("database_url")
    if isinstance(url, str) and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        data["database_url"] = "sqlite:///" + str(base / url.removeprefix("sqlite:///"))
    elif url is None:
        data["database_url"] = "sqlite:///" + str(Path(data["state_dir"]) / "audit.db")
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
