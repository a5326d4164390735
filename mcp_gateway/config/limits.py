"""The rate limits' settings: where the token buckets live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mcp_gateway.config.base import Section

__all__ = ["LimitsSettings"]


class LimitsSettings(Section):
    """Where rate-limit buckets live: in this process, or in a database every replica shares (docs/replicas.md)."""

    store: Literal["memory", "database"] = Field(
        default="memory",
        description="memory: buckets of this process (one gateway). database: one row per bucket, updated "
        "atomically, so replicas on one PostgreSQL (or processes on one SQLite file) admit exactly the limit "
        "between them; costs one database round trip per rate-limited call.",
    )
    database_url: str | None = Field(
        default=None,
        description="The bucket database when store is database; unset: database_url (the audit trail's).",
    )
    timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds a bucket update may take (connecting, waiting for the row's lock) before the call is "
        "refused as unavailable: an unreachable store refuses calls, it never admits them.",
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Connections that update buckets at once: per event loop on PostgreSQL (async), threads with "
        "one connection each on SQLite.",
    )
