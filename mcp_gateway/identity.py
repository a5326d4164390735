"""Who is calling: bearer JWTs verified against our own JWKS, turned into a ``Principal``.

The checks follow RFC 8725 (JWT Best Current Practices). Keys come only from the configured JWKS and are
chosen by ``kid``; a token can never name its own key (``jku``, ``x5u``, ``jwk``, ``x5c``). Only the
asymmetric algorithms in ``identity.algorithms`` are accepted, and the key's type must fit the algorithm, so
an RSA public key can never be used as an HMAC secret. Every claim the gateway relies on is type-checked.

This module verifies signatures with ``jwt``'s algorithms; ``jwks.py`` loads the keys (with ``jwt``'s JWK
parser), ``jose.py`` reads the token's parts strictly, and ``devkeys.py`` mints development tokens. Each
refusal raises ``UnauthenticatedError`` whose detail names the reason for the audit trail; callers only ever
see the error's ``public_message``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError
from mcp.server.auth.provider import AccessToken

from mcp_gateway.config import IdentitySettings
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.jose import (
    BAD_SIGNATURE,
    EXPIRED,
    INVALID_CLAIMS,
    LIFETIME_TOO_LONG,
    MALFORMED,
    NOT_YET_VALID,
    UNACCEPTABLE_HEADER,
    UNKNOWN_KEY,
    WRONG_ISSUER,
    b64url_decode,
    check_audience,
    json_object,
    numeric_date,
    printable,
    shown,
    string_list,
)
from mcp_gateway.jwks import KEY_FITS, JwkSet, VerificationKey, load_jwks, parse_jwks
from mcp_gateway.keyring import KeyRing

__all__ = [
    "Catalog",
    "GatewayAccessToken",
    "JwkSet",
    "JwtVerifier",
    "KeyRing",
    "Principal",
    "VerificationKey",
    "load_jwks",
    "parse_jwks",
    "principal_from",
]

logger = logging.getLogger(__name__)

Catalog = Literal["internal", "partner"]
CATALOGS: frozenset[str] = frozenset({"internal", "partner"})

MAX_SUBJECT_CHARS = 256
MAX_ROLES = 64
MAX_AMR = 16
MAX_SHORT_CLAIM_CHARS = 64
MAX_TOKEN_ID_CHARS = 256
CACHE_SIZE = 10_000

# re.fullmatch, never `$`: `$` also matches before a trailing newline.
_ROLE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Keys come from our JWKS only; a token that tries to name or carry its own key is refused (RFC 8725 §3.10).
_KEY_BEARING_HEADERS = ("jku", "x5u", "jwk", "x5c")
# We implement no JWS extensions, so anything marked critical (and RFC 7797's unencoded payload) is refused.
_EXTENSION_HEADERS = ("crit", "b64", "zip")
# RFC 8725 §3.11: if a token is explicitly typed, it must be typed as an access token (or plain JWT).
_ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller of one request.

    Attributes:
        subject: The token's ``sub``; unique only together with ``issuer``.
        roles: The token's ``roles``, de-duplicated, in token order.
        catalog: Which tool catalog the caller may see: ``internal`` or ``partner``.
        amr: Authentication methods (``amr``) the identity provider reported.
        token_id: The token's ``jti``, if any.
        issuer: The token's ``iss``.
        expires_at: The token's ``exp``, epoch seconds.
    """

    subject: str
    roles: tuple[str, ...]
    catalog: str
    amr: tuple[str, ...]
    token_id: str | None
    issuer: str
    expires_at: int


class GatewayAccessToken(AccessToken):
    """The SDK's ``AccessToken``, carrying the verified ``Principal`` it was built from."""

    principal: Principal


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    principal: Principal
    valid_until: float
    # The key ring's generation the token was verified under: after a rotation it is verified afresh.
    generation: int


class _UnknownKidError(UnauthenticatedError):
    """The token's kid is not in the keys in force: the one refusal a JWKS re-read may cure."""


