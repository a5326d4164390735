"""The tables, as SQLModel classes: the audit trail and its checkpoints, break-glass grants and held calls, and
rate-limit buckets.

They all live in one database, so every replica sees the same trail, grants, approvals and (with
``limits.store: database``) buckets.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import Field, SQLModel

__all__ = [
    "AUDIT_COLUMNS",
    "CHECKPOINT_TABLE",
    "GRANT_TABLE",
    "HELD_CALL_TABLE",
    "PROBE_TABLE",
    "RATE_BUCKET_TABLE",
    "RECORD_TABLE",
    "AuditCheckpoint",
    "AuditRecord",
    "BreakGlassGrant",
    "HeldCall",
    "RateBucket",
    "WriteProbe",
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


class _Request(SQLModel):
    """What a grant and a held call both hold: who asked for which tool, when, and who decided."""

    id: str = Field(primary_key=True)
    subject: str = Field(index=True)
    catalog: str
    tool: str
    requested_at: float
    status: str
    approver: str | None = None
    approved_at: float | None = None
    # The chain record of the row's latest change, and the digest of the state it set (see grantchain.py): a row
    # without them, or whose fields no longer hash to them, is not honoured.
    chain_seq: int | None = None
    chain_digest: str | None = None


class BreakGlassGrant(_Request, table=True):
    """A time-bound allow for one subject and tool (see breakglass.py); its clock starts when approved."""

    __tablename__ = "breakglass_grant"

    reason: str
    ttl: int
    requester_amr: str
    expires_at: float | None = None
    revoked_by: str | None = None
    revoked_at: float | None = None


class HeldCall(_Request, table=True):
    """One exact call waiting for, or admitted by, a second person's approval (see approvals.py)."""

    __tablename__ = "held_call"

    args_digest: str
    policy_version: str
    expires_at: float
    used_at: float | None = None
    # The arguments as the approver sees them: redacted by the DLP rules, never the raw values.
    redacted_args: str | None = None


class WriteProbe(SQLModel, table=True):
    """One row, rewritten by each readiness check: proof that a write to the trail's database commits now."""

    __tablename__ = "audit_write_probe"

    id: int | None = Field(default=None, primary_key=True)
    ts: float


class RateBucket(SQLModel, table=True):
    """One token bucket shared by every replica (see store/buckets.py): its level at ``at``, by the database's clock.

    ``key`` is the sha256 of the limiter's bucket key (catalog, subject, tool and limit), so a hostile subject can
    neither grow the index nor carry a NUL byte into it.
    """

    __tablename__ = "rate_bucket"

    key: str = Field(primary_key=True, max_length=64)
    tokens: float
    at: float  # seconds since the epoch
    capacity: float
    rate: float  # tokens per second
    admitted: bool  # whether the latest take took a token (the row after the update cannot tell otherwise)


RECORD_TABLE: Table = AuditRecord.__table__  # type: ignore[attr-defined]
CHECKPOINT_TABLE: Table = AuditCheckpoint.__table__  # type: ignore[attr-defined]
GRANT_TABLE: Table = BreakGlassGrant.__table__  # type: ignore[attr-defined]
HELD_CALL_TABLE: Table = HeldCall.__table__  # type: ignore[attr-defined]
PROBE_TABLE: Table = WriteProbe.__table__  # type: ignore[attr-defined]
RATE_BUCKET_TABLE: Table = RateBucket.__table__  # type: ignore[attr-defined]
# The trail's column names, in table order: what audit/log.py hashes (all but id and hash) without SQL.
AUDIT_COLUMNS: tuple[str, ...] = tuple(column.name for column in RECORD_TABLE.columns)
