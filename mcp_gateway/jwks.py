"""The keys tokens may be signed with: the configured JWKS, loaded and checked at start-up.

Only public signature keys of a type some accepted algorithm fits are kept (no symmetric or private keys, RSA
of at least 2048 bits), each chosen by its ``kid``; ``identity.py`` verifies tokens against them. Every
problem is a ``ConfigError`` naming the file or URL and the key: the gateway does not start without keys it
can trust.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jwt.api_jwk import PyJWK
from jwt.exceptions import PyJWTError

from mcp_gateway.config import IdentitySettings
from mcp_gateway.errors import ConfigError
from mcp_gateway.jose import unique_pairs

__all__ = ["KEY_FITS", "JwkSet", "VerificationKey", "load_jwks", "parse_jwks", "read_jwks"]

# Which JWK a signature algorithm may use. HS* and `none` are absent on purpose: no key fits them.
KEY_FITS: Mapping[str, tuple[str, frozenset[str | None]]] = {
    "RS256": ("RSA", frozenset({None})),
    "RS384": ("RSA", frozenset({None})),
    "RS512": ("RSA", frozenset({None})),
    "PS256": ("RSA", frozenset({None})),
    "PS384": ("RSA", frozenset({None})),
    "PS512": ("RSA", frozenset({None})),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key from the JWKS.

    Attributes:
        kid: The key id tokens select it by.
        kty: JWK key type: ``RSA``, ``EC`` or ``OKP``.
        crv: The curve for ``EC`` and ``OKP`` keys.
        alg: The algorithm the JWK pins, if it declares one.
        public_key: The ``cryptography`` public key object.
    """

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    public_key: Any


@dataclass(frozen=True, slots=True)
class JwkSet:
    """The public keys tokens may be signed with, by ``kid``."""

    keys: Mapping[str, VerificationKey]


def load_jwks(settings: IdentitySettings, http_get: Callable[[str], bytes] | None = None) -> JwkSet:
    """Load the JWKS from ``settings.jwks_file`` or, through ``http_get``, from ``settings.jwks_url``.

    Args:
        settings: Names the file or URL.
        http_get: Fetches a URL's body, raising ``ConfigError`` or ``OSError`` on failure; the caller passes
            one guarded by ``egress.allow`` (``egress.guarded_get``).

    Returns:
        The public keys, by ``kid``.

    Raises:
        ConfigError: The JWKS cannot be read or is invalid; see ``parse_jwks``.
    """
    data, source = read_jwks(settings, http_get)
    return parse_jwks(data, source=source)


def read_jwks(settings: IdentitySettings, http_get: Callable[[str], bytes] | None = None) -> tuple[bytes, str]:
    """The JWKS document's bytes from ``settings.jwks_file`` or, through ``http_get``, ``settings.jwks_url``, and
    the source's name for messages; see ``load_jwks``.

    Raises:
        ConfigError: The file cannot be read or the URL cannot be fetched.
    """
    if settings.jwks_file is not None:
        source = str(settings.jwks_file)
        try:
            data = Path(settings.jwks_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"identity.jwks_file {source}: cannot read: {exc.strerror or exc}") from exc
    elif settings.jwks_url is not None:
        source = settings.jwks_url
        if http_get is None:
            raise ConfigError("identity.jwks_url is set but no HTTP client was given to fetch it")
        try:
            data = http_get(settings.jwks_url)
        except (ConfigError, OSError, ValueError) as exc:
            raise ConfigError(f"identity.jwks_url {source}: cannot fetch: {exc}") from exc
    else:  # pragma: no cover - IdentitySettings requires exactly one source
        raise ConfigError("identity: set jwks_file or jwks_url")
    return data, source


def parse_jwks(data: bytes | str, *, source: str = "JWKS") -> JwkSet:
    """Parse a JWKS document ``{"keys": [...]}`` of public signature keys.

    Args:
        data: The JSON document.
        source: Names the document in error messages.

    Returns:
        The public keys, by ``kid``.

    Raises:
        ConfigError: Not JSON, no keys, a key without a string ``kid``, a duplicate ``kid``, a symmetric
            (``oct``) or private key, a key not for signatures, an RSA key under 2048 bits, or a key
            ``cryptography`` cannot load.
    """
    try:
        document = json.loads(data, object_pairs_hook=unique_pairs)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: not a valid JSON document: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise ConfigError(f'{source}: expected {{"keys": [...]}} with at least one key')
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        key = _verification_key(jwk, f"{source}: keys[{index}]")
        if key.kid in keys:
            raise ConfigError(f"{source}: keys[{index}]: duplicate kid {key.kid!r}")
        keys[key.kid] = key
    return JwkSet(keys=keys)


def _verification_key(jwk: Any, where: str) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f"{where}: every key needs a non-empty string kid")
    kty = jwk.get("kty")
    if kty == "oct":
        raise ConfigError(f"{where} ({kid}): symmetric (oct) keys are refused; publish only public keys")
    if kty not in ("RSA", "EC", "OKP"):
        raise ConfigError(f"{where} ({kid}): unsupported kty {kty!r}")
    if "d" in jwk:
        raise ConfigError(f"{where} ({kid}): contains private key material; publish only the public key")
    if jwk.get("use", "sig") != "sig":
        raise ConfigError(f"{where} ({kid}): use is {jwk.get('use')!r}, not 'sig'")
    alg = jwk.get("alg")
    if alg is not None and alg not in KEY_FITS:
        raise ConfigError(f"{where} ({kid}): alg {alg!r} is not an accepted signature algorithm")
    try:
        public_key = PyJWK(jwk).key
    except PyJWTError as exc:
        raise ConfigError(f"{where} ({kid}): not a usable key: {exc}") from exc
    key_size = getattr(public_key, "key_size", None)
    if kty == "RSA" and isinstance(key_size, int) and key_size < _MIN_RSA_BITS:
        raise ConfigError(f"{where} ({kid}): RSA key of {key_size} bits; at least {_MIN_RSA_BITS} are required")
    crv = jwk.get("crv")
    return VerificationKey(kid=kid, kty=kty, crv=crv if isinstance(crv, str) else None, alg=alg, public_key=public_key)
