"""The operator behind a state-changing command: a verified token and a role, never free text.

Every command that changes the gateway's state (a policy line, a grant, an approval, a catalog pin, imported
weights) runs as the subject of the operator's own identity-provider token, verified exactly as a caller's is
(the same :class:`~mcp_gateway.identity.JwtVerifier`, keys and claims checks), and checks that the token holds a
role for the action (``admin.policy_roles``, ``breakglass.approver_roles``, ``admin.reviewer_roles``). The actor
recorded in the audit trail is :meth:`Operator.actor`: the token's ``sub``, ``jti`` and ``amr``.

Read-only commands do not come here: they stay usable offline, without a token or the identity provider's keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_gateway.config import Settings
from mcp_gateway.egress import guarded_get
from mcp_gateway.errors import ForbiddenError, UnauthenticatedError
from mcp_gateway.identity import JwtVerifier, Principal, load_jwks

__all__ = [
    "OPERATOR_CATALOG",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Operator",
    "Role",
    "operator_for",
    "require_role",
    "role_names",
    "verified_operator",
]

TOKEN_ENV = "MCP_GATEWAY_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_FILE_ENV = "MCP_GATEWAY_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
OPERATOR_CATALOG = "internal"  # the catalog claim an operator's token must carry
_MAX_TOKEN_FILE = 65_536  # the largest identity.max_token_bytes allows

Role = Literal["policy", "approver", "reviewer"]

# Where each role's token role names are configured, for messages that tell the operator what to change.
_ROLE_SETTINGS: dict[str, str] = {
    "policy": "admin.policy_roles",
    "approver": "breakglass.approver_roles",
    "reviewer": "admin.reviewer_roles",
}


@dataclass(frozen=True, slots=True)
class Operator:
    """The verified person running a command.

    Attributes:
        sub: The token's ``sub``.
        jti: The token's ``jti``, if it has one: which token, so a leaked one can be traced.
        amr: The authentication methods the identity provider reported (RFC 8176).
        roles: The token's ``roles``.
    """

    sub: str
    jti: str | None
    amr: tuple[str, ...]
    roles: frozenset[str]

    @classmethod
    def from_principal(cls, principal: Principal) -> Operator:
        """The operator a verified principal stands for."""
        return cls(principal.subject, principal.token_id, principal.amr, frozenset(principal.roles))

    @property
    def label(self) -> str:
        """How the operator is named in output and as an audit row's subject: the ``sub``."""
        return self.sub

    def actor(self) -> dict[str, Any]:
        """The actor recorded in the audit trail: ``{"sub", "jti", "amr"}``, all from the verified token."""
        return {"sub": self.sub, "jti": self.jti, "amr": list(self.amr)}


def _read_token(token_file: Path | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """The token and where it came from: ``token_file``, else ``$MCP_GATEWAY_TOKEN``, else the file it names.

    Raises:
        UnauthenticatedError: no token, or the token file is unreadable or empty.
    """
    if token_file is None and environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV].strip(), TOKEN_ENV
    named = (
        token_file if token_file is not None else Path(environ[TOKEN_FILE_ENV]) if environ.get(TOKEN_FILE_ENV) else None
    )
    if named is None:
        raise UnauthenticatedError(
            f"no operator token: pass --token-file or set {TOKEN_ENV} or {TOKEN_FILE_ENV}", reason="no token"
        )
    source = "--token-file" if token_file is not None else TOKEN_FILE_ENV
    try:
        # Bounded: the verifier refuses anything past identity.max_token_bytes (at most 64 KiB) anyway, and a
        # token file pointed at a device or a huge file must not be read whole.
        with named.open("rb") as handle:
            token = handle.read(_MAX_TOKEN_FILE + 1).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UnauthenticatedError(
            f"operator token {source} ({named}): cannot read: {detail}", reason="unreadable"
        ) from exc
    if not token:
        raise UnauthenticatedError(f"operator token {source} ({named}) is empty", reason="no token")
    if len(token) > _MAX_TOKEN_FILE:
        raise UnauthenticatedError(f"operator token {source} ({named}) is larger than a token", reason="malformed")
    return token, f"{source} ({named})"


def verified_operator(
    settings: Settings, token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Operator:
    """The operator whose token is ``token_file``, else ``$MCP_GATEWAY_TOKEN`` or ``$MCP_GATEWAY_TOKEN_FILE``.

    The token is verified as a caller's is: signature against ``identity``'s keys, issuer, audience, lifetime and
    claims. The token itself never appears in a message.

    Raises:
        ConfigError: the identity provider's keys cannot be loaded.
        UnauthenticatedError: no token, an unreadable token file, or a token the verifier refuses (``reason`` says
            why: ``expired``, ``wrong audience``...).
        ForbiddenError: a verified token of the partner catalog: partners never operate the gateway.
    """
    token, source = _read_token(token_file, os.environ if environ is None else environ)
    # The verifier the gateway serves with (server.build_verifier): the same keys, from the same allowlisted source.
    verifier = JwtVerifier(
        settings.identity, load_jwks(settings.identity, lambda url: guarded_get(settings.egress, url))
    )
    try:
        principal = verifier.verify(token)
    except UnauthenticatedError as exc:
        raise UnauthenticatedError(f"operator token {source} refused: {exc.reason}: {exc}", reason=exc.reason) from exc
    if principal.catalog != OPERATOR_CATALOG:
        # Partners are outside the organisation: whatever roles their token claims, they do not run the gateway.
        raise ForbiddenError(
            f"operator token {source}: {principal.subject!r} holds a {principal.catalog!r} token; "
            f"only {OPERATOR_CATALOG!r} tokens may change the gateway"
        )
    return Operator.from_principal(principal)


def role_names(settings: Settings, role: Role) -> tuple[str, ...]:
    """The token roles configured for ``role``."""
    if role == "policy":
        return settings.admin.policy_roles
    if role == "approver":
        return settings.breakglass.approver_roles
    return settings.admin.reviewer_roles


def require_role(operator: Operator, settings: Settings, role: Role, action: str) -> None:
    """Refuse ``action`` unless ``operator`` holds one of the token roles configured for ``role``.

    Raises:
        ForbiddenError: the operator holds none of them; the message names the action, the roles that would
            allow it and the setting that lists them.
    """
    allowed = role_names(settings, role)
    if operator.roles & set(allowed):
        return
    held = ", ".join(sorted(operator.roles)) or "none"
    raise ForbiddenError(
        f"{action} needs a token role in {_ROLE_SETTINGS[role]} ({', '.join(allowed) or 'none configured'}); "
        f"{operator.sub!r} has: {held}"
    )


def operator_for(settings: Settings, role: Role, action: str, token_file: Path | None = None) -> Operator:
    """The verified operator, if they hold ``role``: :func:`verified_operator` then :func:`require_role`.

    Raises:
        ConfigError: the identity provider's keys cannot be loaded.
        UnauthenticatedError: no token, or one the verifier refuses.
        ForbiddenError: the operator lacks the role, or holds a partner token.
    """
    operator = verified_operator(settings, token_file)
    require_role(operator, settings, role, action)
    return operator
