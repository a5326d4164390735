"""Telemetry: the trace context the audit trail records.

The ``mcp`` SDK opens a server span per request; the gateway reads its trace id so an audit row and a trace
can be joined. Exporting spans to an in-boundary collector is configured separately.
"""

from __future__ import annotations

from opentelemetry import trace

__all__ = ["current_trace_id"]


def current_trace_id() -> str | None:
    """The 32-hex-digit trace id of the current span, or None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
