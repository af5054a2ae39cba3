"""A real OTLP receiver for the tests: OTLP/HTTP (aiohttp) or OTLP/gRPC (grpcio) on a free port
of 127.0.0.1, decoding what it gets with `opentelemetry.proto` and keeping it for assertions."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.servers import serving

ExportMetrics = metrics_service_pb2.ExportMetricsServiceRequest
ExportTraces = trace_service_pb2.ExportTraceServiceRequest


@dataclass
class Received:
    """Every export request the receiver got, decoded, in arrival order."""

    metrics: list[ExportMetrics] = field(default_factory=list)
    traces: list[ExportTraces] = field(default_factory=list)

    def spans(self) -> list[Span]:
        """All spans received."""
        return [
            span
            for request in self.traces
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        """The points of histogram `name` in the latest export that has it (cumulative: the
        latest holds everything so far)."""
        for request in reversed(self.metrics):
            found = [m for m in _metrics(request) if m.name == name]
            if found:
                return [point for metric in found for point in metric.histogram.data_points]
        return []

    def names(self) -> set[str]:
        """The metric names received so far."""
        return {m.name for request in self.metrics for m in _metrics(request)}


def _metrics(request: ExportMetrics) -> Iterator[Metric]:
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def attrs(attributes: Any) -> dict[str, Any]:
    """OTLP attributes (repeated KeyValue) as a plain dict."""
    return {kv.key: _value(kv.value) for kv in attributes if isinstance(kv, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver (POST /v1/metrics, /v1/traces); its base URL and what it got."""
    received = Received()

    async def metrics(request: web.Request) -> web.Response:
        received.metrics.append(ExportMetrics.FromString(await _body(request)))
        reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    async def traces(request: web.Request) -> web.Response:
        received.traces.append(ExportTraces.FromString(await _body(request)))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_post("/v1/traces", traces)
    async with serving(app) as url:
        yield url, received


async def _body(request: web.Request) -> bytes:
    body = await request.read()
    return gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(self, request: ExportMetrics, context: Any) -> Any:
        self._received.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(self, request: ExportTraces, context: Any) -> Any:
        self._received.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.asynccontextmanager
async def grpc_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver (the collector's MetricsService and TraceService); its endpoint
    (http://: plaintext, as the exporters infer from the scheme) and what it got."""
    received = Received()
    server = grpc.aio.server()
    # The generated *_pb2_grpc modules carry no annotations.
    add_metrics = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
    add_traces = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
    add_metrics(_Metrics(received), server)  # type: ignore[no-untyped-call]
    add_traces(_Traces(received), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await server.stop(None)
