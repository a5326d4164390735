"""Grants and held calls as the hash chain tells them: the only version enforcement believes.

Every state change of a break-glass grant (``breakglass.request``, ``.approve``, ``.revoke``) and of a held call
(``approval.hold``, ``.approve``, ``.deny``, ``.consume``) is an audit record whose ``detail.state`` is the whole
new state of the row. The row in the grant tables then carries that record's id (``chain_seq``) and the SHA-256 of
the state (``chain_digest``). A row is honoured only when the *latest* chain record for its id is the one the row
names and the row's own fields hash to that record's state: a row inserted by SQL has no record, an edited one
(expiry pushed out, another tool) no longer hashes to it, and one rolled back (a revoked grant set approved again,
a consumed approval set approved again) names a record that is no longer the latest. Reviews
(``breakglass.review``) are sign-offs kept here too; they do not change the grant's row.

:class:`ChainLedger` holds the latest state of every grant and held call in memory, keyed by the chain position it
has read up to. Each check first reads the records appended since (one query that also returns the head; nothing
is cached across the chain's growth, so another replica's approval counts at once). A record whose contents do
not hash to its stored hash is ignored: ``audit verify`` names it as changed.

What this cannot stop: someone with write access to the database appending a well-formed record at the chain's
head. That record is then part of the tamper-evident trail itself, visible to ``audit verify`` against the next
signed checkpoint and to every review, which is the point: nothing is honoured that is not on the record.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_gateway.audit.log import record_hash
from mcp_gateway.canonical import canonical_json
from mcp_gateway.errors import UnavailableError

__all__ = [
    "CALL_EVENTS",
    "CALL_STATE",
    "CHAIN_EVENTS",
    "GRANT_EVENTS",
    "GRANT_STATE",
    "REVIEW_EVENT",
    "ChainEntry",
    "ChainLedger",
    "call_state",
    "grant_state",
    "mismatch",
    "state_digest",
]

GRANT_STATE: tuple[str, ...] = (
    "id", "subject", "catalog", "tool", "reason", "ttl", "requested_at", "requester_amr", "status", "approver",
    "approved_at", "expires_at", "revoked_by", "revoked_at",
)  # fmt: skip
CALL_STATE: tuple[str, ...] = (
    "id", "subject", "catalog", "tool", "args_digest", "policy_version", "requested_at", "expires_at", "status",
    "approver", "approved_at", "used_at",
)  # fmt: skip
GRANT_EVENTS = ("breakglass.request", "breakglass.approve", "breakglass.revoke")
CALL_EVENTS = ("approval.hold", "approval.approve", "approval.deny", "approval.consume")
REVIEW_EVENT = "breakglass.review"
CHAIN_EVENTS: tuple[str, ...] = (*GRANT_EVENTS, *CALL_EVENTS, REVIEW_EVENT)


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def grant_state(row: Mapping[str, Any]) -> dict[str, Any]:
    """The chain's view of a grant row: every field that means something, none of the chain columns."""
    return {name: row.get(name) for name in GRANT_STATE}


def call_state(row: Mapping[str, Any]) -> dict[str, Any]:
    """The chain's view of a held call: its fields, and the redacted arguments the approver saw, by digest (the
    trail keeps the digest, the row the text)."""
    return {**{name: row.get(name) for name in CALL_STATE}, "shown_sha256": _sha256(row.get("redacted_args"))}


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of a state (floats as the database hands them back)."""
    return hashlib.sha256(canonical_json(dict(state))).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """The latest chain record of one grant or held call: its id in the chain, the state it set and that state's
    digest."""

    seq: int
    digest: str
    state: Mapping[str, Any]


def mismatch(row: Mapping[str, Any] | None, entry: ChainEntry | None, kind: str) -> str | None:
    """Why a row is not what the chain says (None when it is): the reason a refusal and ``audit verify`` give.

    Args:
        row: the table's row (None: no row).
        entry: the latest chain record for the row's id (None: none).
        kind: ``grant`` or ``call``.
    """
    if row is None:
        return "no row" if entry is not None else None
    if entry is None:
        return "no chain record"
    state = grant_state(row) if kind == "grant" else call_state(row)
    if row.get("chain_seq") != entry.seq:
        return f"names chain record {row.get('chain_seq')}, but the latest for it is {entry.seq}"
    if state_digest(state) != entry.digest or row.get("chain_digest") != entry.digest:
        changed = sorted(name for name, value in state.items() if entry.state.get(name) != value)
        return f"differs from chain record {entry.seq} in {', '.join(changed) or 'chain_digest'}"
    return None


class ChainLedger:
    """The latest chain record of every grant, held call and review, read incrementally from the trail.

    ``read`` is the store's query: the records after a position whose event is one of :data:`CHAIN_EVENTS`, plus
    the chain's head record (so the position moves past rows that are not ours). Thread-safe.
    """

    def __init__(self, read: Callable[[int], Iterable[dict[str, Any]]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self.position = 0
        self.grants: dict[str, ChainEntry] = {}
        self.calls: dict[str, ChainEntry] = {}
        self.reviews: dict[str, list[dict[str, Any]]] = {}
        # Grant ids by (subject, catalog): a refused call looks at that caller's grants only.
        self.by_caller: dict[tuple[str, str], set[str]] = {}

    def refresh(self) -> ChainLedger:
        """Read what the chain gained since the last refresh; returns self.

        Raises:
            UnavailableError: the trail cannot be read (a check then refuses: fail closed).
        """
        with self._lock:
            for row in self._read(self.position):
                self.take(row)
        return self

    def take(self, row: dict[str, Any]) -> None:
        """Take one trail record: the latest state of its grant or held call, or a review (others only move the
        position)."""
        seq = int(row["id"])
        self.position = max(self.position, seq)
        event = row.get("event")
        if event not in CHAIN_EVENTS or row.get("outcome") != "ok":
            return
        try:
            if record_hash(row) != row.get("hash"):
                return  # changed after writing: audit verify reports it; nothing here honours it
            detail = json.loads(row.get("detail") or "{}")
        except (UnavailableError, ValueError):
            return
        if event == REVIEW_EVENT:
            review = detail.get("review")
            if isinstance(review, dict) and isinstance(detail.get("grant"), str):
                self.reviews.setdefault(detail["grant"], []).append({**review, "seq": seq, "ts": row.get("ts")})
            return
        state = detail.get("state")
        if not isinstance(state, dict) or not isinstance(state.get("id"), str):
            return
        if event in GRANT_EVENTS:
            self.grants[state["id"]] = ChainEntry(seq, state_digest(state), state)
            self.by_caller.setdefault((str(state.get("subject")), str(state.get("catalog"))), set()).add(state["id"])
        else:
            self.calls[state["id"]] = ChainEntry(seq, state_digest(state), state)
