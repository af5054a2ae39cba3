"""Read a period and the one before it from the store and turn the rows into a Report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fathom.report import queries
from fathom.report.compare import find_verdicts, pareto_charts
from fathom.report.model import (
    AuditVerdict,
    CanaryChange,
    DeploymentReport,
    Estimate,
    Finding,
    Gap,
    NotReasked,
    PassRate,
    Percentile,
    ProbeQuality,
    Report,
    ReportSettings,
    Speed,
    SpeedMetric,
    Window,
)
from fathom.report.stats import change_pct, difference_z, mean_estimate, wilson, z_value
from probes import detect_sql

if TYPE_CHECKING:
    from sidecar.store.client import Store

Progress = Callable[[str], None]
Key = tuple[str, str]  # (model, deployment)
Rows = Sequence[tuple[Any, ...]]


class SchemaMissing(Exception):
    """The store lacks Fathom's tables; the message says which and what to run."""


def build_report_sync(
    store: Store,
    now: datetime,
    since: timedelta,
    settings: ReportSettings | None = None,
    progress: Progress | None = None,
) -> Report:
    """`build_report` for blocking callers (CLIs, tests): runs the queries in turn."""
    step = progress or (lambda _message: None)
    settings = settings or ReportSettings()
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware (UTC) time")
    window = Window(now - since, now, now - 2 * since)
    step(f"checking the schema of {store.url.safe}")
    check_schema(store)
    params = queries.window_parameters(window)
    step("reading speed of user traffic (TTFT, ITL, decode tokens/s percentiles)")
    speed = store.query_sync(queries.SPEED, queries.speed_parameters(window, settings.tenant))
    step("reading quality scores and pass rates per probe, and reference audits")
    quality = store.query_sync(queries.QUALITY, params)
    audits = tuple(audit_verdict(row) for row in store.query_sync(queries.AUDITS, params))
    step("ranking canaries whose pass rate fell most")
    canary_params = queries.canary_parameters(
        window, settings.canary_min_results, settings.canary_limit
    )
    canaries = store.query_sync(queries.CANARY_DROPS, canary_params)
    step("reading regressions recorded in the period")
    findings = store.query_sync(
        detect_sql.FINDINGS, detect_sql.findings_parameters(window.start, window.end)
    )
    step("counting samples not re-asked because redaction changed their prompt")
    not_reasked = store.query_sync(queries.NOT_REASKED, queries.not_reasked_parameters(window))
    step("computing intervals, week-over-week changes and the Pareto front")
    report = assemble(now, window, settings, speed, quality, canaries, findings)
    return dataclasses.replace(
        report,
        has_data=report.has_data or bool(audits),
        not_reasked=tuple(NotReasked(*r) for r in not_reasked),
        audits=audits,
    )


async def build_report(
    store: Store,
    now: datetime,
    since: timedelta,
    settings: ReportSettings | None = None,
    progress: Progress | None = None,
) -> Report:
    """The report on [now - since, now) against the `since` before it, off the event loop."""
    return await store.call(lambda s: build_report_sync(s, now, since, settings, progress))


def check_schema(store: Store) -> None:
    """Raise SchemaMissing unless the tables the report reads exist."""
    present = {row[0] for row in store.query_sync(queries.EXISTING_TABLES)}
    missing = [t for t in queries.TABLES if t not in present]
    if missing:
        names = ", ".join(f"fathom.{t}" for t in missing)
        raise SchemaMissing(
            f"{store.url.safe} has no {names}: run `fathom schema apply --store URL` first"
        )


def assemble(
    now: datetime,
    window: Window,
    settings: ReportSettings,
    speed_rows: Rows,
    quality_rows: Rows,
    canary_rows: Rows,
    finding_rows: Rows,
) -> Report:
    """The Report from the rows of the four queries."""
    z = z_value(settings.confidence)
    speeds = _speeds(speed_rows, settings.min_samples)
    qualities = _qualities(quality_rows, z, settings.min_samples)
    deployments = tuple(
        DeploymentReport(
            model, deployment, speeds.get(key) or _speed(None, None, settings.min_samples),
            qualities.get(key, ()),
        )
        for key in sorted(set(speeds) | set(qualities))
        for model, deployment in [key]
    )  # fmt: skip
    findings = tuple(Finding(*row) for row in reversed(finding_rows))  # newest first
    return Report(
        generated_at=now,
        window=window,
        settings=settings,
        has_data=bool(deployments or findings),
        deployments=deployments,
        pareto=pareto_charts(deployments),
        regressions=findings,
        canary_drops=tuple(_canary(row) for row in canary_rows),
        not_measured=gaps(deployments, settings.min_samples),
        verdicts=find_verdicts(deployments, z, settings.min_speedup),
    )


def _speeds(rows: Rows, min_n: int) -> dict[Key, Speed]:
    by_key: dict[Key, dict[bool, tuple[Any, ...]]] = {}
    for row in rows:
        by_key.setdefault((row[0], row[1]), {})[bool(row[2])] = row[3:]
    return {
        key: _speed(periods.get(True), periods.get(False), min_n) for key, periods in by_key.items()
    }


