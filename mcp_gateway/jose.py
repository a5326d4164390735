"""Strict readers for the parts of an untrusted token: base64url segments, JSON objects and claim values.

Each part has exactly one accepted spelling and type, so that no other parser can read a different token
(RFC 8725 §2.7). Every refusal raises ``UnauthenticatedError`` naming the part; ``unique_pairs`` also keeps
duplicate names out of the JWKS (``jwks.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import unicodedata
from typing import Any

from mcp_gateway.errors import UnauthenticatedError

__all__ = [
    "BAD_SIGNATURE",
    "EXPIRED",
    "INVALID_CLAIMS",
    "KEYS_STALE",
    "LIFETIME_TOO_LONG",
    "MALFORMED",
    "NOT_YET_VALID",
    "REASONS",
    "UNACCEPTABLE_HEADER",
    "UNKNOWN_KEY",
    "WRONG_AUDIENCE",
    "WRONG_ISSUER",
    "b64url_decode",
    "check_audience",
    "json_object",
    "numeric_date",
    "printable",
    "shown",
    "string_list",
    "unique_pairs",
]

# The class of each refusal (``UnauthenticatedError.reason``), for the operator: on stdio's stderr and in logs.
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
WRONG_AUDIENCE = "wrong audience"
WRONG_ISSUER = "wrong issuer"
BAD_SIGNATURE = "bad signature"
UNKNOWN_KEY = "unknown key"
MALFORMED = "malformed"
LIFETIME_TOO_LONG = "lifetime too long"
UNACCEPTABLE_HEADER = "unacceptable header"
INVALID_CLAIMS = "invalid claims"
# The JWKS could not be read for longer than identity.jwks_max_stale: every token is refused (fail closed).
KEYS_STALE = "keys stale"
REASONS = frozenset(
    {
        EXPIRED,
        NOT_YET_VALID,
        WRONG_AUDIENCE,
        WRONG_ISSUER,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        MALFORMED,
        LIFETIME_TOO_LONG,
        UNACCEPTABLE_HEADER,
        INVALID_CLAIMS,
        KEYS_STALE,
    }
)

# Unicode categories refused in subjects and other short strings: controls, format characters (bidi
# overrides, zero-width), line/paragraph separators, surrogates, private use and unassigned.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` that refuses an object naming a member twice.

    Raises:
        ValueError: a member name repeats.
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def b64url_decode(segment: str, name: str) -> bytes:
    """Decode a base64url segment (already checked against the alphabet) in its one canonical spelling.

    Raises:
        UnauthenticatedError: ``segment`` is not valid or not canonical base64url; the detail names ``name``.
    """
    # The caller has already checked the alphabet; refuse non-canonical trailing bits too, so that one
    # token has exactly one spelling.
    if len(segment) % 4 == 1:
        raise UnauthenticatedError(f"{name} is not valid base64url", reason=MALFORMED)
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise UnauthenticatedError(f"{name} is not valid base64url", reason=MALFORMED) from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment.encode("ascii"):
        raise UnauthenticatedError(f"{name} is not canonical base64url", reason=MALFORMED)
    return decoded


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON.
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes, name: str) -> dict[str, Any]:
    """Parse strict JSON that must be an object: no duplicate names, no ``NaN`` or ``Infinity``.

    Raises:
        UnauthenticatedError: ``data`` is not strict JSON or not an object; the detail names ``name``.
    """
    try:
        value = json.loads(data, object_pairs_hook=unique_pairs, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # Duplicate names are refused so that no other parser can read different claims (RFC 8725 §2.7).
        raise UnauthenticatedError(
            f"{name} is not strict JSON (duplicate names, NaN and Infinity are refused)", reason=MALFORMED
        ) from exc
    if not isinstance(value, dict):
        raise UnauthenticatedError(f"{name} is not a JSON object", reason=MALFORMED)
    return value


def check_audience(aud: Any, audience: str) -> None:
    """Check that the ``aud`` claim (a string or a list of strings) names ``audience``.

    Raises:
        UnauthenticatedError: ``aud`` is missing, of another type, or does not name ``audience``.
    """
    if isinstance(aud, str):
        if aud == audience:
            return
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        if audience in aud:
            return
    else:
        raise UnauthenticatedError("aud is missing or not a string or list of strings", reason=WRONG_AUDIENCE)
    raise UnauthenticatedError("aud does not name this gateway", reason=WRONG_AUDIENCE)


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The claim ``name`` as a finite NumericDate (epoch seconds), or None when the claim is absent.

    Raises:
        UnauthenticatedError: the claim is present but not a finite number (``true`` included).
    """
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    # bool is an int subclass; `true` is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnauthenticatedError(f"{name} is not a NumericDate", reason=INVALID_CLAIMS)
    try:
        number = float(value)
    except OverflowError as exc:
        raise UnauthenticatedError(f"{name} is not a NumericDate", reason=INVALID_CLAIMS) from exc
    if not math.isfinite(number):
        raise UnauthenticatedError(f"{name} is not a NumericDate", reason=INVALID_CLAIMS)
    return number


def string_list(claims: dict[str, Any], name: str, limit: int) -> list[str]:
    """The claim ``name`` as a list of at most ``limit`` strings; an absent claim is an empty list.

    Raises:
        UnauthenticatedError: the claim is not a list of strings, or has more than ``limit`` entries.
    """
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UnauthenticatedError(f"{name} is not a list of strings", reason=INVALID_CLAIMS)
    if len(value) > limit:
        raise UnauthenticatedError(f"{name} has more than {limit} entries", reason=INVALID_CLAIMS)
    return value


def printable(text: str) -> bool:
    """True when ``text`` has no control, format, separator, surrogate, private-use or unassigned character."""
    return not any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in text)


def shown(value: Any) -> str:
    """A bounded, escaped rendering of an untrusted value for the audit detail."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
