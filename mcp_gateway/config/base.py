"""What every settings section shares: unknown keys are refused and a loaded section never changes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ALLOWED_ALGORITHMS", "Section"]

# Asymmetric algorithms only. HS* would let anyone holding the verification key mint tokens, and a
# symmetric key configured next to a public JWKS invites algorithm confusion (RFC 8725 §2.1, §3.1).
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
