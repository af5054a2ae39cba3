"""OpenTelemetry metrics with the GenAI semantic-convention names (v1.41); Prometheus export.

The semconv names, units and advised bucket boundaries live here and nowhere else.

One instrument skips the SDK: `time_per_output_chunk` gets a value per streamed event, and the
SDK cleans and hashes attributes on every record, which held the loop at the end of each
stream while other streams' first chunks waited behind. `ChunkGaps` bins the gaps with one
bisect each and exports the same Prometheus series the SDK would (the cost of both:
`python bench/metrics_cost.py`; figures in docs/measurements.md). For OTLP it hands the same
bins over as an SDK histogram point, added to each export (sidecar.otlp.WithMetrics).
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from sidecar.config import ConfigError
from sidecar.otlp import WithMetrics, otel_resource
from sidecar.record import Record

OPERATION_DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"

# Advised bucket boundaries from the GenAI semantic conventions.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

OPERATION_NAMES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings",
                   "responses": "chat", "messages": "chat"}  # fmt: skip
OTHER_MODEL = "other"


class LabelCap:
    """Keeps label values bounded: past `cap` distinct values, new ones fold into `other`."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        # Non-printable values (control characters, lone surrogates) are hostile, never names.
        if len(self._seen) >= self._cap or len(value) > 128 or not value.isprintable():
            return OTHER_MODEL
        self._seen.add(value)
        return value


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """What the metrics are labelled with, and how many distinct model labels they keep."""

    provider: str = "openai"  # gen_ai.provider.name
    model_label_cap: int = 64  # models past this many share the label 'other'
    # OTLP push beside /metrics: 'metrics', 'traces' (a GenAI span per request), 'all' or
    # 'off'; where to and how come from the standard OTEL_EXPORTER_OTLP_* variables.
    otlp: str = "off"

    def __post_init__(self) -> None:
        if self.otlp not in OTLP_CHOICES:
            raise ConfigError(
                f"otlp={self.otlp!r}: expected one of {', '.join(OTLP_CHOICES)} (env FATHOM_OTLP)"
            )

    @property
    def otlp_metrics(self) -> bool:
        """Whether the instruments are also pushed over OTLP."""
        return self.otlp in ("metrics", "all")

    @property
    def otlp_traces(self) -> bool:
        """Whether each measured request is also sent as a GenAI span."""
        return self.otlp in ("traces", "all")


OTLP_CHOICES = ("off", "metrics", "traces", "all")


@dataclass(frozen=True, slots=True)
class Gauge:
    """A value read at scrape time (queue depths, dropped rows, …)."""

    name: str
    description: str
    read: Callable[[], float]
    counter: bool = False


