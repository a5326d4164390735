"""Prometheus metrics: one registry per gateway, exposed as text on a listener of its own (``metrics.*``).

What is counted, and with which labels. Every label takes values from a set the configuration bounds (the two
catalogs, the error codes, the stage names, the inventory's models, the configured upstreams); none is ever a
subject, a tool argument or anything else a caller chooses, so a hostile caller cannot grow the series count.

* ``mcp_gateway_calls_total{catalog, outcome}``: tools/call answered (``ok`` or the error code);
* ``mcp_gateway_denials_total{catalog, reason}``: calls the gateway's own rules refused (unknown or hidden tool,
  rate limit, invalid arguments, DLP, approval required); ``mcp_gateway_rate_limited_total{catalog}`` the
  rate-limit share of them;
* ``mcp_gateway_call_duration_seconds{catalog}`` and ``mcp_gateway_stage_duration_seconds{stage}``: latency of
  the whole call and of each stage the call path times (``telemetry.CallTimer``);
* ``mcp_gateway_audit_commit_duration_seconds`` and ``mcp_gateway_audit_commit_rows``: each audit transaction
  (group commit: one transaction carries every waiting row), and ``mcp_gateway_audit_queue_depth``: rows waiting;
* ``mcp_gateway_model_breaker_state{model, state}``: 1 for each model endpoint's current breaker state;
* ``mcp_gateway_upstream_up{upstream}``: 1 when an upstream server answers its health check (``upstream_up``);
* ``mcp_gateway_auth_refusals_total{reason}``: bearer tokens refused over HTTP (``expired``, ``unknown key``,
  ``keys stale``...: the bounded ``jose.REASONS``);
* ``mcp_gateway_dropped_spans_total``: spans the bounded exporter dropped;
* ``mcp_gateway_jwks_age_seconds`` and ``mcp_gateway_jwks_reads_total``: how long ago the keys were last read
  successfully (``identity.jwks_max_stale`` is where tokens start failing), and how many re-reads were tried.

This module is the only importer of ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_gateway.jose import REASONS

__all__ = ["DENIAL_REASONS", "GatewayMetrics", "Watched"]

# The refusals that are governance decisions rather than failures: the denial reasons.
DENIAL_REASONS = frozenset({"unknown_tool", "rate_limited", "invalid_arguments", "dlp_blocked", "approval_required"})
BREAKER_STATES = ("closed", "open", "half-open")
# From 100 µs (a cached policy decision) to 30 s (a slow model call).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Watched:
    """What a scrape reads from the running gateway; each is a callable so a scrape sees the state of that moment.

    Attributes:
        breaker_states: Each model's breaker state by inventory name (models not called yet are absent).
        models: Every model in the inventory (their breakers are closed until called).
        audit_queue: Rows waiting for the next audit transaction.
        dropped_spans: Spans the exporter dropped since start.
        jwks_age: Seconds since the keys were last read successfully.
        jwks_reads: Re-reads of the JWKS tried since start.
    """

    breaker_states: Callable[[], Mapping[str, str]] = dict
    models: Callable[[], Iterable[str]] = tuple
    audit_queue: Callable[[], int] = int
    dropped_spans: Callable[[], int] = int
    jwks_age: Callable[[], float] | None = None
    jwks_reads: Callable[[], int] | None = None


class _Scrape(Collector):
    def __init__(self, watched: Watched) -> None:
        self.watched = watched

    def collect(self) -> Iterable[Metric]:
        watched = self.watched
        states = dict(watched.breaker_states())
        breaker = GaugeMetricFamily(
            "mcp_gateway_model_breaker_state", "1 for each model endpoint's breaker state", labels=["model", "state"]
        )
        for model in sorted(set(watched.models()) | set(states)):
            current = states.get(model, "closed")
            for state in BREAKER_STATES:
                breaker.add_metric([model, state], 1.0 if state == current else 0.0)
        yield breaker
        yield GaugeMetricFamily(
            "mcp_gateway_audit_queue_depth", "audit rows waiting for the next transaction", value=watched.audit_queue()
        )
        yield CounterMetricFamily(
            "mcp_gateway_dropped_spans", "spans the bounded exporter dropped", value=watched.dropped_spans()
        )
        if watched.jwks_age is not None:
            yield GaugeMetricFamily(
                "mcp_gateway_jwks_age_seconds",
                "seconds since the JWKS was last read successfully",
                value=watched.jwks_age(),
            )
        if watched.jwks_reads is not None:
            yield CounterMetricFamily(
                "mcp_gateway_jwks_reads", "re-reads of the JWKS tried", value=watched.jwks_reads()
            )


class GatewayMetrics:
    """The metrics of one gateway, in a registry of its own (two gateways in one process never share a count)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._calls = Counter("mcp_gateway_calls", "tools/call answered", ["catalog", "outcome"], registry=registry)
        self._denials = Counter(
            "mcp_gateway_denials", "tools/call refused by the gateway's rules", ["catalog", "reason"], registry=registry
        )
        self._rate_limited = Counter(
            "mcp_gateway_rate_limited", "tools/call refused by a rate limit", ["catalog"], registry=registry
        )
        self._duration = Histogram(
            "mcp_gateway_call_duration_seconds", "tools/call latency", ["catalog"], buckets=_BUCKETS, registry=registry
        )
        self._stages = Histogram(
            "mcp_gateway_stage_duration_seconds",
            "latency of each stage of tools/call",
            ["stage"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._commit = Histogram(
            "mcp_gateway_audit_commit_duration_seconds", "one audit transaction", buckets=_BUCKETS, registry=registry
        )
        self._commit_rows = Histogram(
            "mcp_gateway_audit_commit_rows", "rows in one audit transaction", buckets=_ROW_BUCKETS, registry=registry
        )
        self._auth = Counter(
            "mcp_gateway_auth_refusals",
            "bearer tokens refused over HTTP, by reason (jose.REASONS: expired, unknown key, keys stale...)",
            ["reason"],
            registry=registry,
        )
        self._upstream = Gauge(
            "mcp_gateway_upstream_up", "1 when the upstream server answers", ["upstream"], registry=registry
        )
        self.watched = Watched()
        registry.register(_Scrape(self.watched))
        # Children by label values, looked up once: labels() costs more than the increment it leads to.
        self._children: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._stage_children: dict[str, Histogram] = {}

    def call_finished(self, catalog: str, outcome: str, stages: Sequence[tuple[str, float]], total: float) -> None:
        """One tools/call ended with ``outcome`` (``ok`` or an error code); ``stages`` in seconds, in order."""
        calls = self._children.get((catalog, outcome))
        if calls is None:
            calls = self._children[(catalog, outcome)] = self._calls.labels(catalog, outcome)
        calls.inc()
        if outcome in DENIAL_REASONS:
            self._denials.labels(catalog, outcome).inc()
            if outcome == "rate_limited":
                self._rate_limited.labels(catalog).inc()
        duration = self._durations.get(catalog)
        if duration is None:
            duration = self._durations[catalog] = self._duration.labels(catalog)
        duration.observe(total)
        children = self._stage_children
        for stage, seconds in stages:
            child = children.get(stage)
            if child is None:
                child = children[stage] = self._stages.labels(stage)
            child.observe(seconds)

    def audit_committed(self, seconds: float, rows: int) -> None:
        """One audit transaction of ``rows`` rows committed in ``seconds``."""
        self._commit.observe(seconds)
        self._commit_rows.observe(rows)

    def auth_refused(self, reason: str) -> None:
        """A bearer token was refused for ``reason`` (one of ``jose.REASONS``; anything else counts as ``invalid``)."""
        self._auth.labels(reason if reason in REASONS else "invalid").inc()

    def upstream_up(self, name: str, up: bool) -> None:
        """Record whether upstream server ``name`` (a configured name, never a caller's) answers its health check."""
        self._upstream.labels(name).set(1.0 if up else 0.0)

    def upstream_gone(self, name: str) -> None:
        """Forget upstream ``name`` (it was removed from the configuration)."""
        try:
            self._upstream.remove(name)
        except KeyError:
            return

    def exposition(self) -> tuple[bytes, str]:
        """This registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
