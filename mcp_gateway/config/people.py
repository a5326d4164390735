"""The settings of the people around the gateway: approvers, console users, operators."""

from __future__ import annotations

from pydantic import Field

from mcp_gateway.config.base import Section

__all__ = ["AdminSettings", "BreakGlassSettings", "ConsoleSettings"]


class BreakGlassSettings(Section):
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
    use_requires_mfa: bool = Field(default=True, description="Security: a call under a grant needs a second factor.")
    review_within: int = Field(
        default=7 * 86_400, ge=3600, description="Seconds after a grant ends until review is late."
    )


class ConsoleSettings(Section):
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


class AdminSettings(Section):
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
