"""The Grafana dashboards: well-formed, pointed at the provisioned data source, and every query
runs on the real engine (macros expanded as the plugin does) and returns what its panel needs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from probes.audit_report import Comparison
from probes.result import QUALITY_COLUMNS
from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import Store
from tests.support.grafana_queries import (
    QueryContext,
    Result,
    Variable,
    is_numeric,
    is_text,
    run_query,
)
from tests.support.seeded import NOW, detected, user_requests_since
from tests.support.store import HISTOGRAM_ERROR

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "fathom-clickhouse"}
RANGE = (NOW - timedelta(hours=6), NOW)
SELECTION = {"model": ["llama-8b"], "deployment": ["q2", "fp16"], "probe": ["consistency"]}


def load(name: str) -> dict[str, Any]:
    """One dashboard's JSON."""
    document: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return document


def dashboards() -> list[dict[str, Any]]:
    """Every dashboard JSON under dashboards/."""
    return [load(path.name) for path in sorted(DASHBOARDS.glob("*.json"))]


# Reference audits of llama-8b / q2 against fp16, as `fathom audit --record` writes them: the
# mmd comparison twice in the range (the latest diverged), the canary once, logprob before it.
AUDITS = [
    (timedelta(hours=-3), Comparison("audit-mmd", "same", p_value=0.3)),
    (timedelta(hours=-1), Comparison("audit-mmd", "diverges", p_value=0.001)),
    (timedelta(hours=-2), Comparison("audit-canary", "same", p_value=0.9)),
    (timedelta(hours=-7), Comparison("audit-logprob", "diverges", p_value=0.0)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The seeded store, with the detector's findings written (for annotations and tables) and
    reference audits, which only the 'Reference audit' panel shows."""
    with detected(tmp_path_factory.mktemp("dashboards") / "db") as seeded:
        rows = [c.result("fp16").to_row(NOW + at, "", "llama-8b", "q2") for at, c in AUDITS]
        seeded.insert_sync(
            "fathom.quality", QUALITY_COLUMNS, [[r[c] for c in QUALITY_COLUMNS] for r in rows]
        )
        yield seeded


# ------------------------------------------------------------------ JSON and schema


def test_three_dashboards_with_unique_uids_and_panel_ids() -> None:
    docs = dashboards()
    assert sorted(d["uid"] for d in docs) == [
        "fathom-quality",
        "fathom-quality-vs-speed",
        "fathom-speed",
    ]
    for doc in docs:
        ids = [panel["id"] for panel in doc["panels"]]
        assert len(ids) == len(set(ids)), doc["uid"]
        refs = [(p["id"], t["refId"]) for p in doc["panels"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), doc["uid"]


def test_every_query_points_at_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(
        (DASHBOARDS / "provisioning/datasources/fathom-clickhouse.yaml").read_text()
    )["datasources"][0]
    assert {"type": provisioned["type"], "uid": provisioned["uid"]} == DATASOURCE
    for doc in dashboards():
        for panel in (p for p in doc["panels"] if p.get("targets")):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, panel["title"]
                assert target["editorType"] == "sql" and target["rawSql"].strip()
        for variable in doc["templating"]["list"]:
            assert variable["datasource"] == DATASOURCE, variable["name"]
        for annotation in doc["annotations"]["list"]:
            assert annotation["datasource"] == DATASOURCE
            assert annotation["target"]["datasource"] == DATASOURCE


def test_panels_do_not_overlap() -> None:
    for doc in dashboards():
        cells: set[tuple[int, int]] = set()
        for panel in doc["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not mine & cells, f"{doc['uid']}: {panel['title']} overlaps"
            cells |= mine


def _lost(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of `given` that the typed model dropped or changed."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [f"{path} (type)"]
        return [
            lost
            for key, value in given.items()
            for lost in (
                [f"{path}/{key}"] if key not in kept else _lost(value, kept[key], f"{path}/{key}")
            )
        ]
    if isinstance(given, list):
        if not isinstance(kept, list) or len(given) != len(kept):
            return [f"{path} (list)"]
        return [
            lost
            for i, (a, b) in enumerate(zip(given, kept, strict=True))
            for lost in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if given == kept else [f"{path} ({given!r} != {kept!r})"]


def test_dashboards_load_with_the_grafana_foundation_sdk() -> None:
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # typed options and field config per panel type
    for doc in dashboards():
        model = Dashboard.from_json(doc)
        kept = json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))
        # Every field we wrote is one the schema knows (a typo'd option would be dropped),
        # except the annotation's query, which belongs to the data source plugin.
        lost = [p for p in _lost(doc, kept) if not p.startswith("/annotations/list[0]/target/")]
        assert lost == [], f"{doc['uid']}: not in the Grafana 11.6 schema: {lost}"


# ------------------------------------------------------------------ queries on the engine


def variables_for(
    doc: dict[str, Any], store: Store, selection: dict[str, list[str]] | None
) -> dict[str, Variable]:
    """The dashboard's variables, options from their own queries, All or the selection chosen."""
    resolved: dict[str, Variable] = {}
    for spec in doc["templating"]["list"]:
        ctx = QueryContext(*RANGE, variables=resolved)
        options = [str(row[0]) for row in run_query(store, spec["query"], ctx).rows]
        assert options, f"variable {spec['name']} has no options"
        current: str | list[str] = spec["current"]["value"]  # the default: All, or 'user'
        if selection is not None and spec["name"] in selection:
            current = selection[spec["name"]]
        resolved[spec["name"]] = Variable(spec["name"], current, options)
    return resolved


def assert_panel_shape(target: dict[str, Any], result: Result, title: str) -> None:
    """Time series: a `time` column first, labels, then numbers, sorted by time; tables: rows."""
    assert result.rows, f"{title}: no rows"
    assert len(set(result.names)) == len(result.names), title
    if target["format"] == 1:
        return
    assert result.names[0] == "time" and result.types[0].startswith("DateTime"), title
    kinds = ["text" if is_text(t) else "number" if is_numeric(t) else t for t in result.types[1:]]
    assert "number" in kinds, f"{title}: no numeric column"
    assert kinds == sorted(kinds, key=lambda k: k == "number"), f"{title}: labels after numbers"
    assert set(kinds) <= {"text", "number"}, f"{title}: {result.types}"
    times = result.column("time")
    assert times == sorted(times), f"{title}: not sorted by time"


@pytest.mark.parametrize("selection", [None, SELECTION], ids=["all", "selection"])
def test_every_panel_query_runs_and_has_the_shape_its_panel_needs(
    store: Store, selection: dict[str, list[str]] | None
) -> None:
    for doc in dashboards():
        variables = variables_for(doc, store, selection)
        ctx = QueryContext(*RANGE, timedelta(seconds=30), variables)
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                result = run_query(store, target["rawSql"], ctx)
                assert_panel_shape(target, result, f"{doc['uid']}: {panel['title']}")


def panel_result(
    store: Store,
    dashboard: str,
    title: str,
    selection: dict[str, list[str]] | None = None,
    ref: str = "A",
) -> Result:
    """Run one panel's query as Grafana would."""
    doc = load(dashboard)
    panel = next(p for p in doc["panels"] if p["title"] == title)
    target = next(t for t in panel["targets"] if t["refId"] == ref)
    ctx = QueryContext(*RANGE, timedelta(seconds=30), variables_for(doc, store, selection))
    return run_query(store, target["rawSql"], ctx)


def test_speed_panels_filter_by_tenant(store: Store) -> None:
    for tenant in ("acme", "globex"):
        table = panel_result(store, "fathom-speed.json", "Per deployment", {"tenant": [tenant]})
        names = zip(table.column("model"), table.column("deployment"), strict=True)
        counted = dict(zip(names, table.column("requests"), strict=True))
        assert counted == user_requests_since(RANGE[0], tenant)
        assert all(counted.values())


def test_speed_counts_user_traffic_only(store: Store) -> None:
    table = panel_result(store, "fathom-speed.json", "Per deployment")
    counted = {
        (m, d): n
        for m, d, n in zip(
            table.column("model"), table.column("deployment"), table.column("requests"), strict=True
        )
    }
    assert counted == user_requests_since(RANGE[0])
    errors = panel_result(store, "fathom-speed.json", "Errors by class")
    assert set(errors.column("error")) == {"upstream_http", "client_cancelled"}


def test_speed_error_rate_shows_the_failing_deployment(store: Store) -> None:
    rates = panel_result(store, "fathom-speed.json", "Error rate")
    last = max(rates.column("time"))
    worst = {s: r for t, s, r in rates.rows if t >= last - timedelta(minutes=5)}
    assert max(worst, key=lambda s: worst[s]) == "qwen-7b / awq"


def test_a_selection_filters_the_series(store: Store) -> None:
    scores = panel_result(store, "fathom-quality.json", "Score per probe", SELECTION)
    assert set(scores.column("series")) == {
        "consistency · llama-8b / fp16",
        "consistency · llama-8b / q2",
    }


def test_quality_tables_and_annotations_show_the_regression(store: Store) -> None:
    live = panel_result(store, "fathom-quality.json", "Detector now (CUSUM)")
    states = {
        (d, p): s
        for d, p, s in zip(
            live.column("deployment"), live.column("probe"), live.column("state"), strict=True
        )
    }
    assert states.pop(("q2", "consistency")) == "REGRESSION"
    assert states.pop(("q2", "factuality")) == "REGRESSION"
    assert set(states.values()) == {"ok"}
    found = panel_result(store, "fathom-quality.json", "Regressions")
    assert set(found.column("deployment")) == {"q2"}
    doc = load("fathom-quality.json")
    ctx = QueryContext(*RANGE, timedelta(seconds=30), variables_for(doc, store, None))
    notes = run_query(store, doc["annotations"]["list"][0]["target"]["rawSql"], ctx)
    assert {"time", "text", "title", "tags"} <= set(notes.names)
    assert notes.rows and all("q2" in text for text in notes.column("text"))


def test_quality_vs_speed_finds_the_pareto_front(store: Store) -> None:
    points = panel_result(store, "fathom-quality-vs-speed.json", "Per deployment")
    front = {
        d
        for d, on in zip(points.column("deployment"), points.column("on_front"), strict=True)
        if on
    }
    assert front == {"llama-8b / fp16", "llama-8b / q2"}
    line = panel_result(store, "fathom-quality-vs-speed.json", "Tokens/s against quality", ref="B")
    assert set(line.column("deployment")) == front
    assert line.column("tokens_per_s") == sorted(line.column("tokens_per_s"))


# ------------------------------------------------------------------ what ops expect

VARIABLES = {"model", "deployment", "origin", "route", "scorer"}


def test_every_dashboard_filters_alike_and_lists_the_alerts() -> None:
    for doc in dashboards():
        names = {v["name"] for v in doc["templating"]["list"]}
        assert names >= VARIABLES, f"{doc['uid']}: missing {VARIABLES - names}"
        titles = [p["title"] for p in doc["panels"]]
        assert len(titles) == len(set(titles)), doc["uid"]
        origin = next(v for v in doc["templating"]["list"] if v["name"] == "origin")
        assert origin["current"]["value"] == ["user"], "probe traffic is opt-in"
    for uid in ("fathom-speed", "fathom-quality"):
        doc = load(f"{uid}.json")
        alerts = [p for p in doc["panels"] if p["type"] == "alertlist"]
        assert alerts and alerts[0]["options"]["alertInstanceLabelFilter"] == '{fathom="true"}'


def test_every_stat_has_thresholds() -> None:
    stats = [p for doc in dashboards() for p in doc["panels"] if p["type"] == "stat"]
    assert len(stats) >= 10
    for panel in stats:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert len(steps) >= 2 and steps[0]["value"] is None, panel["title"]
        assert panel["fieldConfig"]["defaults"]["color"]["mode"] == "thresholds"


def test_speed_panels_read_the_rollup() -> None:
    doc = load("fathom-speed.json")
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            assert "fathom.speed_1m" in target["rawSql"], panel["title"]
            assert "fathom.speed_1h" in target["rawSql"], f"{panel['title']}: long ranges"
            assert "fathom.requests " not in target["rawSql"] + " ", panel["title"]


def test_speed_shows_latency_percentiles_and_breakdowns(store: Store) -> None:
    for title in ("End-to-end latency", "Time to first byte", "Time to first token"):
        result = panel_result(store, "fathom-speed.json", title)
        assert result.names[2:] == ("p50", "p95", "p99"), title
        answered = [row[2:] for row in result.rows if row[2] is not None]  # NULL: none answered
        assert answered and all(a <= b <= c for a, b, c in answered), title
    statuses = panel_result(store, "fathom-speed.json", "HTTP status")
    assert set(statuses.column("status")) == {"200", "502"}
    table = panel_result(store, "fathom-speed.json", "Per deployment")
    ratios = dict(zip(table.column("deployment"), table.column("error_rate"), strict=True))
    assert max(ratios, key=lambda d: ratios[d]) == "awq"


def test_canary_items_and_the_answers_behind_low_scores(store: Store) -> None:
    items = panel_result(store, "fathom-quality.json", "Canary items")
    assert {f"c{i}" for i in range(40)} == set(items.column("item_id"))
    assert items.column("pass_rate") == sorted(items.column("pass_rate"))
    lowest = panel_result(store, "fathom-quality.json", "Lowest-scoring samples")
    assert lowest.column("score") == sorted(lowest.column("score")) and len(lowest.rows) == 50
    for request_id, prompt, answer in zip(
        lowest.column("request_id"), lowest.column("prompt"), lowest.column("answer"), strict=True
    ):
        assert (prompt, answer) == (f"question {request_id}", f"answer {request_id}")
    # the regressed deployment's answers score lower than its sound twin's
    shown = lowest.column("deployment")
    assert shown.count("q2") > shown.count("fp16")


def test_reference_audit_shows_the_latest_verdicts_and_nothing_else_shows_audits(
    store: Store,
) -> None:
    audits = panel_result(store, "fathom-quality.json", "Reference audit")
    assert audits.names == (
        "model", "deployment", "reference", "comparison", "verdict", "p_value", "audits",
        "last_audit",
    )  # fmt: skip
    shown = [(*row[:5], round(row[5], 6), *row[6:7]) for row in audits.rows]
    assert shown == [
        ("llama-8b", "q2", "fp16", "mmd", "diverged", 0.001, 2),
        ("llama-8b", "q2", "fp16", "canary", "same", 0.9, 1),
    ]
    assert [t.replace(tzinfo=None) for t in audits.column("last_audit")] == [
        (NOW - timedelta(hours=h)).replace(tzinfo=None) for h in (1, 2)
    ]
    doc = load("fathom-quality.json")
    assert all(not p.startswith("audit-") for p in variables_for(doc, store, None)["probe"].options)
    for panel in doc["panels"]:
        if panel["title"] == "Reference audit" or not panel.get("targets"):
            continue
        result = panel_result(store, "fathom-quality.json", panel["title"])
        labels = [c for c in ("probe", "series") if c in result.names]
        cells = [str(v) for name in labels for v in result.column(name)]
        assert cells or panel["type"] == "stat", panel["title"]
        assert not any("audit-" in c for c in cells), panel["title"]
    # Without the exclusion the audits' passes and fails would count among the canaries'.
    passed = panel_result(store, "fathom-quality.json", "Canaries passed").rows[0][0]
    expected = store.query_sync(
        "SELECT avg(passed) FROM fathom.quality "
        "WHERE ts BETWEEN fromUnixTimestamp64Milli({start:Int64}) "
        "AND fromUnixTimestamp64Milli({end:Int64}) AND request_id = '' AND passed IS NOT NULL "
        "AND NOT startsWith(probe, 'audit-')",
        {"start": round(RANGE[0].timestamp() * 1000), "end": round(RANGE[1].timestamp() * 1000)},
    )[0][0]
    assert passed == pytest.approx(expected)


def test_quality_vs_speed_chart_has_units_labels_and_sizes() -> None:
    chart = next(
        p for p in load("fathom-quality-vs-speed.json")["panels"] if p["type"] == "xychart"
    )
    assert chart["options"]["series"][0]["size"]["matcher"]["options"] == "requests"
    props = {
        o["matcher"]["options"]: {x["id"]: x["value"] for x in o["properties"]}
        for o in chart["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byName"
    }
    assert props["tokens_per_s"]["custom.axisLabel"] and props["tokens_per_s"]["unit"]
    assert props["quality"]["custom.axisLabel"] and props["quality"]["unit"] == "percentunit"


def test_a_week_reads_the_hourly_rollup_and_counts_the_same(store: Store) -> None:
    doc = load("fathom-speed.json")
    panel = next(p for p in doc["panels"] if p["title"] == "Per deployment")
    week = (NOW - timedelta(days=7), NOW)
    ctx = QueryContext(*week, timedelta(minutes=10), variables_for(doc, store, None))
    sql = panel["targets"][0]["rawSql"]
    table = run_query(store, sql, ctx)
    keys = zip(table.column("model"), table.column("deployment"), strict=True)
    counted = dict(zip(keys, table.column("requests"), strict=True))
    assert counted == user_requests_since(week[0])
    # the per-minute branch is switched off for a week: only the hourly one reads rows
    hourly_off = sql.replace("FROM fathom.speed_1h\n  WHERE", "FROM fathom.speed_1h\n  WHERE 0 AND")
    assert hourly_off != sql and run_query(store, hourly_off, ctx).rows == []


def test_reasoning_and_tool_call_panels_show_the_answer_start_and_validity(store: Store) -> None:
    # Probe traffic (the other tests read user traffic) of a reasoning model with tool calls.
    rows = []
    for i in range(40):
        record = Record(
            ts=NOW - timedelta(minutes=30) + timedelta(seconds=i), request_id=f"t{i}", route="chat",
            model="llama-8b", deployment="fp16", origin="probe", stream=True, status=200,
            ttft_ms=100.0, ttfr_ms=100.0, ttfa_ms=900.0, ttft_tool_ms=950.0, e2e_ms=1200.0,
            output_tokens=100, reasoning_tokens=60, reasoning_source="usage",
            tool_calls=1, tool_calls_invalid=int(i % 5 == 0),
        ).to_row()  # fmt: skip
        rows.append([record[c] for c in REQUEST_COLUMNS])
    store.insert_sync("fathom.requests", REQUEST_COLUMNS, rows)
    chosen = {"model": ["llama-8b"], "deployment": ["fp16"], "origin": ["probe"]}
    answer = panel_result(store, "fathom-speed.json", "Time to first answer token", chosen)
    assert answer.names[2:] == ("p50", "p95", "p99", "reasoning_p50")
    answered = [(r[2], r[5]) for r in answer.rows if r[2] is not None]
    # other minutes hold only the seeded, failing probes; percentiles are 5 % buckets' centres
    assert answered == [pytest.approx((900, 100), rel=HISTOGRAM_ERROR)]
    validity = panel_result(store, "fathom-speed.json", "Tool-call validity", chosen)
    rates = [
        v for v in validity.column("tool_call_validity") if v is not None and not math.isnan(v)
    ]
    assert rates == [pytest.approx(0.8)]  # one minute: 32 of its 40 tool calls parse
    table = panel_result(store, "fathom-speed.json", "Per deployment", {"origin": ["probe"]})
    rows_by = {(r[0], r[1]): dict(zip(table.names, r, strict=True)) for r in table.rows}
    row = rows_by.pop(("llama-8b", "fp16"))
    assert (row["ttfr_p50_ms"], row["ttfa_p50_ms"], row["ttft_tool_p50_ms"]) == pytest.approx(
        (100, 900, 950), rel=HISTOGRAM_ERROR
    )
    assert row["reasoning_share"] > 0 and row["tool_call_count"] == 40
    assert row["tool_call_validity"] == pytest.approx(0.8)
    # Deployments without tool calls show no validity rather than a perfect one.
    assert rows_by and all(
        r["tool_call_validity"] is None or math.isnan(r["tool_call_validity"])
        for r in rows_by.values()
    )
