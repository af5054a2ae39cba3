"""The report as one self-contained HTML page: inline CSS and SVG, no script, no fetch."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from fathom.report import charts
from fathom.report import formatting as fmt
from fathom.report.compare import median_tps
from fathom.report.model import DeploymentReport, Report, SpeedMetric
from fathom.report.summary import describe

Cell = str | tuple[str, str]  # text, or (text, css class); text is escaped when written

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1d2330;
 max-width:1180px;margin:24px auto;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;padding-bottom:4px;
 border-bottom:1px solid #dde1e8}h3{font-size:15px;margin:20px 0 6px}
table{border-collapse:collapse;margin:6px 0 14px;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #e6e8ee;text-align:right;vertical-align:top}
th{font-weight:600;background:#f5f6f8}th:first-child,td:first-child{text-align:left}
th.l,td.l{text-align:left}.worse{color:#b3261e;font-weight:600}.better{color:#1b7f3b;font-weight:600}
.muted,.ci{color:#6b7280}.ci{font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:12px 24px}
figure{margin:0}
.verdict{background:#fff4e5;border-left:4px solid #e69f00;padding:8px 12px;margin:8px 0}
.ok{background:#eef7f0;border-left:4px solid #1b7f3b;padding:8px 12px;margin:8px 0}
.nodata{background:#f5f6f8;border-left:4px solid #9aa1ad;padding:12px;margin:16px 0}
code{font-size:12px;color:#374151;word-break:break-all}dt{font-weight:600}dd{margin:0 0 6px 16px}
"""


def render_html(report: Report) -> str:
    """The whole page."""
    w = report.window
    title = f"Fathom report {fmt.when(w.start)} to {fmt.when(w.end)}"
    parts = [_header(report)]
    if report.has_data:
        parts += [
            _overview(report),
            _pareto(report),
            _speed_charts(report),
            _quality_charts(report),
            *(_deployment(dep) for dep in report.deployments),
            _regressions(report),
            _canaries(report),
            _audits(report),
            _not_measured(report),
        ]
    else:
        parts.append(
            '<p class="nodata"><b>No data.</b> The store holds no user requests, quality results '
            f"or regressions between {fmt.when(w.previous_start)} and {fmt.when(w.end)}: "
            "nothing was measured. Is the proxy writing to this store?</p>"
        )
    parts.append(_definitions(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], text_columns: int = 1) -> str:
    """A table whose first `text_columns` columns are left-aligned text, the rest numbers."""

    def cell(tag: str, index: int, content: Cell) -> str:
        text, cls = (content, "") if isinstance(content, str) else content
        cls = f"{cls} l".strip() if index < text_columns else cls
        attr = f' class="{cls}"' if cls else ""
        return f"<{tag}{attr}>{escape(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        f"<tr>{''.join(cell('td', i, c) for i, c in enumerate(row))}</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _header(report: Report) -> str:
    w = report.window
    return (
        "<h1>Fathom: quality against speed</h1>"
        f'<p class="muted">Period {fmt.when(w.start)} to {fmt.when(w.end)} '
        f"({fmt.span(w.span)}), compared with the {fmt.span(w.span)} before it "
        f"(from {fmt.when(w.previous_start)}). Generated {fmt.when(report.generated_at)}. "
        f"Speed figures count {escape(report.settings.speed_scope())}.</p>"
    )


def _overview(report: Report) -> str:
    verdicts = "".join(
        f'<p class="verdict"><b>Degraded:</b> {escape(describe(v))}.</p>' for v in report.verdicts
    ) or (
        '<p class="ok">No deployment is faster at a significant quality cost '
        "than another deployment of its model.</p>"
    )
    probes = sorted({q.probe for dep in report.deployments for q in dep.quality})
    rows: list[list[Cell]] = []
    for dep in report.deployments:
        ttft = dep.speed.metric("ttft_ms")
        row: list[Cell] = [
            dep.name,
            str(dep.speed.requests),
            fmt.pct(dep.speed.errors / dep.speed.requests) if dep.speed.requests else fmt.MISSING,
            fmt.value(median_tps(dep), "tok/s"),
            fmt.value(ttft.percentiles[0].current if ttft else None, "ms"),
        ]
        for probe in probes:
            q = dep.probe(probe)
            row.append(fmt.value(q.current.mean) if q else fmt.MISSING)
        rows.append(row)
    headers = ["deployment", "user requests", "errors", "tokens/s p50", "TTFT p50", *probes]
    found = len(report.regressions)
    line = f"{found} regression finding{'s' * (found != 1)} recorded in the period."
    return f"<h2>Summary</h2>{verdicts}{_table(headers, rows)}<p>{line}</p>"


def _pareto(report: Report) -> str:
    if not report.pareto:
        return (
            "<h2>Quality against speed</h2><p class='muted'>No deployment has both tokens/s "
            "and a quality score measured in the period.</p>"
        )
    palette = _palette(report)
    figures = "".join(
        f"<figure>{charts.pareto(chart, palette)}</figure>" for chart in report.pareto
    )
    return (
        "<h2>Quality against speed</h2><p class='muted'>Per probe: mean score (bar: "
        f"{report.settings.confidence:.0%} interval) against median decode tokens/s. A deployment "
        "is on the Pareto front when no other one is at least as fast and as good.</p>"
        f'<div class="charts">{figures}</div>'
    )


