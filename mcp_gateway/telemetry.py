"""Telemetry: enrich the SDK's server span, time the stages, count calls, and export to an in-boundary collector.

The ``mcp`` SDK opens a SERVER span per request (tracer ``mcp-python-sdk``). The gateway does not open a span
per stage (each costs about 30 µs against a budget of about 140 µs per call): it adds its decision, rule,
catalog, subject, policy version and stage timings as attributes of that span, and opens child spans only for
outbound work: the REST upstream, and each request to a model endpoint (with the GenAI attributes
``gen_ai.request.model``, ``gen_ai.operation.name`` and ``gen_ai.usage.*``). ``telemetry.detail: stages``
adds one span per stage after the fact, from the recorded timings, for debugging.

Spans and metrics go over OTLP/HTTP to ``telemetry.otlp_endpoint`` (on the egress allowlist) from a worker
thread fed by a bounded queue: a collector that is down or slow never blocks or fails a call; spans that do
not fit are dropped and counted (``mcp_gateway.telemetry.dropped_spans``). Arguments never go into spans
unless ``telemetry.capture_arguments`` is set.

Without an endpoint nothing would read a span's attributes or a metric, so none are recorded: the sampler drops
every span that has no sampled parent (the SDK then makes a non-recording span that still carries fresh trace
and span ids, so every audit row keeps its trace id and backends still get a ``traceparent``), and no meter
provider is installed (the instruments stay no-ops). Recording them cost about 35 µs per call for nothing. A
caller that sends a sampled ``traceparent`` keeps its decision: that call's spans are recorded (and dropped
here) so that backends receive the sampled flag.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.propagators.textmap import CarrierT
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from mcp_gateway.config import Settings

__all__ = [
    "ATTR_ARGS_DIGEST",
    "ATTR_ARGUMENTS",
    "ATTR_CATALOG",
    "ATTR_DECISION",
    "ATTR_ERROR_CODE",
    "ATTR_ERROR_TYPE",
    "ATTR_MCP_METHOD",
    "ATTR_OPERATION",
    "ATTR_POLICY_VERSION",
    "ATTR_REQUEST_ID",
    "ATTR_REQUEST_MODEL",
    "ATTR_RULE",
    "ATTR_SUBJECT",
    "ATTR_TOOL",
    "ATTR_TOOL_DIGEST",
    "ATTR_USAGE_INPUT_TOKENS",
    "ATTR_USAGE_OUTPUT_TOKENS",
    "CallObserver",
    "CallTimer",
    "Telemetry",
    "current_span_id",
    "current_trace_id",
    "inject_traceparent",
    "model_span",
    "setup_telemetry",
    "tracer",
]

logger = logging.getLogger(__name__)

# Semantic-convention names (the SDK sets the first three on its server span) ...
ATTR_MCP_METHOD = "mcp.method.name"
ATTR_TOOL = "gen_ai.tool.name"
ATTR_OPERATION = "gen_ai.operation.name"
ATTR_ERROR_TYPE = "error.type"
ATTR_ARGUMENTS = "gen_ai.tool.call.arguments"
ATTR_REQUEST_MODEL = "gen_ai.request.model"
ATTR_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
ATTR_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
# ... and the gateway's own.
ATTR_DECISION = "mcp_gateway.decision"
ATTR_RULE = "mcp_gateway.rule"
ATTR_CATALOG = "mcp_gateway.catalog"
ATTR_SUBJECT = "mcp_gateway.subject"
ATTR_POLICY_VERSION = "mcp_gateway.policy.version"
ATTR_REQUEST_ID = "mcp_gateway.request.id"
ATTR_TOOL_DIGEST = "mcp_gateway.tool.digest"
ATTR_ARGS_DIGEST = "mcp_gateway.arguments.digest"
ATTR_OUTCOME = "mcp_gateway.outcome"
# The SDK overwrites error.type on its server span after the handler returns (with the JSON-RPC code, or
# "tool_error"), so the gateway's stable error code has an attribute of its own.
ATTR_ERROR_CODE = "mcp_gateway.error.code"
STAGE_PREFIX = "mcp_gateway.stage."  # + name + ".ms"

tracer = trace.get_tracer("mcp_gateway")
_meter = metrics.get_meter("mcp_gateway")
CALLS = _meter.create_counter("mcp_gateway.calls", unit="{call}", description="tools/call requests answered")
DENIALS = _meter.create_counter("mcp_gateway.denials", unit="{call}", description="tools/call requests refused")
DURATION = _meter.create_histogram("mcp_gateway.call.duration", unit="s", description="tools/call latency")
DROPPED = _meter.create_counter("mcp_gateway.telemetry.dropped_spans", unit="{span}", description="spans not exported")
POOL_WAIT = _meter.create_histogram(
    "mcp_gateway.upstream.pool_wait", unit="s", description="time a REST call waited for a connection to its backend"
)
POOL_TIMEOUTS = _meter.create_counter(
    "mcp_gateway.upstream.pool_timeouts",
    unit="{call}",
    description="REST calls whose deadline passed while they waited for a connection (egress.pool_size)",
)
DROPPED_CONNECTIONS = _meter.create_counter(
    "mcp_gateway.http.dropped_connections",
    unit="{connection}",
    description="client connections closed by an http.* bound (attribute reason)",
)

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class _Options:
    stages: bool = False
    capture_arguments: bool = False


_options = _Options()


def current_trace_id() -> str | None:
    """The 32-hex-digit trace id of the current span, or None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def current_span_id() -> str | None:
    """The 16-hex-digit id of the current span, or None."""
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else None


