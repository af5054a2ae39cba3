"""A few plain lines per report, side by side per deployment: what `fathom demo` prints."""

from __future__ import annotations

from collections.abc import Sequence

from fathom.report import formatting as fmt
from fathom.report.compare import median_tps
from fathom.report.model import DeploymentReport, Report, Verdict


def summary_lines(report: Report) -> list[str]:
    """Per deployment: tokens/s, TTFT p50, quality per probe; then the verdict."""
    window = report.window
    head = (
        f"Fathom report {fmt.when(window.start)} to {fmt.when(window.end)} "
        f"({fmt.span(window.span)})"
    )
    if not report.has_data:
        return [head, "no data in this period: nothing was measured"]
    probes = sorted({q.probe for dep in report.deployments for q in dep.quality})
    rows = [["deployment", "tokens/s p50", "TTFT p50", *probes]]
    rows += [_row(dep, probes) for dep in report.deployments]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return [head, *table, *verdict_lines(report.verdicts)]


def _row(dep: DeploymentReport, probes: Sequence[str]) -> list[str]:
    ttft = dep.speed.metric("ttft_ms")
    ttft_p50 = ttft.percentiles[0].current if ttft and ttft.percentiles else None
    cells = [dep.name, fmt.value(median_tps(dep), "tok/s"), fmt.value(ttft_p50, "ms")]
    for probe in probes:
        q = dep.probe(probe)
        if q is None or q.current.mean is None:
            cells.append(f"{fmt.MISSING} (n={q.current.n})" if q else fmt.MISSING)
            continue
        text = fmt.value(q.current.mean)
        if q.pass_rate is not None and q.pass_rate.rate is not None:
            text += f" (pass {fmt.pct(q.pass_rate.rate)})"
        cells.append(text)
    return cells


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per degraded deployment, or one saying there is none."""
    if not verdicts:
        return ["verdict: no deployment trades quality for speed (no faster one scores worse)"]
    return [f"verdict: {describe(v)}" for v in verdicts]


def describe(verdict: Verdict) -> str:
    """'m / q2 is degraded: 2.25x the tokens/s of m / fp16 but worse on consistency (...)'."""
    worse = ", ".join(
        f"{d.probe} ({fmt.value(d.score)} vs {fmt.value(d.reference_score)})"
        for d in verdict.worse_on
    )
    return (
        f"{verdict.degraded} is degraded: {verdict.speedup:.2f}x the tokens/s of "
        f"{verdict.reference} but worse on {worse}"
    )
