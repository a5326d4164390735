"""The evidence plane's settings: the audit trail, OpenTelemetry, and the Prometheus endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mcp_gateway.config.base import Section

__all__ = ["AuditSettings", "MetricsSettings", "TelemetrySettings"]


class AuditSettings(Section):
    """The hash-chained audit trail: how durable a record is, and its signed checkpoints."""

    durability: Literal["process", "power"] = Field(
        default="process",
        description="process: a record survives the gateway being killed (SQLite synchronous=NORMAL); "
        "power: it survives power loss too (synchronous=FULL, one fsync per group commit).",
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs checkpoints; keep it outside the database. "
        "Default <state_dir>/audit-signing.key, created on first use.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="Signed checkpoints are mirrored here (JSON lines) as well as in the database. "
        "Default <state_dir>/audit-checkpoints.jsonl; ship it off the host.",
    )
    checkpoint_interval: float = Field(default=60.0, gt=0, description="Seconds between checkpoints while serving.")
    max_batch: int = Field(default=256, ge=1, le=10_000, description="Most records committed in one group commit.")
    write_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds a commit may wait for the trail's write lock (held by another process) before the call "
        "is refused as unavailable; a caller learns within twice this. The event loop itself never waits.",
    )


class TelemetrySettings(Section):
    """OpenTelemetry spans, sent only to an in-boundary collector."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL of an in-boundary collector (http://host:4318); must be on egress.allow. "
        "Unset: spans and metrics are not recorded, but every call still gets a trace id (audit rows, traceparent).",
    )
    service_name: str = Field(default="mcp-gateway", description="The OpenTelemetry service.name of spans.")
    detail: Literal["calls", "stages"] = Field(
        default="calls", description="stages adds one span per pipeline stage (debugging; costs ~30 µs each)."
    )
    capture_arguments: bool = Field(
        default=False, description="Security: puts tool arguments in spans. Off unless you need it."
    )
    max_queue_size: int = Field(
        default=2048, ge=1, le=1_000_000, description="Spans held for export; more are dropped."
    )
    export_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds one span export may take.")
    schedule_delay: float = Field(default=1.0, gt=0, le=60, description="Seconds between span exports.")
    metric_interval: float = Field(default=15.0, gt=0, description="Seconds between metric exports.")


class MetricsSettings(Section):
    """A Prometheus text endpoint (``/metrics``) on its own listener, never on the MCP port (docs/operations.md)."""

    enabled: bool = Field(default=False, description="Serve /metrics on metrics.host:metrics.port (HTTP transports).")
    host: str = Field(
        default="127.0.0.1",
        description="Security: where /metrics listens; loopback by default. It carries no subjects or arguments, "
        "but bind it only where the scraper can reach it.",
    )
    port: int = Field(default=9464, ge=0, le=65_535, description="The metrics port (0: any free port).")
