"""Reference audits in `fathom report`: their own section, never among the quality figures.

A small store written by hand: `fathom audit --record` rows (through the audit's own
`Comparison.result`) beside ordinary probe rows, for a report on the 6 h up to NOW with the 6 h
before it. Expected figures are worked out from these rows by hand.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fathom.report import (
    Report,
    ReportSettings,
    build_report_sync,
    render_html,
    render_markdown,
    to_dict,
)
from probes.audit_report import Comparison
from probes.result import QUALITY_COLUMNS, ProbeResult
from sidecar.store.client import Store
from tests.support.seeded import NOW
from tests.support.store import embedded

SINCE = timedelta(hours=6)
SETTINGS = ReportSettings(min_samples=2, canary_min_results=1)


def audit(probe: str, p_value: float, verdict: str, reference: str = "fp16") -> ProbeResult:
    """An audit comparison's quality row, as `fathom audit --record` writes it."""
    return Comparison(probe, verdict, statistic=1.0, p_value=p_value, n=8).result(reference)


def score(value: float) -> ProbeResult:
    """An ordinary consistency score."""
    return ProbeResult("consistency", "", value, None, {}, "nli")


ROWS: list[tuple[timedelta, str, ProbeResult]] = [
    # llama-8b / q4: two consistency scores (mean 0.7) and audits against fp16.
    (timedelta(hours=-4), "q4", score(0.8)),
    (timedelta(hours=-3), "q4", score(0.6)),
    (timedelta(hours=-8), "q4", audit("audit-mmd", 0.4, "same")),  # previous period: not counted
    (timedelta(hours=-5), "q4", audit("audit-mmd", 0.5, "same")),
    (timedelta(hours=-1), "q4", audit("audit-mmd", 0.002, "diverges")),  # the latest mmd
    (timedelta(hours=-2), "q4", audit("audit-canary", 0.8, "same")),
    (timedelta(hours=1), "q4", audit("audit-logprob", 0.0, "diverges")),  # after the period
    # llama-8b / fp16: scores only, never audited.
    (timedelta(hours=-4), "fp16", score(0.9)),
    (timedelta(hours=-2), "fp16", score(0.7)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """An embedded store holding ROWS."""
    path: Path = tmp_path_factory.mktemp("audits") / "db"
    with contextlib.closing(embedded(path)) as opened:
        rows = [r.to_row(NOW + at, "", "llama-8b", dep) for at, dep, r in ROWS]
        opened.insert_sync(
            "fathom.quality", QUALITY_COLUMNS, [[row[c] for c in QUALITY_COLUMNS] for row in rows]
        )
        yield opened


@pytest.fixture(scope="module")
def report(store: Store) -> Report:
    """The report on the 6 h up to NOW."""
    return build_report_sync(store, NOW, SINCE, SETTINGS)


def test_audits_are_not_quality_figures(report: Report) -> None:
    doc = to_dict(report)
    q4 = next(d for d in doc["deployments"] if d["deployment"] == "q4")
    assert [q["probe"] for q in q4["quality"]] == ["consistency"]
    assert q4["quality"][0]["current"]["mean"] == pytest.approx(0.7)
    # The mmd pass rate fell from 1 to 1/2 week over week: not a canary drop, an audit.
    assert doc["canary_drops"] == []
    assert {chart["probe"] for chart in doc["pareto"]} <= {"consistency"}


def test_the_latest_verdict_per_reference_and_comparison(report: Report) -> None:
    audits: list[dict[str, Any]] = to_dict(report)["audits"]
    assert audits == [
        {"model": "llama-8b", "deployment": "q4", "reference": "fp16", "comparison": "canary",
         "audits": 1, "latest": (NOW - timedelta(hours=2)).isoformat(), "p_value": 0.8,
         "verdict": "same"},
        {"model": "llama-8b", "deployment": "q4", "reference": "fp16", "comparison": "mmd",
         "audits": 2, "latest": (NOW - timedelta(hours=1)).isoformat(), "p_value": 0.002,
         "verdict": "diverged"},
    ]  # fmt: skip
    assert json.loads(json.dumps(audits)) == audits


def test_markdown_names_verdicts_and_the_unaudited(report: Report) -> None:
    text = render_markdown(report)
    section = text.split("## Divergence from reference\n")[1].split("\n## ")[0]
    assert "| llama-8b / q4 | fp16 | mmd | diverged | 0.002 | 2 |" in section
    assert "| llama-8b / q4 | fp16 | canary | same | 0.8 | 1 |" in section
    assert "- llama-8b / fp16: not measured (no `fathom audit --record` in the period)" in section
    assert "audit-" not in text


def test_html_names_verdicts_and_the_unaudited(report: Report) -> None:
    html = render_html(report)
    section = html.split("<h2>Divergence from reference</h2>")[1].split("<h2>")[0]
    assert '<td class="worse l">diverged</td><td>0.002</td><td>2</td>' in section
    assert "<li>llama-8b / fp16: not measured (no reference audit in the period)</li>" in section
    assert "audit-" not in html


def test_a_period_with_audits_only_has_data(store: Store) -> None:
    later = build_report_sync(store, NOW + timedelta(hours=2), timedelta(hours=1.5), SETTINGS)
    assert later.has_data and later.deployments == ()
    assert [(a.comparison, a.verdict, a.p_value) for a in later.audits] == [
        ("logprob", "diverged", 0.0)
    ]
    assert "| llama-8b / q4 | fp16 | logprob | diverged | 0 | 1 |" in render_markdown(later)


def test_no_audits_is_said_as_not_measured(store: Store) -> None:
    # [NOW - 4.5 h, NOW - 2.5 h) holds scores of both deployments and no audit.
    quiet = build_report_sync(store, NOW - timedelta(hours=2.5), timedelta(hours=2), SETTINGS)
    assert quiet.audits == () and to_dict(quiet)["audits"] == []
    assert [d.deployment for d in quiet.unaudited()] == ["fp16", "q4"]
    section = render_markdown(quiet).split("## Divergence from reference\n")[1]
    assert section.startswith("\n- llama-8b / fp16: not measured")
