"""The Grafana expander of tests/support/grafana_queries.py, pinned to the examples in the
ClickHouse plugin's docs and tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.grafana_queries import (
    ALL,
    MacroError,
    QueryContext,
    Variable,
    apply_conditional_all,
    expand,
    replace_variables,
)

FROM = datetime.fromtimestamp(1415792726, UTC)
TO = datetime.fromtimestamp(1447328726, UTC)
CTX = QueryContext(FROM, TO, timedelta(seconds=20))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # the examples of the plugin's query-editor documentation
        (
            "$__timeFilter(time)",
            "time >= toDateTime(1415792726) AND time <= toDateTime(1447328726)",
        ),
        (
            "$__timeFilter_ms(time)",
            "time >= fromUnixTimestamp64Milli(1415792726000) AND "
            "time <= fromUnixTimestamp64Milli(1447328726000)",
        ),
        ("$__fromTime", "toDateTime(1415792726)"),
        ("$__toTime_ms", "fromUnixTimestamp64Milli(1447328726000)"),
        ("$__interval_s", "20"),
        ("$__timeInterval(column)", "toStartOfInterval(toDateTime(column), INTERVAL 20 second)"),
        (
            "$__timeInterval_ms(column)",
            "toStartOfInterval(toDateTime64(column, 3), INTERVAL 20000 millisecond)",
        ),
        ("$__dateFilter(date)", "date >= toDate('2014-11-12') AND date <= toDate('2015-11-12')"),
        # the SDK parser: word boundary, arguments only right after the name, nesting kept
        ("$__fromTime > $__toTime", "toDateTime(1415792726) > toDateTime(1447328726)"),
        ("$__interval_s * (a + b)", "20 * (a + b)"),
        (
            "$__timeFilter(toDateTime(a, 'UTC') )",
            "toDateTime(a, 'UTC') >= toDateTime(1415792726) AND "
            "toDateTime(a, 'UTC') <= toDateTime(1447328726)",
        ),
        ("$__fromTimeEpoch", "$__fromTimeEpoch"),
    ],
)
def test_backend_macros_expand_as_documented(sql: str, expected: str) -> None:
    assert expand(sql, CTX) == expected


def test_a_missing_bracket_is_an_error() -> None:
    with pytest.raises(MacroError, match="missing close bracket"):
        expand("SELECT 1 WHERE $__timeFilter(ts", CTX)
    with pytest.raises(MacroError, match="expected 1 argument"):
        expand("SELECT 1 WHERE $__timeFilter(a, b)", CTX)


def test_conditional_all_follows_the_plugin() -> None:
    # the cases of the plugin's CHDatasource tests
    query = "select foo from table where $__conditionalAll(bar in ($bar), $bar)"
    all_selected = {"bar": Variable("bar", ALL, ["x", "y"])}
    assert apply_conditional_all(query, all_selected) == "select foo from table where 1=1"
    one = {"bar": Variable("bar", "x")}
    assert apply_conditional_all(query, one) == "select foo from table where bar in ($bar)"
    nested = "where $__conditionalAll(a in (f(1, 2)), ${a}) and $__conditionalAll(b = 1, $b)"
    both = {"a": Variable("a", [ALL]), "b": Variable("b", ["v"])}
    assert apply_conditional_all(nested, both) == "where 1=1 and b = 1"
    # a format in the second argument hides the variable: the plugin keeps the condition
    formatted = "where $__conditionalAll(a IN (${a:singlequote}), ${a:singlequote})"
    assert "1=1" not in apply_conditional_all(formatted, both)


def test_variables_format_like_grafana_with_the_plugin() -> None:
    variables = {
        "m": Variable("m", ["a", "b'c"]),
        "one": Variable("one", "solo"),
        "every": Variable("every", [ALL], ["x", "y"]),
        "custom": Variable("custom", [ALL], ["x"], all_value=".*"),
    }
    sql = "$m | ${m:singlequote} | $one | ${one:singlequote} | ${every} | $custom | $unknown"
    assert replace_variables(sql, variables) == (
        "'a','b'c' | 'a','b\\'c' | solo | 'solo' | 'x','y' | .* | $unknown"
    )


def test_full_pipeline_with_all_and_with_a_selection() -> None:
    sql = (
        "SELECT $__timeInterval(ts) AS time FROM t WHERE $__timeFilter(ts)"
        " AND $__conditionalAll(model IN (${model:singlequote}), $model)"
    )
    every = QueryContext(FROM, TO, timedelta(seconds=20), {"model": Variable("model", [ALL])})
    assert expand(sql, every).endswith("AND 1=1")
    two = QueryContext(FROM, TO, timedelta(seconds=20), {"model": Variable("model", ["a", "b"])})
    assert expand(sql, two).endswith("AND model IN ('a','b')")
    assert "$" not in expand(sql, two)
