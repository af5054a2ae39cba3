"""`fathom report`: speed and quality per deployment, as HTML, markdown or JSON.

In code (the demo does this): `report = await build_report(store, now, since)` (or
`build_report_sync` outside an event loop), then `render_html(report)`,
`render_markdown(report)`, `render_json(report)`, or `summary_lines(report)` to print.
"""

from __future__ import annotations

from fathom.report.build import SchemaMissing, build_report, build_report_sync
from fathom.report.model import Report, ReportSettings
from fathom.report.render_html import render_html
from fathom.report.render_json import render_json, to_dict
from fathom.report.render_md import render_markdown
from fathom.report.summary import summary_lines

__all__ = [
    "Report",
    "ReportSettings",
    "SchemaMissing",
    "build_report",
    "build_report_sync",
    "render_html",
    "render_json",
    "render_markdown",
    "summary_lines",
    "to_dict",
]