def _palette(report: Report) -> dict[str, str]:
    return charts.colours([dep.name for dep in report.deployments])


def _speed_charts(report: Report) -> str:
    palette = _palette(report)
    figures = []
    for index, spec_name in enumerate(("ttft_ms", "itl_ms", "decode_tps")):
        rows = []
        for dep in report.deployments:
            metric = dep.speed.metric(spec_name)
            if metric is None or any(p.current is None for p in metric.percentiles):
                continue
            values = [p.current or 0.0 for p in metric.percentiles]
            rows.append(charts.IntervalRow(
                dep.name, palette[dep.name], values[0], min(values), max(values),
                metric.percentiles[0].previous,
            ))  # fmt: skip
        if rows:
            metric = report.deployments[0].speed.metrics[index]
            tail = "-".join(fmt.percentile_name(p.p) for p in metric.percentiles[::2])
            legend = f"dot: p50; bar: {tail}; diamond: previous p50"
            axis, title = f"{metric.label} ({metric.unit})", f"{metric.label} per deployment"
            figures.append(f"<figure>{charts.intervals(title, rows, axis, legend)}</figure>")
    if not figures:
        return "<h2>Speed</h2><p class='muted'>No user traffic measured in the period.</p>"
    return f'<h2>Speed (user traffic)</h2><div class="charts">{"".join(figures)}</div>'


def _quality_charts(report: Report) -> str:
    palette = _palette(report)
    probes = sorted({q.probe for dep in report.deployments for q in dep.quality})
    figures = []
    for probe in probes:
        rows = [
            charts.IntervalRow(dep.name, palette[dep.name], mean, low, high, q.previous.mean)
            for dep in report.deployments
            if (q := dep.probe(probe)) is not None
            and (mean := q.current.mean) is not None
            and (low := q.current.low) is not None
            and (high := q.current.high) is not None
        ]
        if rows:
            legend = f"dot: mean; bar: {report.settings.confidence:.0%} CI; diamond: previous"
            title = f"{probe} score per deployment"
            axis = f"mean {probe} score"
            figures.append(f"<figure>{charts.intervals(title, rows, axis, legend)}</figure>")
    if not figures:
        return "<h2>Quality</h2><p class='muted'>No quality scores measured in the period.</p>"
    return f'<h2>Quality per probe</h2><div class="charts">{"".join(figures)}</div>'


def _deployment(dep: DeploymentReport) -> str:
    speed = dep.speed
    counts = (
        f"{speed.requests} user requests ({speed.errors} errors), "
        f"previous period {speed.previous_requests} ({speed.previous_errors} errors)"
    )
    speed_rows = [row for metric in speed.metrics for row in _speed_rows(metric)]
    speed_table = _table(
        ["metric", "percentile", "this period", "previous", "change", "n (previous)"],
        speed_rows,
        text_columns=2,
    )
    return (
        f"<h2>{escape(dep.name)}</h2><p class='muted'>{escape(counts)}</p>"
        f"<h3>Speed</h3>{speed_table}<h3>Quality</h3>{_quality_table(dep)}"
    )


def _speed_rows(metric: SpeedMetric) -> list[list[Cell]]:
    counts = f"{metric.n} ({metric.n_previous})"
    if all(p.current is None and p.previous is None for p in metric.percentiles):
        return [[metric.label, "", ("not measured", "muted"), "", "", counts]]
    rows: list[list[Cell]] = []
    for i, p in enumerate(metric.percentiles):
        change: Cell = (
            fmt.signed_pct(p.change_pct),
            fmt.speed_change_class(p.change_pct, metric.better),
        )
        rows.append([
            metric.label if i == 0 else "",
            fmt.percentile_name(p.p),
            fmt.value(p.current, metric.unit),
            fmt.value(p.previous, metric.unit),
            change,
            counts if i == 0 else "",
        ])  # fmt: skip
    return rows


def _quality_table(dep: DeploymentReport) -> str:
    if not dep.quality:
        return "<p class='muted'>No quality results for this deployment.</p>"
    rows: list[list[Cell]] = []
    for q in dep.quality:
        now, before = q.current, q.previous
        rate, prev_rate = q.pass_rate, q.previous_pass_rate
        rows.append([
            q.probe,
            f"{now.n} ({before.n})",
            f"{fmt.value(now.mean)} {fmt.interval(now.low, now.high)}".strip(),
            fmt.value(before.mean),
            (fmt.signed(q.change), fmt.quality_change_class(q.change, q.significant)),
            f"{fmt.pct(rate.rate)} {fmt.interval(rate.low, rate.high, True)} n={rate.n}".strip()
            if rate else "",
            f"{fmt.pct(prev_rate.rate)} n={prev_rate.n}" if prev_rate else "",
        ])  # fmt: skip
    headers = ["probe", "n (previous)", "mean [CI]", "previous", "change", "pass rate [Wilson CI]",
               "previous pass rate"]  # fmt: skip
    return _table(headers, rows)