class Metrics:
    """One MeterProvider with its own Prometheus registry, and an OTLP reader when given an
    exporter (its interval: OTEL_METRIC_EXPORT_INTERVAL); `record()` is called per request."""

    def __init__(
        self, provider_name: str, model_label_cap: int, otlp: MetricExporter | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._tpoc = ChunkGaps(TIME_PER_OUTPUT_CHUNK, TPOT_BUCKETS)
        self.registry.register(self._tpoc)
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        if otlp is not None:
            readers.append(PeriodicExportingMetricReader(WithMetrics(otlp, self._tpoc.points)))
        views = [
            _view(OPERATION_DURATION, DURATION_BUCKETS),
            _view(TOKEN_USAGE, TOKEN_BUCKETS),
            _view(TIME_TO_FIRST_CHUNK, TTFT_BUCKETS),
            _view(SERVER_TIME_TO_FIRST_TOKEN, TTFT_BUCKETS),
            _view(SERVER_TIME_PER_OUTPUT_TOKEN, TPOT_BUCKETS),
        ]
        self._provider = MeterProvider(
            metric_readers=readers, views=views, resource=otel_resource()
        )
        meter = self._provider.get_meter("fathom")
        self._provider_name = provider_name
        self._model = LabelCap(model_label_cap)
        self._deployment = LabelCap(model_label_cap)
        self._duration = meter.create_histogram(OPERATION_DURATION, unit="s")
        self._tokens = meter.create_histogram(TOKEN_USAGE, unit="{token}")
        self._ttfc = meter.create_histogram(TIME_TO_FIRST_CHUNK, unit="s")
        self._ttft = meter.create_histogram(SERVER_TIME_TO_FIRST_TOKEN, unit="s")
        self._tpot = meter.create_histogram(SERVER_TIME_PER_OUTPUT_TOKEN, unit="s")
        self._errors = meter.create_counter("fathom.requests.errors", unit="{request}")
        self._meter = meter

    def record(self, record: Record, gaps_s: Iterable[float] = ()) -> None:
        """Record one finished request (probe and canary traffic carry their own origin)."""
        if record.route not in OPERATION_NAMES:
            return
        attrs: dict[str, str] = {
            "gen_ai.operation.name": OPERATION_NAMES[record.route],
            "gen_ai.provider.name": self._provider_name,
            "gen_ai.request.model": self._model(record.model or "unknown"),
            "fathom.deployment": self._deployment(record.deployment),
            "fathom.origin": record.origin,
            "fathom.tenant": record.tenant,  # capped by the proxy (ProxySettings.tenant_cap)
        }
        if record.error:
            attrs["error.type"] = record.error
            self._errors.add(1, attrs)
        self._duration.record(record.e2e_ms / 1e3, attrs)
        if record.tokens_source != "none":
            self._tokens.record(record.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            self._tokens.record(record.output_tokens, {**attrs, "gen_ai.token.type": "output"})
        if record.ttft_ms is not None:
            self._ttfc.record(record.ttft_ms / 1e3, attrs)
            self._ttft.record(record.ttft_ms / 1e3, attrs)
        self._tpoc.record(gaps_s, attrs)
        if record.decode_tps:
            self._tpot.record(1.0 / record.decode_tps, attrs)

    def observe(self, gauges: Iterable[Gauge]) -> None:
        """Export values read at scrape time, e.g. the writer's queue depth and drop counts."""
        for gauge in gauges:
            callback = _callback(gauge.read)
            if gauge.counter:
                self._meter.create_observable_counter(
                    gauge.name, [callback], description=gauge.description
                )
            else:
                self._meter.create_observable_gauge(
                    gauge.name, [callback], description=gauge.description
                )

    def exposition(self) -> bytes:
        """The Prometheus text exposition of everything recorded so far."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Release the provider (and unregister the Prometheus collector); an OTLP reader
        exports once more first."""
        self._provider.shutdown()


class ChunkGaps(Collector):
    """A seconds histogram aggregated here, exported as the OTel Prometheus exporter names it,
    and as SDK histogram points (`points()`) for OTLP."""

    def __init__(
        self, name: str, buckets: tuple[float, ...], clock: Callable[[], int] = time.time_ns
    ) -> None:
        self._otel_name = name
        self._name = name.replace(".", "_") + "_seconds"
        self._buckets = buckets
        self._les = [repr(float(b)) for b in buckets] + ["+Inf"]  # as the exporter writes them
        # per attribute set: counts per bucket, and [sum, min, max]
        self._series: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}
        self._clock = clock
        self._start_ns = clock()  # cumulative points count from here

    def record(self, values: Iterable[float], attrs: dict[str, str]) -> None:
        key = tuple(sorted(attrs.items()))
        values = values if isinstance(values, list) else list(values)
        if not values:
            return
        counts, stats = self._series.setdefault(
            key, ([0] * len(self._les), [0.0, float("inf"), float("-inf")])
        )
        for value in values:
            counts[bisect_left(self._buckets, value)] += 1
        # The builtins run at C speed: min and max cost next to nothing beside the bisects.
        stats[0] += sum(values)
        stats[1], stats[2] = min(stats[1], min(values)), max(stats[2], max(values))

    def points(self) -> list[Metric]:
        """The histogram so far as one cumulative SDK metric (none before the first gap)."""
        now = self._clock()
        points = []
        # Runs in the OTLP reader's thread: the copy is taken at once (under the GIL); a
        # stream being recorded meanwhile may show in the counts but not yet in the sum.
        for key, (counts, stats) in list(self._series.items()):
            point = HistogramDataPoint(
                attributes=dict(key), start_time_unix_nano=self._start_ns, time_unix_nano=now,
                count=sum(counts), sum=stats[0], bucket_counts=list(counts),
                explicit_bounds=self._buckets, min=stats[1], max=stats[2],
            )  # fmt: skip
            points.append(point)
        if not points:
            return []
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return [Metric(self._otel_name, "", "s", data)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        series = list(self._series.items())
        if not series:
            return
        # Like the exporter: one family over the union of attribute keys, "" where one is absent.
        keys = sorted({k for key, _ in series for k, _ in key})
        labels = [k.replace(".", "_") for k in keys] + list(_SCOPE)
        family = HistogramMetricFamily(self._name, "", labels=labels)
        for key, (counts, stats) in series:
            attrs = dict(key)
            values = [attrs.get(k, "") for k in keys] + list(_SCOPE.values())
            cumulative = list(itertools.accumulate(counts))
            family.add_metric(values, list(zip(self._les, cumulative, strict=True)), stats[0])
        yield family


# The instrumentation-scope labels the OTel exporter puts on every series of ours.
_SCOPE = {"otel_scope_name": "fathom", "otel_scope_schema_url": "", "otel_scope_version": ""}


def _view(name: str, buckets: tuple[float, ...]) -> View:
    return View(
        instrument_name=name,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets),
    )


def _callback(read: Callable[[], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        # float(): some reads are bools (store_up), which OTLP's number points refuse.
        return [Observation(float(read()))]

    return callback
