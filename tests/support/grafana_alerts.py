"""Grafana's alerting, as far as Fathom's rules use it, run on the real engine: each rule's
data queries with the plugin's macros (tests/support/grafana_queries.py), then its reduce and
threshold expressions as Grafana's server-side expressions apply them."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sidecar.store.client import Store
from tests.support.grafana_queries import QueryContext, is_numeric, is_text, run_query

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
RULES_FILE = DASHBOARDS / "provisioning/alerting/fathom-rules.yaml"
EXPRESSIONS = "__expr__"
Labels = tuple[tuple[str, str], ...]


def rules() -> dict[str, dict[str, Any]]:
    """uid -> rule, from the provisioning file."""
    document = yaml.safe_load(RULES_FILE.read_text())
    assert document["apiVersion"] == 1
    return {rule["uid"]: rule for group in document["groups"] for rule in group["rules"]}


def query_instances(
    store: Store, query: dict[str, Any], now: datetime
) -> dict[Labels, float | None]:
    """A data query's result as alert instances: text columns are labels, one number the value."""
    span = query["relativeTimeRange"]
    model = query["model"]
    assert query["datasourceUid"] == model["datasource"]["uid"] == "fathom-clickhouse"
    assert model["format"] == 1, "alert queries return tables: one row per alert instance"
    ctx = QueryContext(
        now - timedelta(seconds=span["from"]),
        now - timedelta(seconds=span["to"]),
        timedelta(milliseconds=model["intervalMs"]),
    )
    result = run_query(store, model["rawSql"], ctx)
    numbers = [i for i, t in enumerate(result.types) if is_numeric(t)]
    texts = [i for i, t in enumerate(result.types) if is_text(t)]
    assert len(numbers) == 1, f"Grafana needs exactly one numeric column, got {result.types}"
    assert len(numbers) + len(texts) == len(result.types), result.types
    value = numbers[0]
    return {tuple((result.names[i], str(row[i])) for i in texts): row[value] for row in result.rows}


def reduce_last(
    values: dict[Labels, float | None], settings: dict[str, Any]
) -> dict[Labels, float]:
    """Reduce 'last' of a number is the number; dropNN drops NaN and null."""
    assert settings.get("mode") == "dropNN"
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(v)}


def threshold(values: dict[Labels, float], condition: dict[str, Any]) -> set[Labels]:
    """The instances whose value meets the threshold evaluator."""
    kind, params = condition["evaluator"]["type"], condition["evaluator"]["params"]
    tests = {
        "gt": lambda v: v > params[0],
        "lt": lambda v: v < params[0],
        "within_range": lambda v: params[0] < v < params[1],
        "outside_range": lambda v: v < params[0] or v > params[1],
    }
    return {labels for labels, v in values.items() if tests[kind](v)}


def firing(store: Store, rule: dict[str, Any], now: datetime) -> set[Labels]:
    """Evaluate a rule's queries and expressions; the instances its condition fires for."""
    frames: dict[str, Any] = {}
    for query in rule["data"]:
        model = query["model"]
        if query["datasourceUid"] != EXPRESSIONS:
            frames[query["refId"]] = query_instances(store, query, now)
        elif model["type"] == "reduce":
            assert model["reducer"] == "last"
            frames[query["refId"]] = reduce_last(frames[model["expression"]], model["settings"])
        else:
            assert model["type"] == "threshold" and len(model["conditions"]) == 1
            frames[query["refId"]] = threshold(frames[model["expression"]], model["conditions"][0])
    result: set[Labels] = frames[rule["condition"]]
    return result


def named(labels: set[Labels], *keys: str) -> set[tuple[str, ...]]:
    """Just the chosen label values of each instance."""
    return {tuple(dict(instance)[key] for key in keys) for instance in labels}
