"""A test OTLP/HTTP receiver on 127.0.0.1: decodes what the real exporter sends with ``opentelemetry-proto``.

No OpenTelemetry Collector binary is installable here, so this stands in for one: ``POST /v1/traces`` and
``POST /v1/metrics`` with protobuf bodies, answered as a collector would. ``hold()`` makes it slow (every
request waits until ``release()``), which is how the tests show a stuck collector never blocks a call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    scope: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class OtlpReceiver:
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    requests: int = 0
    _gate: threading.Event = field(default_factory=threading.Event)
    # A condition (over an RLock) so that wait_until wakes on each export instead of polling.
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_until(self, condition: Callable[[], Any], timeout: float = 20) -> Any:
        """Block until ``condition()`` is truthy, checking it again after each export arrives; return its value.

        Raises:
            AssertionError: it is still falsy after ``timeout`` seconds.
        """
        with self._lock:
            value = self._lock.wait_for(condition, timeout)
        if not value:
            raise AssertionError("condition not met in time")
        return value

    def metric_total(self, name: str) -> float:
        with self._lock:
            points = list(self.metrics.get(name, []))
        return float(sum(points))

    def handle(self, path: str, body: bytes) -> bytes:
        self._gate.wait(60)
        with self._lock:
            self.requests += 1
            if path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            self.spans.append(
                                ReceivedSpan(
                                    name=span.name,
                                    trace_id=span.trace_id.hex(),
                                    span_id=span.span_id.hex(),
                                    parent_span_id=span.parent_span_id.hex(),
                                    kind=span.kind,
                                    attributes={item.key: _value(item.value) for item in span.attributes},
                                    scope=scope.scope.name,
                                )
                            )
                self._lock.notify_all()
                return ExportTraceServiceResponse().SerializeToString()
            metrics_request = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in metrics_request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points if kind else []
                        values = [
                            getattr(point, "as_int", 0) or getattr(point, "as_double", 0) or getattr(point, "count", 0)
                            for point in points
                        ]
                        # Cumulative temporality: keep the latest report of each metric.
                        self.metrics[metric.name] = values
            self._lock.notify_all()
            return ExportMetricsServiceResponse().SerializeToString()


@contextmanager
def running_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.release()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = receiver.handle(self.path, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
