"""How Grafana and grafana-clickhouse-datasource turn a panel's SQL into the SQL ClickHouse runs.

No Grafana runs here, so the dashboard tests and bench/dashboards.py expand queries with this
module, which follows the plugin's own code, step by step, in the order the plugin applies them:

1. `$__conditionalAll(condition, $var)` (plugin frontend, CHDatasource.applyConditionalAll):
   innermost-last scan, arguments split at top-level commas; `1=1` when the variable's current
   value is All (`$__all`) or empty, else the condition, untouched.
2. Template variables (Grafana's templateSrv.replace with the plugin's format function):
   `$var`, `${var}`, `${var:fmt}`, `[[var]]`; an array value becomes `'a','b'` when no format
   is given, a single value is inserted raw; `singlequote` quotes each value and escapes `'`
   as `\\'`; All expands to every option. Unknown names are left alone.
3. Backend macros (plugin pkg/macros with the SDK's sqlutil parser): `$__name` must end at a
   word boundary; arguments only when `(` follows at once, split at depth-1 commas and
   trimmed; a missing `)` is an error. `$__timeFilter(c)` -> `c >= toDateTime(from) AND
   c <= toDateTime(to)`, `$__timeFilter_ms` with fromUnixTimestamp64Milli, `$__fromTime`,
   `$__toTime` (and `_ms`), `$__timeInterval(c)` -> `toStartOfInterval(toDateTime(c),
   INTERVAL n second)` with n = max(interval, 1 s), `$__timeInterval_ms`, `$__interval_s`,
   `$__dateFilter`, `$__dateTimeFilter`/`$__dt`.

tests/test_dashboards_macros.py pins the expansions to the examples in the plugin's docs and
tests. `run_query` runs an expanded query on the real engine with the column names and types
the plugin would see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sidecar.store.client import Store

ALL = "$__all"


class MacroError(ValueError):
    """The plugin would refuse this query (bad macro arguments)."""


@dataclass(frozen=True)
class Variable:
    """A dashboard template variable as the frontend sees it."""

    name: str
    current: str | list[str]  # ['$__all'] (or '$__all') when All is selected
    options: Sequence[str] = ()
    all_value: str | None = None  # the variable's custom "All" value, if set


@dataclass(frozen=True)
class QueryContext:
    """What a query is run with: its time range, interval and the dashboard's variables."""

    start: datetime
    end: datetime
    interval: timedelta = timedelta(seconds=30)
    variables: Mapping[str, Variable] = field(default_factory=dict)


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL the plugin's backend sends to ClickHouse."""
    sql = apply_conditional_all(sql, ctx.variables)
    sql = replace_variables(sql, ctx.variables)
    return interpolate_macros(sql, ctx)


# ------------------------------------------------------------------ 1. $__conditionalAll

_CONDITIONAL = "$__conditionalAll("
_VAR_IN_ARG = re.compile(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+")


def apply_conditional_all(sql: str, variables: Mapping[str, Variable]) -> str:
    """CHDatasource.applyConditionalAll."""
    index = sql.rfind(_CONDITIONAL)
    while index != -1:
        params = _frontend_macro_args(sql, index + len(_CONDITIONAL) - 1)
        if len(params) != 2:
            return sql
        phrase = params[0]
        found = _VAR_IN_ARG.search(params[1].strip())
        if found and found.group(0) in variables:
            value = _js_to_string(variables[found.group(0)].current)
            if value in ("", ALL):
                phrase = "1=1"
        sql = sql.replace(f"{_CONDITIONAL}{params[0]},{params[1]})", phrase, 1)
        index = sql.rfind(_CONDITIONAL)
    return sql


def _frontend_macro_args(sql: str, at: int) -> list[str]:
    """CHDatasource.getMacroArgs: `at` is the index of the opening bracket."""
    text, args, depth, last = sql[at:], [], 0, 1
    for match in re.finditer(r"[(),]", text):
        char, end = match.group(0), match.end()
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 1:
            args.append(text[last : end - 1])
            last = end
        if depth == 0:
            args.append(text[last : end - 1])
            return args
    return []


def _js_to_string(value: str | list[str]) -> str:
    return ",".join(value) if isinstance(value, list) else value


# ------------------------------------------------------------------ 2. template variables

_TEMPLATE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)


def replace_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Grafana's templateSrv.replace with the plugin's `format` function."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        variable = variables.get(name)
        if variable is None:
            return match.group(0)
        value = _current_value(variable)
        if isinstance(value, str) and variable.all_value is not None and _is_all(variable):
            return value  # a custom All value goes in as written
        return _FORMATS.get(fmt or "", _plugin_format)(value)

    return _TEMPLATE.sub(one, sql)


def _is_all(variable: Variable) -> bool:
    current = variable.current
    return ALL in current if isinstance(current, list) else current == ALL


def _current_value(variable: Variable) -> str | list[str]:
    if not _is_all(variable):
        return variable.current
    if variable.all_value is not None:
        return variable.all_value
    return [option for option in variable.options if option != ALL]


def _plugin_format(value: str | list[str]) -> str:
    if isinstance(value, list):
        return "'" + "','".join(value) + "'"
    return value