def inject_traceparent(headers: CarrierT) -> None:
    """Add W3C ``traceparent`` (and ``tracestate``) for the current span; never baggage."""
    _PROPAGATOR.inject(headers)


class CallObserver(Protocol):
    """Told of every call's end (``metrics.GatewayMetrics``): its catalog, outcome and stage timings in seconds."""

    def call_finished(self, catalog: str, outcome: str, stages: Sequence[tuple[str, float]], total: float) -> None: ...


class CallTimer:
    """Stage timings of one call, put on the SDK's server span (and handed to ``observer``) when the call ends."""

    __slots__ = ("marks", "observer", "started")

    def __init__(self, observer: CallObserver | None = None) -> None:
        self.started = time.time_ns()
        self.marks: list[tuple[str, int]] = []
        self.observer = observer

    def mark(self, stage: str) -> None:
        """The stage ``stage`` ends now."""
        self.marks.append((stage, time.time_ns()))

    def finish(
        self, attributes: Mapping[str, Any], *, error_type: str | None, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """Annotate the current span, record the call's metrics and, with ``detail: stages``, stage spans."""
        ended = time.time_ns()
        denied = error_type is not None and attributes.get(ATTR_DECISION) != "allow"
        metric_attributes = {ATTR_CATALOG: attributes.get(ATTR_CATALOG) or "", ATTR_OUTCOME: error_type or "ok"}
        CALLS.add(1, metric_attributes)
        if denied:
            DENIALS.add(1, metric_attributes)
        DURATION.record((ended - self.started) / 1e9, metric_attributes)
        if self.observer is not None:
            self._observe(self.observer, metric_attributes[ATTR_CATALOG], error_type or "ok", ended)
        span = trace.get_current_span()
        if not span.is_recording():
            return
        values = {key: value for key, value in attributes.items() if value is not None}
        previous = self.started
        for stage, at in self.marks:
            values[f"{STAGE_PREFIX}{stage}.ms"] = round((at - previous) / 1e6, 4)
            previous = at
        if error_type is not None:
            values[ATTR_ERROR_CODE] = error_type
        if arguments is not None and _options.capture_arguments:
            import json

            values[ATTR_ARGUMENTS] = json.dumps(arguments, sort_keys=True, default=str)[:4096]
        span.set_attributes(values)
        if _options.stages:
            previous = self.started
            for stage, at in self.marks:
                tracer.start_span(f"mcp_gateway.{stage}", start_time=previous).end(end_time=at)
                previous = at

    def _observe(self, observer: CallObserver, catalog: str, outcome: str, ended: int) -> None:
        stages, previous = [], self.started
        for stage, at in self.marks:
            stages.append((stage, (at - previous) / 1e9))
            previous = at
        observer.call_finished(catalog, outcome, stages, (ended - self.started) / 1e9)


class _BoundedSpanProcessor(SpanProcessor):
    """Queue finished spans for a worker thread that exports them; when the queue is full, drop and count.

    The SDK's ``BatchSpanProcessor`` also drops when full, but counts drops only through its internal metrics,
    which are switched on by an environment variable; the gateway needs the count unconditionally.
    """

    def __init__(self, exporter: SpanExporter, *, max_queue_size: int, delay: float, max_batch: int = 512) -> None:
        self._exporter = exporter
        self._max = max_queue_size
        self._delay = delay
        self._max_batch = max_batch
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="mcp-gateway-span-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        if self._stopped or len(self._queue) >= self._max:
            self.dropped += 1
            DROPPED.add(1)
            return
        self._queue.append(span)
        if len(self._queue) >= self._max_batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._export()

    def _export(self) -> None:
        with self._export_lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                try:
                    self._exporter.export(batch)
                except Exception:  # an exporter failure must never reach a caller
                    logger.warning("span export failed; %d spans lost", len(batch), exc_info=True)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._export()
        return True

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=self._delay + 1)
        self._export()
        self._exporter.shutdown()