class JwtVerifier:
    """Verifies bearer JWTs and caches the principals of tokens it accepted.

    Implements the MCP SDK's ``TokenVerifier`` protocol through ``verify_token``. A verified principal is
    cached by the token's SHA-256 until the token's ``exp`` plus leeway by ``clock``, so an expired token
    stops working mid-session even though it was once accepted, and until the keys change, so a token signed
    with a key the IdP removed stops working at the re-read that removes it (``keyring.KeyRing``).
    """

    def __init__(
        self,
        settings: IdentitySettings,
        keys: JwkSet | KeyRing,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        """Create a verifier.

        Args:
            settings: Issuer, audience, algorithms and limits.
            keys: The keys tokens are verified against: a ring kept current (``keyring.load_keyring``), or a
                fixed set (``load_jwks``).
            clock: Returns the current time in epoch seconds; tests pass a fake one.
            cache_size: How many verified tokens to remember; the oldest is evicted first.
        """
        self._settings = settings
        self._ring = keys if isinstance(keys, KeyRing) else KeyRing.fixed(keys)
        # Told the reason of every bearer token refused over HTTP (metrics.GatewayMetrics.auth_refused).
        self.on_refusal: Callable[[str], None] | None = None
        self._clock = clock
        self._cache_size = max(cache_size, 0)
        self._cache: dict[bytes, _CacheEntry] = {}
        self._lock = threading.Lock()
        available = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {
            name: available[name] for name in settings.algorithms if name in KEY_FITS and name in available
        }

    def verify(self, token: str) -> Principal:
        """Verify ``token`` and return its principal.

        Args:
            token: A compact JWS, without the ``Bearer`` prefix.

        Returns:
            The principal the token names.

        Raises:
            UnauthenticatedError: The token is malformed, badly signed, expired or names unacceptable claims;
                the detail says which.
        """
        if len(token) > self._settings.max_token_bytes:
            raise UnauthenticatedError(f"token is larger than {self._settings.max_token_bytes} bytes", reason=MALFORMED)
        if not token.isascii():
            raise UnauthenticatedError("token is not a compact JWS of three base64url segments", reason=MALFORMED)
        keys = self._ring.current()  # fails closed once the keys are stale, cached tokens included
        generation = self._ring.generation
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is not None and entry.generation == generation:
            if now < entry.valid_until:
                return entry.principal
            with self._lock:
                self._cache.pop(digest, None)
            raise UnauthenticatedError("token expired", reason=EXPIRED)
        principal = self._verify_uncached(token, now, keys)
        self._remember(digest, _CacheEntry(principal, principal.expires_at + self._settings.leeway, generation))
        return principal

    @property
    def keyring(self) -> KeyRing:
        """The keys this verifier checks signatures against; serving runs ``keyring.running()`` beside it."""
        return self._ring

    async def verify_token(self, token: str) -> AccessToken | None:
        """The MCP SDK's ``TokenVerifier`` hook: an access token for a valid bearer token, else ``None``.

        Args:
            token: The bearer token from the ``Authorization`` header.

        Returns:
            A ``GatewayAccessToken`` carrying the principal, or ``None`` for any unacceptable token.
        """
        try:
            try:
                principal = self.verify(token)
            except _UnknownKidError:
                # Perhaps the IdP rotated: re-read the JWKS (rate-limited, one read for every waiting caller).
                if not await self._ring.refresh_for_unknown_kid():
                    raise
                principal = self.verify(token)
        except UnauthenticatedError as exc:
            logger.info("bearer token refused: %s", exc)
            if self.on_refusal is not None:
                self.on_refusal(exc.reason)
            return None
        return GatewayAccessToken(
            token=token,
            client_id=principal.subject,
            scopes=list(principal.roles),
            expires_at=principal.expires_at,
            resource=self._settings.audience,
            subject=principal.subject,
            # The SDK binds sessions to (client_id, claims["iss"], subject).
            claims={"iss": principal.issuer},
            principal=principal,
        )

    def _remember(self, digest: bytes, entry: _CacheEntry) -> None:
        if self._cache_size == 0:
            return
        with self._lock:
            while len(self._cache) >= self._cache_size:
                # dicts keep insertion order, so the first key is the oldest entry.
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = entry

    def _verify_uncached(self, token: str, now: float, keys: JwkSet) -> Principal:
        if not _COMPACT_JWS.fullmatch(token):
            raise UnauthenticatedError("token is not a compact JWS of three base64url segments", reason=MALFORMED)
        header_segment, payload_segment, signature_segment = token.split(".")
        header = json_object(b64url_decode(header_segment, "header"), "header")
        key, algorithm = self._select_key(header, keys)
        signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
        signature = b64url_decode(signature_segment, "signature")
        try:
            valid = algorithm.verify(signing_input, key, signature)
        except (PyJWTError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(
                f"signature could not be checked: {type(exc).__name__}", reason=BAD_SIGNATURE
            ) from exc
        if not valid:
            raise UnauthenticatedError("signature verification failed", reason=BAD_SIGNATURE)
        claims = json_object(b64url_decode(payload_segment, "payload"), "payload")
        return self._principal(claims, now)

    def _select_key(self, header: dict[str, Any], keys: JwkSet) -> tuple[Any, Algorithm]:
        for name in _KEY_BEARING_HEADERS:
            if name in header:
                raise UnauthenticatedError(
                    f"header carries {name!r}: keys come only from the configured JWKS", reason=UNACCEPTABLE_HEADER
                )
        for name in _EXTENSION_HEADERS:
            if name in header:
                raise UnauthenticatedError(f"header carries unsupported extension {name!r}", reason=UNACCEPTABLE_HEADER)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
            raise UnauthenticatedError(
                f"header typ {shown(typ)} is not an access token type", reason=UNACCEPTABLE_HEADER
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise UnauthenticatedError(
                f"header alg {shown(alg)} is not one of {list(self._algorithms)}", reason=UNACCEPTABLE_HEADER
            )
        kid = header.get("kid")
        if kid is None:
            raise UnauthenticatedError("header has no kid", reason=UNKNOWN_KEY)
        if not isinstance(kid, str):
            raise UnauthenticatedError("header kid is not a string", reason=UNKNOWN_KEY)
        entry = keys.keys.get(kid)
        if entry is None:
            raise _UnknownKidError(f"header kid {shown(kid)} is not in the JWKS", reason=UNKNOWN_KEY)
        kty, curves = KEY_FITS[alg]
        if entry.kty != kty or entry.crv not in curves or (entry.alg is not None and entry.alg != alg):
            raise UnauthenticatedError(
                f"key {shown(kid)} ({entry.kty}, {entry.crv}) does not fit alg {alg}", reason=UNKNOWN_KEY
            )
        algorithm = self._algorithms[alg]
        try:
            # pyjwt checks the key's class (and an EC key's curve) against the algorithm once more.
            prepared = algorithm.prepare_key(entry.public_key)
        except (PyJWTError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(f"key {shown(kid)} does not fit alg {alg}", reason=UNKNOWN_KEY) from exc
        return prepared, algorithm

    def _principal(self, claims: dict[str, Any], now: float) -> Principal:
        settings = self._settings
        leeway = settings.leeway
        issuer = claims.get("iss")
        if issuer != settings.issuer or not isinstance(issuer, str):
            raise UnauthenticatedError("iss is missing or not the configured issuer", reason=WRONG_ISSUER)
        check_audience(claims.get("aud"), settings.audience)
        exp = numeric_date(claims, "exp")
        if exp is None:
            raise UnauthenticatedError("exp is missing", reason=INVALID_CLAIMS)
        nbf = numeric_date(claims, "nbf")
        iat = numeric_date(claims, "iat")
        if now >= exp + leeway:
            raise UnauthenticatedError("token expired", reason=EXPIRED)
        if nbf is not None and now + leeway < nbf:
            raise UnauthenticatedError("token not yet valid (nbf)", reason=NOT_YET_VALID)
        if iat is not None and now + leeway < iat:
            raise UnauthenticatedError("token issued in the future (iat)", reason=NOT_YET_VALID)
        # The lifetime runs from the earliest of iat, nbf and now: the token is valid from whichever it names first,
        # and in use from now at the latest. From a future nbf alone (both claims are optional, the documented
        # token contract), a token without iat could be used for the cap plus twice the leeway.
        start = min(moment for moment in (iat, nbf, now) if moment is not None)
        if exp - start > settings.max_token_lifetime + leeway:
            raise UnauthenticatedError(
                f"token lifetime exceeds {settings.max_token_lifetime} s", reason=LIFETIME_TOO_LONG
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("sub is missing or not a non-empty string", reason=INVALID_CLAIMS)
        if len(subject) > MAX_SUBJECT_CHARS or not printable(subject):
            raise UnauthenticatedError("sub is too long or contains control characters", reason=INVALID_CLAIMS)
        catalog = claims.get("catalog")
        if not isinstance(catalog, str) or catalog not in CATALOGS:
            raise UnauthenticatedError(
                f"catalog {shown(catalog)} is not one of {sorted(CATALOGS)}", reason=INVALID_CLAIMS
            )
        roles = string_list(claims, "roles", MAX_ROLES)
        if not all(_ROLE.fullmatch(role) for role in roles):
            raise UnauthenticatedError("roles contains a role that is not [A-Za-z0-9_.:-]{1,64}", reason=INVALID_CLAIMS)
        amr = string_list(claims, "amr", MAX_AMR)
        if not all(len(method) <= MAX_SHORT_CLAIM_CHARS and printable(method) for method in amr):
            raise UnauthenticatedError("amr contains an overlong or unprintable method", reason=INVALID_CLAIMS)
        token_id = claims.get("jti")
        if token_id is not None and (
            not isinstance(token_id, str) or len(token_id) > MAX_TOKEN_ID_CHARS or not printable(token_id)
        ):
            raise UnauthenticatedError("jti is not a printable string of at most 256 characters", reason=INVALID_CLAIMS)
        return Principal(
            subject=subject,
            roles=tuple(dict.fromkeys(roles)),
            catalog=catalog,
            amr=tuple(amr),
            token_id=token_id,
            issuer=issuer,
            expires_at=math.floor(exp),
        )


def principal_from(access_token: AccessToken) -> Principal:
    """Recover the principal from an access token that ``JwtVerifier.verify_token`` returned.

    Args:
        access_token: The SDK's access token for the current request.

    Returns:
        The principal the verifier attached.

    Raises:
        UnauthenticatedError: The access token did not come from ``JwtVerifier``.
    """
    if not isinstance(access_token, GatewayAccessToken):
        raise UnauthenticatedError(f"access token of type {type(access_token).__name__} carries no principal")
    return access_token.principal
