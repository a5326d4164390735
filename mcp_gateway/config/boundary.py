"""The boundary's settings: who may call (identity), where the gateway may connect (egress), where it listens."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator, model_validator

from mcp_gateway.config.base import ALLOWED_ALGORITHMS, Section
from mcp_gateway.fieldchecks import checked_origins, origin_in

__all__ = ["EgressSettings", "HttpSettings", "IdentitySettings"]


class IdentitySettings(Section):
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
    # Key rotation (keyring.py): the JWKS is re-read on a timer and on a token naming an unknown kid.
    jwks_refresh: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Seconds between re-reads of the JWKS (URL fetched, file re-read if it changed); a key the IdP "
        "removed stops verifying after the next one.",
    )
    jwks_min_refresh: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Security: a token naming an unknown kid re-reads the JWKS at most once per this many seconds, "
        "so a flood of forged kids cannot hammer the IdP.",
    )
    jwks_max_stale: float = Field(
        default=86_400.0,
        gt=0,
        le=7 * 86_400,
        description="Security: seconds the last good keys keep serving while the JWKS cannot be read; then every "
        "token is refused (reason: keys stale) until a read succeeds.",
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
        if self.jwks_min_refresh > self.jwks_refresh:
            raise ValueError("identity.jwks_min_refresh must not exceed identity.jwks_refresh")
        if self.jwks_max_stale < self.jwks_refresh:
            raise ValueError("identity.jwks_max_stale must be at least identity.jwks_refresh")
        return self


class EgressSettings(Section):
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


class HttpSettings(Section):
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
    # Inbound TLS (transports/tls.py): with both files set the port speaks only HTTPS.
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain served on the HTTP port; set with tls_key_file for HTTPS."
    )
    tls_key_file: Path | None = Field(default=None, description="Security: PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="Security: PEM CA bundle for mutual TLS; when set, every connection must present a client "
        "certificate it signed.",
    )

    _browser_origins = field_validator("allowed_origins")(checked_origins)

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                with value.open("rb") as file:
                    file.read(1)
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from exc
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both http.tls_cert_file and http.tls_key_file, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("http.tls_client_ca_file (mutual TLS) needs http.tls_cert_file and http.tls_key_file")
        return self

    @property
    def tls(self) -> bool:
        """True when the port speaks HTTPS."""
        return self.tls_cert_file is not None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")