def _regressions(report: Report) -> str:
    if not report.regressions:
        return "<h2>Regressions</h2><p class='ok'>No regression recorded in the period.</p>"
    rows: list[list[Cell]] = [
        [
            fmt.when(f.ts), f"{f.model} / {f.deployment}", f.probe, f.test,
            fmt.value(f.baseline), (fmt.value(f.current), "worse"), f"{f.statistic:.2f}",
            f"{f.n_baseline} / {f.n_current}",
        ]
        for f in report.regressions
    ]  # fmt: skip
    headers = ["recorded", "deployment", "probe", "test", "baseline", "current", "statistic",
               "n baseline / current"]  # fmt: skip
    return "<h2>Regressions</h2><p>From fathom.regressions, newest first.</p>" + _table(
        headers, rows, text_columns=4
    )


def _canaries(report: Report) -> str:
    head = "<h2>Canaries that fell most</h2>"
    if not report.canary_drops:
        return head + (
            "<p class='muted'>No canary item's pass rate fell (items need "
            f"{report.settings.canary_min_results} results in each period).</p>"
        )
    rows: list[list[Cell]] = [
        [
            f"{c.model} / {c.deployment}", c.probe, c.item_id, f"{fmt.pct(c.rate)} (n={c.n})",
            f"{fmt.pct(c.previous_rate)} (n={c.n_previous})",
            (f"{c.change * 100:+.0f} pts", "worse"), (c.latest_detail, "l ci"),
        ]
        for c in report.canary_drops
    ]  # fmt: skip
    headers = ["deployment", "probe", "item", "pass rate", "previous", "change", "latest result"]
    return head + _table(headers, rows, text_columns=3)


def _audits(report: Report) -> str:
    head = (
        "<h2>Divergence from reference</h2><p>The latest `fathom audit --record` verdict in "
        "the period per reference deployment and comparison, with its p-value.</p>"
    )
    rows: list[list[Cell]] = [
        [
            f"{a.model} / {a.deployment}", a.reference, a.comparison,
            (a.verdict, "worse" if a.verdict == "diverged" else ""),
            fmt.p_value(a.p_value), str(a.audits), fmt.when(a.latest),
        ]
        for a in report.audits
    ]  # fmt: skip
    headers = ["deployment", "reference", "comparison", "verdict", "p-value", "audits", "latest"]
    table = _table(headers, rows, text_columns=4) if rows else ""
    unaudited = "".join(
        f"<li>{escape(dep.name)}: not measured (no reference audit in the period)</li>"
        for dep in report.unaudited()
    )
    return head + table + (f"<ul class='muted'>{unaudited}</ul>" if unaudited else "")


def _not_measured(report: Report) -> str:
    head = "<h2>Not measured</h2>"
    if not report.not_measured:
        return head + "<p class='muted'>Every series had enough samples in both periods.</p>"
    need = report.settings.min_samples
    rows: list[list[Cell]] = [
        [
            f"{g.model} / {g.deployment}", g.kind, g.series, str(g.n), str(g.n_previous),
            "no figures" if g.missing == "figures" else "no week-over-week change",
        ]
        for g in report.not_measured
    ]  # fmt: skip
    note = f"<p>Series with fewer than {need} samples in a period are not reported for it.</p>"
    headers = ["deployment", "kind", "series", "n", "n previous", "missing"]
    return head + note + _table(headers, rows, text_columns=3) + _not_reasked(report)


def _not_reasked(report: Report) -> str:
    if not report.not_reasked:
        return ""
    rows: list[list[Cell]] = [
        [f"{n.model} / {n.deployment}", str(n.samples), str(n.redacted)] for n in report.not_reasked
    ]
    note = (
        "<p>Samples the consistency probe did not re-ask: redaction changed their stored "
        "prompt, and a re-ask must send exactly the prompt that produced the answer.</p>"
    )
    return note + _table(["deployment", "samples", "not re-asked (redacted)"], rows, 1)


def _definitions(report: Report) -> str:
    conf = f"{report.settings.confidence:.0%}"
    items = {
        "TTFT": "request start to the first content event, streamed user requests.",
        "ITL": "mean gap between content events within a request; percentiles over requests.",
        "decode tokens/s": "(output tokens - 1) / time from first to last content event; "
        "p10 and p1 are the slow tail.",
        "change": "this period against the same span just before it; speed changes of "
        f"{fmt.NOTABLE_SPEED_CHANGE_PCT:g}% or more and score changes significant at {conf} "
        "are coloured.",
        "mean [CI]": f"mean score in [0, 1] with its {conf} normal-approximation interval.",
        "pass rate": f"share of pass/fail results that passed, {conf} Wilson score interval.",
        "p-value": "of the latest reference audit's comparison (higher: less evidence of a "
        "difference from the reference); diverged: that audit found the deployment different "
        "(docs/audit.md says how each comparison decides).",
        "degraded": "faster (median tokens/s) than another deployment of the same model but "
        f"scoring lower on a probe, significant at {conf}.",
    }
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items())
    return f"<h2>How figures are computed</h2><dl class='muted'>{body}</dl>"
