"""The tables, as SQLModel classes: the audit trail and its checkpoints.

They all live in one database, so every replica sees the same trail, grants and approvals.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import Field, SQLModel

__all__ = [
    "AUDIT_COLUMNS",
    "CHECKPOINT_TABLE",
    "RECORD_TABLE",
    "AuditCheckpoint",
    "AuditRecord",
]


class AuditRecord(SQLModel, table=True):
    """One row of the hash-chained trail (see audit/log.py); the writer assigns ``id`` (see store/chain.py)."""

    __tablename__ = "audit_record"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    event: str
    # Not indexed: an index on these random ids dirties one more page per commit (about 15 µs of a 40 µs row).
    # `audit trace` scans instead (0.14 s per million rows from the page cache); see docs/architecture.md.
    request_id: str | None = None
    trace_id: str | None = None
    subject: str | None = None
    roles: str | None = None
    catalog: str | None = None
    tool: str | None = None
    tool_digest: str | None = None
    decision: str
    rule: str | None = None
    args_digest: str | None = None
    outcome: str
    latency_ms: float | None = None
    policy_version: str | None = None
    detail: str | None = None
    prev_hash: str
    hash: str


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement that the chain's record ``record_id`` had hash ``record_hash`` (see checkpoint.py)."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    record_id: int
    record_hash: str
    key_id: str
    signature: str


RECORD_TABLE: Table = AuditRecord.__table__  # type: ignore[attr-defined]
CHECKPOINT_TABLE: Table = AuditCheckpoint.__table__  # type: ignore[attr-defined]
# The trail's column names, in table order: what audit/log.py hashes (all but id and hash) without SQL.
AUDIT_COLUMNS: tuple[str, ...] = tuple(column.name for column in RECORD_TABLE.columns)