def _singlequote(value: str | list[str]) -> str:
    values = value if isinstance(value, list) else [value]
    return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)


def _csv(value: str | list[str]) -> str:
    return ",".join(value) if isinstance(value, list) else value


_FORMATS: dict[str, Callable[[str | list[str]], str]] = {
    "": _plugin_format,
    "singlequote": _singlequote,
    "csv": _csv,
    "raw": _csv,
}


# ------------------------------------------------------------------ 3. backend macros


def interpolate_macros(sql: str, ctx: QueryContext) -> str:
    """sqlutil.Interpolate with the plugin's macro table."""
    for name, macro in _macros().items():
        for full, args in _macro_matches(sql, name):
            sql = sql.replace(full, macro(ctx, args))
    return sql


def _macro_matches(sql: str, name: str) -> list[tuple[str, list[str]]]:
    matches = []
    for found in re.finditer(rf"\$__{re.escape(name)}\b", sql):
        args, length = _backend_args(sql[found.end() :])
        if length < 0:
            raise MacroError(f"$__{name}: failed to parse macro arguments (missing close bracket?)")
        matches.append((sql[found.start() : found.end() + length], args))
    return matches


def _backend_args(text: str) -> tuple[list[str], int]:
    """sqlutil.parseArgs: a bracketed list right at the start, else no arguments."""
    if not text.startswith("("):
        return [], 0
    args: list[str] = []
    depth, current = 0, list[str]()
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth == 1:
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args, i + 1
        elif char == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    return [], -1


Macro = Callable[[QueryContext, list[str]], str]


def _one_arg(name: str, args: list[str], count: int = 1) -> None:
    if len(args) != count:
        raise MacroError(f"$__{name}: expected {count} argument, received {len(args)}")


def _seconds(t: datetime) -> str:
    return f"toDateTime({int(t.timestamp())})"


def _millis(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"


def _date(t: datetime) -> str:
    return f"toDate('{t.strftime('%Y-%m-%d')}')"


def _range(name: str, convert: Callable[[datetime], str]) -> Macro:
    def macro(ctx: QueryContext, args: list[str]) -> str:
        _one_arg(name, args)
        col = args[0]
        return f"{col} >= {convert(ctx.start)} AND {col} <= {convert(ctx.end)}"

    return macro


def _date_time_filter(ctx: QueryContext, args: list[str]) -> str:
    _one_arg("dateTimeFilter", args, 2)
    date, time = args
    return (
        f"({date} >= {_date(ctx.start)} AND {date} <= {_date(ctx.end)}) AND "
        f"({time} >= {_seconds(ctx.start)} AND {time} <= {_seconds(ctx.end)})"
    )


def _time_interval(ctx: QueryContext, args: list[str]) -> str:
    _one_arg("timeInterval", args)
    seconds = int(max(ctx.interval.total_seconds(), 1))
    return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {seconds} second)"


def _time_interval_ms(ctx: QueryContext, args: list[str]) -> str:
    _one_arg("timeInterval_ms", args)
    millis = int(max(ctx.interval.total_seconds() * 1000, 1))
    return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {millis} millisecond)"


def _macros() -> dict[str, Macro]:
    return {
        "fromTime": lambda ctx, _: _seconds(ctx.start),
        "toTime": lambda ctx, _: _seconds(ctx.end),
        "fromTime_ms": lambda ctx, _: _millis(ctx.start),
        "toTime_ms": lambda ctx, _: _millis(ctx.end),
        "timeFilter": _range("timeFilter", _seconds),
        "timeFilter_ms": _range("timeFilter_ms", _millis),
        "dateFilter": _range("dateFilter", _date),
        "dateTimeFilter": _date_time_filter,
        "dt": _date_time_filter,
        "timeInterval": _time_interval,
        "timeInterval_ms": _time_interval_ms,
        "interval_s": lambda ctx, _: str(int(max(ctx.interval.total_seconds(), 1))),
    }


# ------------------------------------------------------------------ running an expanded query


@dataclass(frozen=True)
class Result:
    """A query's rows with the column names and ClickHouse types the plugin would see."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def column(self, name: str) -> list[Any]:
        """The values of one column."""
        index = self.names.index(name)
        return [row[index] for row in self.rows]


def run_query(store: Store, sql: str, ctx: QueryContext) -> Result:
    """Expand the panel SQL as the plugin does and run it on the real engine."""
    expanded = expand(sql, ctx)
    assert "$" not in expanded, f"unexpanded macro or variable left in:\n{expanded}"
    described = store.query_sync(f"DESCRIBE ({expanded})")
    names = tuple(str(row[0]) for row in described)
    types = tuple(str(row[1]) for row in described)
    return Result(names, types, [tuple(r) for r in store.query_sync(expanded)])


def is_numeric(clickhouse_type: str) -> bool:
    """Int/UInt/Float/Decimal, possibly Nullable or LowCardinality."""
    inner = clickhouse_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    return inner.startswith(("Int", "UInt", "Float", "Decimal"))


def is_text(clickhouse_type: str) -> bool:
    """String, possibly Nullable or LowCardinality."""
    inner = clickhouse_type.removeprefix("LowCardinality(").removeprefix("Nullable(")
    return inner.startswith("String")
