"""The report as markdown: short enough for a chat webhook, tables for a CI job summary."""

from __future__ import annotations

from collections.abc import Sequence

from fathom.report import formatting as fmt
from fathom.report.model import DeploymentReport, Report
from fathom.report.summary import describe


def _not_reasked(report: Report) -> list[str]:
    return [
        f"- {n.model} / {n.deployment}: {n.redacted} of {n.samples} samples not re-asked for "
        "consistency (redaction changed the stored prompt)"
        for n in report.not_reasked
    ]


def render_markdown(report: Report) -> str:
    """Headline, verdicts, speed and quality tables, regressions, canaries, reference audits,
    gaps."""
    w = report.window
    lines = [
        f"# Fathom report: {fmt.when(w.start)} to {fmt.when(w.end)} ({fmt.span(w.span)})",
        "",
        f"Compared with the {fmt.span(w.span)} before. Speed counts "
        f"{report.settings.speed_scope()}.",
        "",
    ]
    if not report.has_data:
        return "\n".join([*lines, "**No data**: nothing was measured in this period.", ""])
    lines += [f"**Degraded:** {describe(v)}" for v in report.verdicts] or [
        "No deployment is faster at a significant quality cost."
    ]
    lines += ["", "## Speed", "", *_speed(report.deployments)]
    lines += ["", "## Quality", "", *_quality(report)]
    lines += ["", f"## Regressions ({len(report.regressions)})", "", *_regressions(report)]
    lines += ["", "## Canaries that fell most", "", *_canaries(report)]
    lines += ["", "## Divergence from reference", "", *_audits(report)]
    lines += ["", "## Not measured", "", *_gaps(report), *_not_reasked(report), ""]
    return "\n".join(lines)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
) -> list[str]:
    """A table whose first `text_columns` columns are left-aligned text, the rest numbers."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    aligns = ["---"] * text_columns + ["---:"] * (len(headers) - text_columns)
    return [line(headers), "|" + "|".join(aligns) + "|", *(line(row) for row in rows)]


def _with_change(dep: DeploymentReport, name: str, index: int = 0) -> str:
    metric = dep.speed.metric(name)
    if metric is None or index >= len(metric.percentiles):
        return fmt.MISSING
    p = metric.percentiles[index]
    text = fmt.value(p.current, metric.unit)
    return f"{text} ({fmt.signed_pct(p.change_pct)})" if p.change_pct is not None else text


def _speed(deployments: Sequence[DeploymentReport]) -> list[str]:
    headers = ["deployment", "requests", "errors", "TTFT p50", "TTFT p99", "answer p50",
               "ITL p50", "tokens/s p50", "tokens/s p1"]  # fmt: skip
    rows = [
        [
            dep.name, str(dep.speed.requests), str(dep.speed.errors),
            _with_change(dep, "ttft_ms"), _with_change(dep, "ttft_ms", 2),
            _with_change(dep, "ttfa_ms"), _with_change(dep, "itl_ms"),
            _with_change(dep, "decode_tps"),
            _with_change(dep, "decode_tps", 2),
        ]
        for dep in deployments
    ]  # fmt: skip
    return _table(headers, rows)


def _quality(report: Report) -> list[str]:
    conf = f"{report.settings.confidence:.0%}"
    headers = ["deployment", "probe", "n", f"mean [{conf} CI]", "change", "pass rate [Wilson]"]
    rows = []
    for dep in report.deployments:
        for q in dep.quality:
            change = fmt.signed(q.change) + (" *" if q.significant else "")
            rate = q.pass_rate
            rows.append([
                dep.name, q.probe, str(q.current.n),
                f"{fmt.value(q.current.mean)} {fmt.interval(q.current.low, q.current.high)}",
                change,
                f"{fmt.pct(rate.rate)} {fmt.interval(rate.low, rate.high, True)}" if rate else "",
            ])  # fmt: skip
    if not rows:
        return ["No quality results in the period."]
    return [*_table(headers, rows, text_columns=2), "", f"\\* significant at {conf}"]


def _regressions(report: Report) -> list[str]:
    if not report.regressions:
        return ["None recorded."]
    rows = [
        [fmt.when(f.ts), f"{f.model} / {f.deployment}", f.probe, f.test,
         f"{fmt.value(f.baseline)} -> {fmt.value(f.current)}", f"{f.n_baseline}/{f.n_current}"]
        for f in report.regressions
    ]  # fmt: skip
    return _table(["recorded", "deployment", "probe", "test", "score", "n"], rows, 4)


def _canaries(report: Report) -> list[str]:
    if not report.canary_drops:
        return ["No canary item's pass rate fell."]
    rows = [
        [f"{c.model} / {c.deployment}", c.probe, c.item_id, f"{fmt.pct(c.rate)} (n={c.n})",
         f"{fmt.pct(c.previous_rate)} (n={c.n_previous})"]
        for c in report.canary_drops
    ]  # fmt: skip
    return _table(["deployment", "probe", "item", "pass rate", "previous"], rows, 3)


def _audits(report: Report) -> list[str]:
    rows = [
        [f"{a.model} / {a.deployment}", a.reference, a.comparison, a.verdict,
         fmt.p_value(a.p_value), str(a.audits), fmt.when(a.latest)]
        for a in report.audits
    ]  # fmt: skip
    headers = ["deployment", "reference", "comparison", "verdict", "p-value", "audits", "latest"]
    table = _table(headers, rows, text_columns=4) if rows else []
    unaudited = [
        f"- {dep.name}: not measured (no `fathom audit --record` in the period)"
        for dep in report.unaudited()
    ]
    return [*table, *([""] if table and unaudited else []), *unaudited]


def _gaps(report: Report) -> list[str]:
    if not report.not_measured:
        return ["Every series had enough samples."]
    return [
        f"- {g.model} / {g.deployment}: {g.kind} `{g.series}` n={g.n} (previous {g.n_previous}), "
        f"needs {g.needed}: {'no figures' if g.missing == 'figures' else 'no change'}"
        for g in report.not_measured
    ]