def _speed(now: tuple[Any, ...] | None, before: tuple[Any, ...] | None, min_n: int) -> Speed:
    metrics = tuple(
        _metric(spec, i, now, before, min_n) for i, spec in enumerate(queries.SPEED_METRICS)
    )
    return Speed(
        int(now[0]) if now else 0,
        int(now[1]) if now else 0,
        int(before[0]) if before else 0,
        int(before[1]) if before else 0,
        metrics,
    )


def _metric(
    spec: queries.MetricSpec,
    index: int,
    now: tuple[Any, ...] | None,
    before: tuple[Any, ...] | None,
    min_n: int,
) -> SpeedMetric:
    # After requests and errors, each metric has (n, quantiles) columns.
    def figures(row: tuple[Any, ...] | None) -> tuple[int, list[float | None]]:
        if row is None:
            return 0, [None] * len(spec.levels)
        n, values = int(row[2 + 2 * index]), row[3 + 2 * index]
        return n, [float(v) if n >= max(min_n, 1) else None for v in values]

    n, current = figures(now)
    n_previous, previous = figures(before)
    percentiles = tuple(
        Percentile(round(level * 100, 3), c, p, change_pct(c, p))
        for level, c, p in zip(spec.levels, current, previous, strict=True)
    )
    return SpeedMetric(spec.name, spec.label, spec.unit, spec.better, n, n_previous, percentiles)


def _qualities(rows: Rows, z: float, min_n: int) -> dict[Key, tuple[ProbeQuality, ...]]:
    by_series: dict[tuple[str, str, str], dict[bool, tuple[Any, ...]]] = {}
    for model, deployment, probe, current, *figures in rows:
        by_series.setdefault((model, deployment, probe), {})[bool(current)] = tuple(figures)
    out: dict[Key, list[ProbeQuality]] = {}
    for (model, deployment, probe), periods in sorted(by_series.items()):
        quality = _probe(probe, periods.get(True), periods.get(False), z, min_n)
        out.setdefault((model, deployment), []).append(quality)
    return {key: tuple(values) for key, values in out.items()}


def _probe(
    probe: str, now: tuple[Any, ...] | None, before: tuple[Any, ...] | None, z: float, min_n: int
) -> ProbeQuality:
    def estimate(row: tuple[Any, ...] | None) -> Estimate:
        if row is None:
            return Estimate(0, None, None, None, None)
        return mean_estimate(int(row[0]), float(row[1]), float(row[2]), z, min_n)

    def rate(row: tuple[Any, ...] | None) -> PassRate | None:
        return wilson(int(row[4]), int(row[3]), z, min_n) if row and row[3] else None

    current, previous = estimate(now), estimate(before)
    diff = difference_z(current, previous)
    change = (
        current.mean - previous.mean
        if current.mean is not None and previous.mean is not None
        else None
    )
    has_rates = bool((now and now[3]) or (before and before[3]))
    zero = PassRate(0, 0, None, None, None)
    return ProbeQuality(
        probe,
        current,
        previous,
        change,
        diff is not None and abs(diff) >= z,
        (rate(now) or zero) if has_rates else None,
        (rate(before) or zero) if has_rates else None,
    )


def audit_verdict(row: tuple[Any, ...]) -> AuditVerdict:
    """An AUDITS row as the latest verdict of its (model, deployment, reference, comparison)."""
    model, deployment, reference, comparison, audits, latest_ms, p_value, passed = row
    # Scores are Float32: 6 significant digits give back the p-value written (0.8, not
    # 0.800000011920929).
    p = float(f"{float(p_value):.6g}")
    return AuditVerdict(
        model, deployment, reference, comparison, int(audits),
        datetime.fromtimestamp(int(latest_ms) / 1000, UTC), p if math.isfinite(p) else None,
        "diverged" if passed == 0 else "same",
    )  # fmt: skip


def _canary(row: tuple[Any, ...]) -> CanaryChange:
    model, deployment, probe, item_id, rate, n, previous_rate, n_previous, detail = row
    return CanaryChange(
        model, deployment, probe, item_id, float(rate), int(n),
        float(previous_rate), int(n_previous), float(rate) - float(previous_rate), detail[:500],
    )  # fmt: skip


def gaps(deployments: Sequence[DeploymentReport], min_n: int) -> tuple[Gap, ...]:
    """Series whose figures (this period) or change (previous period) had too few samples."""
    out: list[Gap] = []

    def note(kind: str, dep: DeploymentReport, series: str, n: int, n_prev: int) -> None:
        if n < min_n or n_prev < min_n:
            missing = "figures" if n < min_n else "change"
            out.append(Gap(kind, dep.model, dep.deployment, series, n, n_prev, min_n, missing))

    optional = {spec.name for spec in queries.SPEED_METRICS if spec.optional}
    for dep in deployments:
        for metric in dep.speed.metrics:
            if not (metric.name in optional and metric.n == metric.n_previous == 0):
                note("speed", dep, metric.name, metric.n, metric.n_previous)
        for q in dep.quality:
            note("quality", dep, q.probe, q.current.n, q.previous.n)
            if q.pass_rate is not None and q.previous_pass_rate is not None:
                note("pass_rate", dep, q.probe, q.pass_rate.n, q.previous_pass_rate.n)
    return tuple(out)
