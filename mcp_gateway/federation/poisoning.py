"""Poisoning checks on an upstream tool definition (placeholder with the final signature: finds nothing).

The full checks (hidden characters, instruction-like text, exfiltration hints, other tools' names) replace this
module; callers depend only on :func:`findings` and :class:`Finding`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "findings"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspicious thing in a definition: its ``kind``, the ``field`` it is in, and a printable ``detail``."""

    kind: str
    field: str
    detail: str


def findings(definition: Mapping[str, Any]) -> list[Finding]:
    """The poisoning findings of one wire definition (this placeholder finds none)."""
    return []
