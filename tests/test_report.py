"""`fathom report` figures on seeded data, checked against independent SQL on the same rows.

The seeded store of tests/support/seeded.py with the report's extras: a thinly measured
deployment, canary items whose pass rate falls (and one that rises), and regression rows in
and before the period. The report covers the 6 h up to NOW against the 6 h before.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from fathom.report import (
    Report,
    build_report,
    build_report_sync,
    render_html,
    render_json,
    render_markdown,
    summary_lines,
    to_dict,
)
from fathom.report.compare import pareto_front
from sidecar.store.client import Store
from tests.support.grafana_queries import ALL, QueryContext, Variable, run_query
from tests.support.seeded import NOW, open_seeded, seed_report_extras

SINCE = timedelta(hours=6)
START, PREVIOUS = NOW - SINCE, NOW - 2 * SINCE
DEPLOYMENTS = ["llama-8b / fp16", "llama-8b / q2", "mistral-7b / int4", "qwen-7b / awq"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The dashboards' seeded store with this module's extra rows."""
    with contextlib.closing(open_seeded(tmp_path_factory.mktemp("report") / "db")) as seeded:
        seed_report_extras(seeded)
        yield seeded


@pytest.fixture(scope="module")
def report(store: Store) -> Report:
    """The report on the 6 h up to NOW."""
    return build_report_sync(store, NOW, SINCE)


@pytest.fixture(scope="module")
def doc(report: Report) -> dict[str, Any]:
    """The report's JSON form, parsed back."""
    parsed: dict[str, Any] = json.loads(render_json(report))
    return parsed


