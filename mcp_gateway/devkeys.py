"""DEVELOPMENT ONLY: a local signing key and token minting for demos and tests.

Never use this in production. A production gateway verifies tokens from a real identity provider through
``identity.jwks_file`` or ``identity.jwks_url``; nothing here is on that path.

``ensure_dev_key(state_dir)`` creates an Ed25519 key on first run as ``state_dir/dev-signing-key.pem`` (mode
0600; the state directory ``.mcp-gateway/`` is git-ignored) and publishes its public half as
``state_dir/dev-jwks.json``, which ``identity.jwks_file`` can point at. Later runs reuse the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mcp_gateway.errors import ConfigError

__all__ = ["DEV_JWKS_FILE", "DEV_KEY_FILE", "DevKey", "ensure_dev_key"]

DEV_KEY_FILE = "dev-signing-key.pem"
DEV_JWKS_FILE = "dev-jwks.json"
ALGORITHM = "EdDSA"


@dataclass(frozen=True, slots=True)
class DevKey:
    """DEVELOPMENT ONLY: a local Ed25519 signing key that mints access tokens.

    Attributes:
        private_key: The signing key.
        kid: The key id: the key's RFC 7638 JWK thumbprint.
        key_path: Where the private key is stored (mode 0600).
        jwks_path: Where the public JWKS is published.
    """

    private_key: Ed25519PrivateKey
    kid: str
    key_path: Path
    jwks_path: Path

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document for this key."""
        return {"keys": [_public_jwk(self.private_key, self.kid)]}

    def mint(
        self,
        subject: str,
        *,
        roles: Sequence[str],
        catalog: str,
        issuer: str,
        audience: str,
        ttl: int = 300,
        amr: Sequence[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> str:
        """Mint a signed access token (DEVELOPMENT ONLY).

        Args:
            subject: The ``sub`` claim.
            roles: The ``roles`` claim.
            catalog: The ``catalog`` claim: ``internal`` or ``partner``.
            issuer: The ``iss`` claim.
            audience: The ``aud`` claim.
            ttl: Seconds from ``iat`` to ``exp``.
            amr: The ``amr`` claim; omitted when empty.
            extra_claims: Claims added last, overriding the ones above.
            headers: Header parameters added to ``alg``, ``typ`` and ``kid``, overriding them.
            now: The issue time in epoch seconds; defaults to the current time.

        Returns:
            The compact JWS.
        """
        issued_at = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "roles": list(roles),
            "catalog": catalog,
            "iat": issued_at,
            "exp": issued_at + ttl,
            "jti": uuid.uuid4().hex,
        }
        if amr:
            claims["amr"] = list(amr)
        claims.update(extra_claims or {})
        header: dict[str, Any] = {"typ": "at+jwt", "kid": self.kid, **(headers or {})}
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers=header)


def ensure_dev_key(state_dir: Path) -> DevKey:
    """Load the development signing key from ``state_dir``, creating it and its JWKS on first run.

    Args:
        state_dir: The gateway's local state directory, normally ``.mcp-gateway/``.

    Returns:
        The development key.

    Raises:
        ConfigError: The key file exists but cannot be read or is not an Ed25519 private key, or the state
            directory cannot be written.
    """
    key_path = state_dir / DEV_KEY_FILE
    jwks_path = state_dir / DEV_JWKS_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_key = _load_key(key_path) if key_path.exists() else _create_key(key_path)
    except OSError as exc:
        raise ConfigError(f"{key_path}: cannot create or read the development key: {exc.strerror or exc}") from exc
    kid = _thumbprint(private_key)
    key = DevKey(private_key=private_key, kid=kid, key_path=key_path, jwks_path=jwks_path)
    document = json.dumps(key.jwks(), indent=2) + "\n"
    try:
        if not jwks_path.exists() or jwks_path.read_text(encoding="utf-8") != document:
            _write_atomically(jwks_path, document.encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"{jwks_path}: cannot write the development JWKS: {exc.strerror or exc}") from exc
    return key


def _create_key(key_path: Path) -> Ed25519PrivateKey:
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_atomically(key_path, pem, mode=0o600)
    return private_key


def _load_key(key_path: Path) -> Ed25519PrivateKey:
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        # A private key others can read is tightened rather than refused: this is a development key.
        key_path.chmod(0o600)
    try:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise ConfigError(f"{key_path}: not a PEM private key; delete it to generate a new one") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{key_path}: not an Ed25519 key; delete it to generate a new one")
    return loaded


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # Create the temporary file with its final mode, so a private key is never briefly world-readable.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)  # the umask may have narrowed it
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _public_jwk(private_key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": _public_x(private_key), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def _public_x(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _thumbprint(private_key: Ed25519PrivateKey) -> str:
    # RFC 7638: SHA-256 over the required members in lexicographic order, without whitespace.
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _public_x(private_key)}, separators=(",", ":"), sort_keys=True
    )
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode("ascii")
