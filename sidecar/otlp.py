"""OTLP exporters for metrics and spans, chosen by the standard OpenTelemetry variables.

The SDK's exporters read their own settings (OTEL_EXPORTER_OTLP_[METRICS_|TRACES_]ENDPOINT,
_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE, ...); Fathom only picks the class, from
OTEL_EXPORTER_OTLP_[METRICS_|TRACES_]PROTOCOL as the specification says: the signal's own
variable first, then the general one, then `http/protobuf`. The gRPC exporters load grpcio,
so they are imported only when asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from sidecar.config import ConfigError

PROTOCOLS = ("http/protobuf", "grpc")
SCOPE = "fathom"  # the meter's and the tracer's instrumentation scope


def protocol(signal: str, env: Mapping[str, str]) -> str:
    """The OTLP protocol for `signal` ('metrics' or 'traces') that `env` asks for."""
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    name = own if env.get(own) else "OTEL_EXPORTER_OTLP_PROTOCOL"
    value = env.get(name, "").strip() or "http/protobuf"
    if value not in PROTOCOLS:
        raise ConfigError(
            f"{name}={value!r}: Fathom exports OTLP as {' or '.join(PROTOCOLS)}; set one of"
            " those (http/json is not offered by the Python exporters)"
        )
    return value


def metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    """An OTLP metric exporter over the protocol `env` names (it reads its endpoint itself)."""
    if protocol("metrics", env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def span_exporter(env: Mapping[str, str]) -> SpanExporter:
    """An OTLP span exporter over the protocol `env` names (it reads its endpoint itself)."""
    if protocol("traces", env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def otel_resource() -> Resource:
    """The resource of Fathom's telemetry: what OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    say (the SDK reads them), with service.name 'fathom' where they name no service."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "fathom"}))
    return resource


class WithMetrics(MetricExporter):
    """An exporter that adds metrics aggregated outside the SDK (`extra()`) to the SDK's own
    in Fathom's scope, then hands the lot to `inner`."""

    def __init__(self, inner: MetricExporter, extra: Callable[[], Sequence[Metric]]) -> None:
        # The reader asks the exporter for its temporality and aggregation: the inner one's.
        super().__init__(inner._preferred_temporality, inner._preferred_aggregation)
        self._inner = inner
        self._extra = extra

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export the SDK's metrics with the extra ones."""
        merged = _merged(metrics_data, self._extra())
        return self._inner.export(merged, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the inner exporter."""
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _merged(data: MetricsData, extra: Sequence[Metric]) -> MetricsData:
    """`data` with `extra` in Fathom's scope of its first resource (the provider has one)."""
    if not extra or not data.resource_metrics:
        return data  # no resource without an SDK point; SDK points come with every record
    first, *rest = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scope in enumerate(scopes):
        if scope.scope.name == SCOPE:
            scopes[i] = dataclasses.replace(scope, metrics=[*scope.metrics, *extra])
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE), list(extra), ""))
    return MetricsData([dataclasses.replace(first, scope_metrics=scopes), *rest])