def deployment(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The JSON entry of 'model / deployment'."""
    model, dep = name.split(" / ")
    entries: list[dict[str, Any]] = doc["deployments"]
    found = [d for d in entries if (d["model"], d["deployment"]) == (model, dep)]
    assert len(found) == 1, name
    return found[0]


def metric(doc: dict[str, Any], name: str, metric_name: str) -> dict[str, Any]:
    """One speed metric of one deployment."""
    metrics: list[dict[str, Any]] = deployment(doc, name)["speed"]["metrics"]
    return next(m for m in metrics if m["name"] == metric_name)


def ms(when: datetime) -> int:
    """Epoch milliseconds, for binding."""
    return round(when.timestamp() * 1000)


def user_speed(
    store: Store, column: str, level: float, start: datetime, end: datetime
) -> dict[str, tuple[int, float]]:
    """(model / deployment) -> (count, exact quantile) of a column over user requests."""
    rows = store.query_sync(
        f"SELECT concat(model, ' / ', deployment), count({column}), "
        f"quantileExact({level})({column}) FROM fathom.requests "
        "WHERE origin = 'user' AND ts >= fromUnixTimestamp64Milli({s:Int64}) "
        "AND ts < fromUnixTimestamp64Milli({e:Int64}) GROUP BY 1",
        {"s": ms(start), "e": ms(end)},
    )
    return {name: (n, value) for name, n, value in rows}


def test_the_report_covers_every_deployment_in_the_period(doc: dict[str, Any]) -> None:
    assert doc["schema"] == "fathom.report/1"
    assert doc["has_data"] is True
    assert [f"{d['model']} / {d['deployment']}" for d in doc["deployments"]] == DEPLOYMENTS
    assert doc["window"] == {
        "start": START.isoformat(), "end": NOW.isoformat(),
        "previous_start": PREVIOUS.isoformat(), "seconds": SINCE.total_seconds(),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("column", "name", "index", "level"),
    [
        ("ttft_ms", "ttft_ms", 0, 0.5),
        ("ttft_ms", "ttft_ms", 2, 0.99),
        ("itl_mean_ms", "itl_ms", 1, 0.9),
        ("decode_tps", "decode_tps", 0, 0.5),
        ("decode_tps", "decode_tps", 2, 0.01),
    ],
)
def test_speed_percentiles_match_exact_quantiles_of_user_traffic(
    store: Store, doc: dict[str, Any], column: str, name: str, index: int, level: float
) -> None:
    now = user_speed(store, column, level, START, NOW)
    before = user_speed(store, column, level, PREVIOUS, START)
    for dep in DEPLOYMENTS[:2] + DEPLOYMENTS[3:]:
        figure = metric(doc, dep, name)
        percentile = figure["percentiles"][index]
        assert percentile["p"] == pytest.approx(level * 100)
        assert (figure["n"], percentile["current"]) == now[dep]
        assert (figure["n_previous"], percentile["previous"]) == before[dep]
        change = (now[dep][1] - before[dep][1]) / before[dep][1] * 100
        assert percentile["change_pct"] == pytest.approx(change)


def test_speed_counts_user_requests_only(store: Store, doc: dict[str, Any]) -> None:
    # The seeded probe and canary requests all fail with a 50 s TTFT: none may show.
    rows = store.query_sync(
        "SELECT concat(model, ' / ', deployment), count(), countIf(error != ''), "
        "countIf(origin != 'user') FROM fathom.requests WHERE ts >= fromUnixTimestamp64Milli("
        "{s:Int64}) AND ts < fromUnixTimestamp64Milli({e:Int64}) GROUP BY 1",
        {"s": ms(START), "e": ms(NOW)},
    )
    for name, total, errors, other in rows:
        speed = deployment(doc, name)["speed"]
        assert speed["requests"] == total - other
        assert 0 < speed["errors"] < errors or (other == 0 and speed["errors"] == errors)
        p99 = metric(doc, name, "ttft_ms")["percentiles"][2]["current"]
        assert p99 is None if name == "mistral-7b / int4" else p99 < 50_000


def test_quality_means_intervals_and_counts_per_probe(store: Store, doc: dict[str, Any]) -> None:
    rows = store.query_sync(
        "SELECT concat(model, ' / ', deployment), probe, count(), avg(score), stddevSamp(score) "
        "FROM fathom.quality WHERE ts >= fromUnixTimestamp64Milli({s:Int64}) "
        "AND ts < fromUnixTimestamp64Milli({e:Int64}) GROUP BY 1, 2 HAVING count() >= 20",
        {"s": ms(START), "e": ms(NOW)},
    )
    assert len(rows) == 6  # three well-measured deployments, two probes each
    for name, probe, n, mean, sd in rows:
        entry = next(q for q in deployment(doc, name)["quality"] if q["probe"] == probe)
        low, high = stats.norm.interval(0.95, loc=mean, scale=sd / n**0.5)
        assert entry["current"]["n"] == n
        assert entry["current"]["mean"] == pytest.approx(mean)
        assert entry["current"]["low"] == pytest.approx(max(low, 0.0))
        assert entry["current"]["high"] == pytest.approx(min(high, 1.0))


def test_pass_rates_have_wilson_intervals(store: Store, doc: dict[str, Any]) -> None:
    rows = store.query_sync(
        "SELECT concat(model, ' / ', deployment), count(passed), countIf(passed = 1) "
        "FROM fathom.quality WHERE probe = 'factuality' AND ts >= fromUnixTimestamp64Milli("
        "{s:Int64}) AND ts < fromUnixTimestamp64Milli({e:Int64}) GROUP BY 1",
        {"s": ms(START), "e": ms(NOW)},
    )
    assert len(rows) == 3
    for name, n, passed in rows:
        rate = next(q for q in deployment(doc, name)["quality"] if q["probe"] == "factuality")
        interval = stats.binomtest(passed, n).proportion_ci(0.95, method="wilson")
        assert rate["pass_rate"]["n"] == n and rate["pass_rate"]["passed"] == passed
        assert rate["pass_rate"]["rate"] == pytest.approx(passed / n)
        assert rate["pass_rate"]["low"] == pytest.approx(interval.low)
        assert rate["pass_rate"]["high"] == pytest.approx(interval.high)
    q2 = next(q for q in deployment(doc, "llama-8b / q2")["quality"] if q["probe"] == "factuality")
    assert q2["previous_pass_rate"]["rate"] > 0.8 > 0.7 > q2["pass_rate"]["rate"]


def test_consistency_drop_of_q2_is_significant(doc: dict[str, Any]) -> None:
    quality = {q["probe"]: q for q in deployment(doc, "llama-8b / q2")["quality"]}
    assert quality["consistency"]["change"] < -0.05 and quality["consistency"]["significant"]
    fp16 = {q["probe"]: q for q in deployment(doc, "llama-8b / fp16")["quality"]}
    assert not fp16["consistency"]["significant"]


def test_regressions_in_the_period_newest_first(doc: dict[str, Any]) -> None:
    found = [(r["deployment"], r["probe"], r["test"]) for r in doc["regressions"]]
    assert found == [("q2", "factuality", "sprt"), ("q2", "consistency", "cusum")]
    assert doc["regressions"][1]["n_current"] == 150


def test_canaries_that_fell_most_come_first(doc: dict[str, Any]) -> None:
    drops = [(c["deployment"], c["item_id"]) for c in doc["canary_drops"]]
    assert drops == [("q2", "capital-fr"), ("fp16", "boiling-point")]
    first = doc["canary_drops"][0]
    assert (first["rate"], first["n"], first["previous_rate"], first["n_previous"]) == (
        0.3, 10, 1.0, 10,
    )  # fmt: skip
    assert first["change"] == pytest.approx(-0.7)
    assert json.loads(first["latest_detail"]) == {"item": "capital-fr", "i": 0}


def test_thin_series_are_named_as_not_measured(doc: dict[str, Any]) -> None:
    mistral = [g for g in doc["not_measured"] if g["model"] == "mistral-7b"]
    assert {(g["kind"], g["series"], g["n"], g["missing"]) for g in mistral} == {
        ("speed", "ttft_ms", 5, "figures"),
        ("speed", "itl_ms", 5, "figures"),
        ("speed", "decode_tps", 5, "figures"),
        ("quality", "consistency", 3, "figures"),
    }
    ttft = metric(doc, "mistral-7b / int4", "ttft_ms")
    assert ttft["n"] == 5 and all(p["current"] is None for p in ttft["percentiles"])
    # Rows from before migration 003 have no answer time: none at all is not a gap.
    assert metric(doc, "mistral-7b / int4", "ttfa_ms")["n"] == 0
    # The seeded baseline has ~25 quality rows per 6 h: enough for a change, so no gap.
    assert all(g["model"] == "mistral-7b" for g in doc["not_measured"])


def test_pareto_front_agrees_with_the_dashboard(store: Store, doc: dict[str, Any]) -> None:
    panel = json.loads((ROOT / "dashboards" / "fathom-quality-vs-speed.json").read_text())
    sql = next(p["targets"][0]["rawSql"] for p in panel["panels"] if p["title"] == "Per deployment")
    for chart in doc["pareto"]:
        variables = {
            "model": Variable("model", [ALL], ["llama-8b", "qwen-7b", "mistral-7b"]),
            "probe": Variable("probe", chart["probe"]),
            "origin": Variable("origin", ["user"]),  # the dashboard's default, the report's traffic
            **{name: Variable(name, [ALL]) for name in ("deployment", "route", "tenant", "scorer")},
        }
        result = run_query(store, sql, QueryContext(START, NOW, variables=variables))
        dashboard = {
            name: bool(on) for name, on in zip(result.column("deployment"),
                                               result.column("on_front"), strict=True)
        }  # fmt: skip
        ours = {f"{p['model']} / {p['deployment']}": p["on_front"] for p in chart["points"]}
        dashboard.pop("mistral-7b / int4", None)  # too few samples for the report
        assert ours == dashboard
    front = {p["deployment"] for p in doc["pareto"][0]["points"] if p["on_front"]}
    assert doc["pareto"][0]["probe"] == "consistency" and front == {"fp16", "q2"}


def test_pareto_front_of_points() -> None:
    assert pareto_front([(1, 0.9), (2, 0.8), (1.5, 0.7), (2, 0.8)]) == [True, True, False, True]
    assert pareto_front([(1.0, 0.5)]) == [True]


def test_verdict_names_the_faster_worse_deployment(report: Report) -> None:
    assert len(report.verdicts) == 1
    verdict = report.verdicts[0]
    assert (verdict.degraded, verdict.reference) == ("llama-8b / q2", "llama-8b / fp16")
    assert verdict.speedup == pytest.approx(90 / 40, rel=0.1)
    assert {d.probe for d in verdict.worse_on} == {"consistency", "factuality"}
    lines = summary_lines(report)
    assert lines[1].split() == ["deployment", "tokens/s", "p50", "TTFT", "p50", "consistency",
                                "factuality"]  # fmt: skip
    rows = {line.split("  ")[0]: line for line in lines[2:6]}
    assert set(rows) == set(DEPLOYMENTS)
    assert "(pass " in rows["llama-8b / q2"] and "tok/s" in rows["llama-8b / q2"]
    assert lines[-1].startswith("verdict: llama-8b / q2 is degraded: 2.")


def test_markdown_for_chat_and_ci(report: Report) -> None:
    text = render_markdown(report)
    assert text.startswith(f"# Fathom report: {NOW - SINCE:%Y-%m-%d %H:%M} UTC")
    assert "**Degraded:** llama-8b / q2 is degraded" in text
    assert "| llama-8b / q2 | consistency | 150 |" in text
    assert "## Regressions (2)" in text and "capital-fr" in text
    assert "- mistral-7b / int4: speed `ttft_ms` n=5 (previous 0), needs 20: no figures" in text


def test_an_empty_period_says_there_is_no_data(store: Store) -> None:
    empty = build_report_sync(store, NOW - timedelta(days=20), SINCE)
    assert not empty.has_data and empty.deployments == ()
    assert to_dict(empty)["deployments"] == [] and to_dict(empty)["has_data"] is False
    assert "No data" in render_markdown(empty) and "<b>No data.</b>" in render_html(empty)
    assert summary_lines(empty)[1] == "no data in this period: nothing was measured"


def test_progress_is_reported_step_by_step(store: Store) -> None:
    steps: list[str] = []
    build_report_sync(store, NOW, SINCE, progress=steps.append)
    assert len(steps) == 7
    assert steps[0].startswith("checking the schema of chdb://")
    assert "speed" in steps[1] and "quality" in steps[2] and "regressions" in steps[4]


async def test_build_report_runs_off_the_event_loop(store: Store, report: Report) -> None:
    assert await build_report(store, NOW, SINCE) == report


def test_json_structure_is_the_documented_one(doc: dict[str, Any]) -> None:
    assert list(doc) == [
        "schema", "generated_at", "window", "settings", "has_data", "deployments", "pareto",
        "regressions", "canary_drops", "not_measured", "verdicts", "not_reasked", "audits",
    ]  # fmt: skip
    dep = deployment(doc, "llama-8b / q2")
    assert set(dep) == {"model", "deployment", "speed", "quality"}
    assert set(dep["speed"]) == {
        "requests", "errors", "previous_requests", "previous_errors", "metrics",
    }  # fmt: skip
    assert [m["name"] for m in dep["speed"]["metrics"]] == [
        "ttft_ms",
        "ttfa_ms",
        "itl_ms",
        "decode_tps",
    ]
    assert set(dep["speed"]["metrics"][0]) == {
        "name", "label", "unit", "better", "n", "n_previous", "percentiles",
    }  # fmt: skip
    assert [p["p"] for p in metric(doc, "llama-8b / q2", "decode_tps")["percentiles"]] == [
        50, 10, 1,
    ]  # fmt: skip
    quality = dep["quality"][1]
    assert set(quality) == {
        "probe", "current", "previous", "change", "significant", "pass_rate",
        "previous_pass_rate",
    }  # fmt: skip
    assert set(quality["current"]) == {"n", "mean", "sd", "low", "high"}
    assert set(quality["pass_rate"]) == {"n", "passed", "rate", "low", "high"}
    assert set(doc["verdicts"][0]) == {"model", "degraded", "reference", "speedup", "worse_on"}
    assert set(doc["not_measured"][0]) == {
        "kind", "model", "deployment", "series", "n", "n_previous", "needed", "missing",
    }  # fmt: skip


def test_the_html_is_self_contained(report: Report) -> None:
    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", html)
    # The only URL is the SVG namespace, which is a name, not something fetched.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert html.count("<svg") == 7 and html.count('role="img"') == 7
    assert "llama-8b / q2 is degraded" in html and "capital-fr" in html


def test_samples_not_reasked_for_redaction_are_counted(doc: dict[str, Any], report: Report) -> None:
    assert doc["not_reasked"] == [
        {"model": "mistral-7b", "deployment": "int4", "samples": 3, "redacted": 1}
    ]
    assert "1 of 3 samples not re-asked for consistency" in render_markdown(report)
