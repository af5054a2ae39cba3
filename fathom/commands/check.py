"""`fathom check`: is any deployment's answer quality regressing? A deploy gate for CI/CD.

Runs the regression tests of probes.detect over the last `--since` against the baseline before
it (nothing is written) and reads the regressions recorded in that window, prints one line per
(deployment, model, probe), and exits 1 when there is a regression, 0 when there is none, and
2 when the command cannot answer (bad arguments, store unreachable, schema missing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from fathom.commands.common import (
    CommandError,
    open_store_setting,
    parse_duration,
    parse_time,
    safe_url,
    schema_missing,
)

if TYPE_CHECKING:
    from probes.detect import DetectionSettings, Outcome, Series
    from sidecar.store.client import Store

EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom check`."""
    parser.add_argument("--store", help="store URL (default: the `store` setting, FATHOM_STORE)")
    parser.add_argument(
        "--since",
        type=parse_duration,
        default=timedelta(hours=1),
        help="the window to judge, e.g. 30m, 1h, 6h (default 1h)",
    )
    parser.add_argument(
        "--baseline",
        type=parse_duration,
        default=timedelta(days=7),
        help="how far before the window the baseline reaches (default 7d)",
    )
    parser.add_argument("--deployment", default="", help="only this deployment")
    parser.add_argument(
        "--at",
        type=parse_time,
        default=None,
        help="judge as of this ISO time instead of now (UTC if no zone)",
    )
    parser.add_argument(
        "--require-data",
        action="store_true",
        help="exit 1 when the window holds no quality results at all",
    )


@dataclass(frozen=True, slots=True)
class Line:
    """One (deployment, model, probe) of the report."""

    deployment: str
    model: str
    probe: str
    n_baseline: int
    n_current: int
    baseline: float  # mean score (or pass rate) of the baseline window
    current: float
    tests: str  # each test's statistic against its threshold
    regressions: tuple[str, ...]  # tests that found a regression ('recorded' for stored rows)

    @property
    def state(self) -> str:
        """'REGRESSION (tests)', 'ok', or 'too little data' when no test could run."""
        if self.regressions:
            return f"REGRESSION ({', '.join(self.regressions)})"
        return "ok" if self.tests != "-" else "too little data"


def summarise(
    judged: Sequence[tuple[Series, list[Outcome]]],
    recorded: Sequence[Sequence[Any]],
    audits: Sequence[Sequence[Any]] = (),
) -> list[Line]:
    """One line per series: live outcomes merged with the findings recorded in the window;
    then one per reference-audit comparison, its latest verdict."""
    stored: dict[tuple[str, str, str], set[str]] = {}
    for _, model, deployment, probe, test, *_ in recorded:
        stored.setdefault((model, deployment, probe), set()).add(f"{test}, recorded")
    lines = [_line(one, outcomes, stored.pop(one.key, set())) for one, outcomes in judged]
    for (model, deployment, probe), tests in stored.items():  # recorded, no data now
        nan = float("nan")
        lines.append(Line(deployment, model, probe, 0, 0, nan, nan, "-", tuple(sorted(tests))))
    lines += map(_audit_line, audits)
    return sorted(lines, key=lambda line: (line.deployment, line.model, line.probe))


def _line(one: Series, outcomes: list[Outcome], stored: set[str]) -> Line:
    model, deployment, probe = one.key
    live = tuple(o.test for o in outcomes if o.regression)
    hits = live + tuple(sorted(s for s in stored if s.split(",")[0] not in live))
    base, now = one.baseline_scores, one.current_scores
    return Line(
        deployment,
        model,
        probe,
        int(base.size),
        int(now.size),
        float(base.mean()) if base.size else float("nan"),
        float(now.mean()) if now.size else float("nan"),
        "  ".join(_describe(o) for o in outcomes) or "-",
        hits,
    )


def _describe(outcome: Outcome) -> str:
    if outcome.test == "cusum":
        return f"cusum {outcome.statistic:.1f}/{outcome.threshold:g}"
    if outcome.test == "sprt":
        return f"sprt {outcome.statistic:+.2f}/{outcome.threshold:.2f} ({outcome.current:.0%})"
    return f"{outcome.test} {outcome.statistic:+.2f}"


def render(lines: Sequence[Line], out: TextIO) -> None:
    """A plain aligned table, one row per series, grouped by deployment."""
    header = ("DEPLOYMENT", "MODEL", "PROBE", "N BASE", "N NOW", "BASE", "NOW", "TESTS", "STATE")
    rows = [header] + [
        (
            line.deployment,
            line.model,
            line.probe,
            str(line.n_baseline),
            str(line.n_current),
            f"{line.baseline:.3f}",
            f"{line.current:.3f}",
            line.tests,
            line.state,
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


async def judge(
    store: Store, now: datetime, settings: DetectionSettings, deployment: str
) -> list[Line]:
    """Run the tests (without writing) and read the findings recorded in the window."""
    from probes import detect_sql
    from probes.detect import evaluate, load_series

    series = await load_series(store, now, settings, deployment)
    judged = [(one, evaluate(one, settings)) for one in series]
    parameters = detect_sql.findings_parameters(now - settings.window, now, deployment)
    recorded = await store.query(detect_sql.FINDINGS, parameters)
    audits = await store.query(detect_sql.AUDITS, parameters)
    return summarise(judged, recorded, audits)


def _audit_line(row: Sequence[Any]) -> Line:
    """The latest verdict of a reference audit (`fathom audit --record`) in the window."""
    model, deployment, probe, item_id, audits, p_value, passed = row
    reference = item_id.removeprefix("vs:")
    diverged = ("audit",) if passed == 0 else ()
    nan = float("nan")
    tests = f"vs {reference} p={p_value:.3g}"
    return Line(deployment, model, probe, 0, int(audits), nan, p_value, tests, diverged)


def run(args: argparse.Namespace) -> int:
    """Entry point of `fathom check`."""
    try:
        return asyncio.run(_check(args, sys.stdout))
    except CommandError as exc:
        print(f"fathom check: {exc}", file=sys.stderr)
        return EXIT_ERROR


async def _check(args: argparse.Namespace, out: TextIO) -> int:
    from probes.detect import DetectionSettings

    now = args.at or datetime.now(UTC)
    settings = dataclasses.replace(DetectionSettings(), window=args.since, baseline=args.baseline)
    store = open_store_setting(args.store)
    try:
        lines = await _judge_or_explain(store, now, settings, args.deployment, args.store)
    finally:
        store.close()
    scope = f"deployment {args.deployment}" if args.deployment else "all deployments"
    print(
        f"quality of {scope}, {now - args.since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC, "
        f"against the {_human(args.baseline)} before",
        file=out,
    )
    if not lines:
        print("no quality results in the window: nothing to judge", file=out)
        return EXIT_REGRESSION if args.require_data else EXIT_OK
    render(lines, out)
    bad = sorted({line.deployment for line in lines if line.regressions})
    print(f"regression in: {', '.join(bad)}" if bad else "no regression", file=out)
    return EXIT_REGRESSION if bad else EXIT_OK


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def _judge_or_explain(
    store: Store, now: datetime, settings: DetectionSettings, deployment: str, url: str | None
) -> list[Line]:
    from sidecar.store.client import StoreError

    try:
        return await judge(store, now, settings, deployment)
    except StoreError as exc:
        hint = "; run `fathom schema apply` first" if schema_missing(exc) else ""
        where = safe_url(url) if url else "(the `store` setting)"
        raise CommandError(f"store {where} cannot be queried{hint}: {exc}") from exc
