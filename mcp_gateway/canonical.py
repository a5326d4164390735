"""The one canonical JSON byte form behind every digest the gateway records or signs.

Auditors recompute these digests (argument digests, tool and catalog digests, record hashes, checkpoint
bodies), so there is exactly one form, documented in docs/architecture.md: keys sorted by code point, no
whitespace (``","`` and ``":"``), non-ASCII characters written as themselves (not ``\\u`` escapes), encoded as
UTF-8, and NaN or Infinity refused (they are not JSON, and other parsers read them differently or not at all).
A lone surrogate cannot be encoded as UTF-8 and is refused too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "canonical_text", "digest"]

# One encoder for the process: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

canonical_text = _ENCODER.encode
"""The canonical form as text (before UTF-8 encoding). Raises ``ValueError`` for NaN and Infinity, ``TypeError``
for a value that is not JSON."""


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a JSON value.

    Raises:
        ValueError: the value holds NaN or Infinity, or a lone surrogate (``UnicodeEncodeError``).
        TypeError: the value is not JSON (a set, bytes, an object).
    """
    return _ENCODER.encode(value).encode()


def digest(value: Any) -> str:
    """SHA-256 of the canonical bytes, as lowercase hex.

    Raises:
        ValueError: as :func:`canonical_json`.
        TypeError: as :func:`canonical_json`.
    """
    return hashlib.sha256(canonical_json(value)).hexdigest()
