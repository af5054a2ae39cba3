"""The figures of a report, as frozen values: what the renderers draw and the JSON form holds.

Field names and nesting are the JSON structure (see render_json.py): rename nothing lightly.
A figure that could not be measured (too few samples) is None, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Window:
    """The period reported on, [start, end), and the same span just before it."""

    start: datetime
    end: datetime
    previous_start: datetime

    @property
    def span(self) -> timedelta:
        """Length of the period."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Percentile:
    """One percentile of a speed metric in this period and the previous one."""

    p: float  # 50, 90, 99 (or 10, 1 for tokens/s: the slow tail)
    current: float | None
    previous: float | None
    change_pct: float | None  # (current - previous) / previous * 100


@dataclass(frozen=True, slots=True)
class SpeedMetric:
    """Percentiles of one per-request speed figure over user requests."""

    name: str  # 'ttft_ms', 'ttfa_ms', 'itl_ms', 'decode_tps'
    label: str
    unit: str
    better: str  # 'lower' or 'higher'
    n: int  # requests with this figure in the period
    n_previous: int
    percentiles: tuple[Percentile, ...]


@dataclass(frozen=True, slots=True)
class Speed:
    """User traffic of one deployment: counts and speed percentiles."""

    requests: int
    errors: int
    previous_requests: int
    previous_errors: int
    metrics: tuple[SpeedMetric, ...]

    def metric(self, name: str) -> SpeedMetric | None:
        """The metric called `name`, if reported."""
        return next((m for m in self.metrics if m.name == name), None)


@dataclass(frozen=True, slots=True)
class Estimate:
    """Mean score of a probe with its confidence interval (normal approximation)."""

    n: int
    mean: float | None  # None when n is below the report's minimum
    sd: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class PassRate:
    """Share of pass/fail results that passed, with a Wilson score interval."""

    n: int
    passed: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class ProbeQuality:
    """One probe's scores for one deployment, this period against the previous one."""

    probe: str
    current: Estimate
    previous: Estimate
    change: float | None  # current mean - previous mean
    significant: bool  # the change is beyond the confidence level (two-sample z)
    pass_rate: PassRate | None  # None when the probe gives no pass/fail results
    previous_pass_rate: PassRate | None


@dataclass(frozen=True, slots=True)
class DeploymentReport:
    """Speed and quality of one (model, deployment)."""

    model: str
    deployment: str
    speed: Speed
    quality: tuple[ProbeQuality, ...]

    @property
    def name(self) -> str:
        """'model / deployment', as the dashboards name a series."""
        return f"{self.model} / {self.deployment}"

    def probe(self, probe: str) -> ProbeQuality | None:
        """The figures of one probe, if any were recorded."""
        return next((q for q in self.quality if q.probe == probe), None)


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    """A deployment on the quality-against-tokens/s chart."""

    model: str
    deployment: str
    tokens_per_s: float  # p50 of decode tokens/s
    quality: float  # mean score
    low: float
    high: float
    on_front: bool  # no other deployment is at least as fast and as good, and better in one
    previous_tokens_per_s: float | None
    previous_quality: float | None


@dataclass(frozen=True, slots=True)
class ParetoChart:
    """Quality of one probe against tokens/s, one point per measured deployment."""

    probe: str
    points: tuple[ParetoPoint, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """A row of fathom.regressions recorded in the period."""

    ts: datetime
    model: str
    deployment: str
    probe: str
    test: str
    statistic: float
    baseline: float
    current: float
    n_baseline: int
    n_current: int


@dataclass(frozen=True, slots=True)
class CanaryChange:
    """A canary item whose pass rate fell from the previous period to this one."""

    model: str
    deployment: str
    probe: str
    item_id: str
    rate: float
    n: int
    previous_rate: float
    n_previous: int
    change: float  # rate - previous_rate (negative: a drop)
    latest_detail: str  # the probe's `detail` JSON of the latest result, for a look at the answer


@dataclass(frozen=True, slots=True)
class Gap:
    """A series with too few samples to report (figures) or to compare (change)."""

    kind: str  # 'speed', 'quality' or 'pass_rate'
    model: str
    deployment: str
    series: str  # metric or probe name
    n: int
    n_previous: int
    needed: int
    missing: str  # 'figures' (this period too thin) or 'change' (previous period too thin)


@dataclass(frozen=True, slots=True)
class ProbeDrop:
    """A probe on which a deployment scores significantly lower than its reference."""

    probe: str
    score: float
    reference_score: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """A deployment that is faster than another of the same model but scores worse."""

    model: str
    degraded: str  # the faster, worse deployment
    reference: str  # the slower deployment it is compared with
    speedup: float  # p50 tokens/s ratio, degraded / reference
    worse_on: tuple[ProbeDrop, ...]


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """Thresholds of a report; defaults suit a weekly report."""

    min_samples: int = 20  # below this a figure is not measured
    confidence: float = 0.95
    canary_min_results: int = 3  # per item and period, to rank canary drops
    canary_limit: int = 15
    min_speedup: float = 1.05  # 'faster' in a verdict means at least this p50 tokens/s ratio
    # Speed of this tenant's traffic only (fathom.requests.tenant; '' is traffic named by no
    # tenant); None: every tenant. Quality is per deployment, never per tenant.
    tenant: str | None = None

    def speed_scope(self) -> str:
        """Whose traffic the speed figures count, in words."""
        if self.tenant is None:
            return "user traffic only"
        if not self.tenant:
            return "user traffic named by no tenant only"
        return f"user traffic of tenant {self.tenant!r} only"


@dataclass(frozen=True, slots=True)
class NotReasked:
    """Samples of a deployment that the consistency probe could not re-ask: redaction changed
    their stored prompt."""

    model: str
    deployment: str
    samples: int
    redacted: int


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The latest reference audit in the period of one deployment, reference and comparison."""

    model: str
    deployment: str
    reference: str  # the reference deployment's name
    comparison: str  # 'canary', 'mmd' or 'logprob'
    audits: int  # audits recorded in the period
    latest: datetime
    p_value: float | None  # of the latest audit; higher: less evidence of a difference
    verdict: str  # of the latest audit: 'diverged' or 'same'


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `fathom report` shows."""

    generated_at: datetime
    window: Window
    settings: ReportSettings
    has_data: bool
    deployments: tuple[DeploymentReport, ...]
    pareto: tuple[ParetoChart, ...]
    regressions: tuple[Finding, ...]
    canary_drops: tuple[CanaryChange, ...]
    not_measured: tuple[Gap, ...]
    verdicts: tuple[Verdict, ...]
    not_reasked: tuple[NotReasked, ...] = ()
    audits: tuple[AuditVerdict, ...] = ()  # a deployment absent here had no audit: not measured

    def unaudited(self) -> tuple[DeploymentReport, ...]:
        """Deployments reported on with no reference audit in the period."""
        audited = {(a.model, a.deployment) for a in self.audits}
        return tuple(d for d in self.deployments if (d.model, d.deployment) not in audited)
