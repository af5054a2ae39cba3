"""Comparisons across deployments: the quality/speed Pareto front and 'faster but worse'."""

from __future__ import annotations

from collections.abc import Sequence

from fathom.report.model import (
    DeploymentReport,
    ParetoChart,
    ParetoPoint,
    ProbeDrop,
    Verdict,
)
from fathom.report.stats import difference_z


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (speed, quality) points, higher is better in both: is each one undominated?"""
    return [
        not any(
            ox >= x and oy >= y and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        for i, (x, y) in enumerate(points)
    ]


def median_tps(dep: DeploymentReport, previous: bool = False) -> float | None:
    """p50 decode tokens/s of a deployment's user traffic, if measured."""
    metric = dep.speed.metric("decode_tps")
    if metric is None or not metric.percentiles:
        return None
    median = metric.percentiles[0]
    return median.previous if previous else median.current


def pareto_charts(deployments: Sequence[DeploymentReport]) -> tuple[ParetoChart, ...]:
    """One chart per probe over the deployments with both tokens/s and a mean score."""
    probes = sorted({q.probe for dep in deployments for q in dep.quality})
    charts = []
    for probe in probes:
        measured = [
            (dep, tps, q)
            for dep in deployments
            if (tps := median_tps(dep)) is not None
            and (q := dep.probe(probe)) is not None
            and q.current.mean is not None
        ]
        if not measured:
            continue
        front = pareto_front([(tps, q.current.mean or 0.0) for _, tps, q in measured])
        points = tuple(
            ParetoPoint(
                dep.model, dep.deployment, tps, q.current.mean or 0.0,
                q.current.low or 0.0, q.current.high or 0.0, on,
                median_tps(dep, previous=True), q.previous.mean,
            )
            for (dep, tps, q), on in zip(measured, front, strict=True)
        )  # fmt: skip
        charts.append(ParetoChart(probe, points))
    return tuple(charts)


def find_verdicts(
    deployments: Sequence[DeploymentReport], z: float, min_speedup: float
) -> tuple[Verdict, ...]:
    """Pairs of one model's deployments where the faster one scores significantly worse."""
    verdicts = []
    for fast in deployments:
        for slow in deployments:
            if fast is slow or fast.model != slow.model:
                continue
            fast_tps, slow_tps = median_tps(fast), median_tps(slow)
            if fast_tps is None or not slow_tps or fast_tps < slow_tps * min_speedup:
                continue
            drops = _drops(fast, slow, z)
            if drops:
                verdict = Verdict(fast.model, fast.name, slow.name, fast_tps / slow_tps, drops)
                verdicts.append(verdict)
    return tuple(verdicts)


def _drops(fast: DeploymentReport, slow: DeploymentReport, z: float) -> tuple[ProbeDrop, ...]:
    drops = []
    for q in fast.quality:
        ref = slow.probe(q.probe)
        if ref is None:
            continue
        diff = difference_z(q.current, ref.current)
        if diff is not None and diff <= -z and q.current.mean is not None:
            drops.append(ProbeDrop(q.probe, q.current.mean, ref.current.mean or 0.0))
    return tuple(drops)