@dataclass
class Telemetry:
    """The installed providers; :meth:`shutdown` flushes what it can within the export timeout."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider | None  # None when no metric reader is configured
    processor: _BoundedSpanProcessor | None

    @property
    def dropped_spans(self) -> int:
        return self.processor.dropped if self.processor is not None else 0

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=2_000)


_installed: Telemetry | None = None


def setup_telemetry(
    settings: Settings, *, span_exporter: SpanExporter | None = None, readers: Sequence[MetricReader] = ()
) -> Telemetry:
    """Install the process-wide tracer and meter providers (once; later calls return the first).

    ``span_exporter`` and ``readers`` replace the OTLP exporters (tests pass in-memory ones).
    """
    global _installed
    if _installed is not None:
        return _installed
    from mcp_gateway import __version__
    from mcp_gateway.egress import guarded_requests_session

    config = settings.telemetry
    _options.stages = config.detail == "stages"
    _options.capture_arguments = config.capture_arguments
    resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
    metric_readers = list(readers)
    base = (config.otlp_endpoint or "").rstrip("/")
    exporting = span_exporter is not None or bool(base)
    # Nothing exports: ids only (see the module docstring). A caller's sampled context is still honoured, so
    # backends that trace on their own keep the caller's sampling decision; only then is a span recorded.
    sampler = None if exporting else ParentBased(root=StaticSampler(Decision.DROP))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    if span_exporter is None and base:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(
            endpoint=f"{base}/v1/traces",
            timeout=config.export_timeout,
            session=guarded_requests_session(settings.egress),
        )
        metric_exporter = OTLPMetricExporter(
            endpoint=f"{base}/v1/metrics",
            timeout=config.export_timeout,
            session=guarded_requests_session(settings.egress),
        )
        metric_readers.append(
            PeriodicExportingMetricReader(
                metric_exporter,
                export_interval_millis=config.metric_interval * 1000,
                export_timeout_millis=config.export_timeout * 1000,
            )
        )
    processor = None
    if span_exporter is not None:
        processor = _BoundedSpanProcessor(
            span_exporter, max_queue_size=config.max_queue_size, delay=config.schedule_delay
        )
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=metric_readers) if metric_readers else None
    trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
    _installed = Telemetry(tracer_provider, meter_provider, processor)
    return _installed


def client_span(name: str, attributes: Mapping[str, Any]) -> trace.Span:
    """Start a CLIENT child span for outbound work (end it yourself, or use it as a context manager)."""
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=dict(attributes))


def fail_span(span: trace.Span, error_type: str) -> None:
    """Mark ``span`` failed with ``error.type`` (the stable code, never an internal message)."""
    span.set_attribute(ATTR_ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))


# GenAI semantic conventions name the completion operation "text_completion".
_GEN_AI_OPERATIONS = {"chat": "chat", "completion": "text_completion", "embeddings": "embeddings"}


@contextmanager
def model_span(operation: str, model: str, attributes: Mapping[str, Any]) -> Iterator[trace.Span]:
    """The current CLIENT span for one request to a model endpoint, named ``{operation} {model}`` as the GenAI
    conventions ask; ``traceparent`` injected inside it names this span as the parent."""
    name = _GEN_AI_OPERATIONS.get(operation, operation)
    values = {ATTR_OPERATION: name, ATTR_REQUEST_MODEL: model, **attributes}
    with tracer.start_as_current_span(
        f"{name} {model}", kind=SpanKind.CLIENT, attributes=values, record_exception=False
    ) as span:
        yield span


def record_usage(span: trace.Span, usage: Mapping[str, int] | None) -> None:
    """Token counts, where the endpoint reported them, as ``gen_ai.usage.*``."""
    if not usage:
        return
    if "prompt_tokens" in usage:
        span.set_attribute(ATTR_USAGE_INPUT_TOKENS, usage["prompt_tokens"])
    if "completion_tokens" in usage:
        span.set_attribute(ATTR_USAGE_OUTPUT_TOKENS, usage["completion_tokens"])
