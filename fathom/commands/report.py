"""`fathom report`: write the quality-against-speed report of the last `--since`.

Progress goes to stderr step by step; the document goes to `--out` (stdout with `-`).
Exit 0 when written (an empty store gives a report that says so), 2 when the command cannot
answer: bad arguments, store unreachable, schema missing, output not writable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fathom.commands.common import CommandError, open_store_setting, parse_duration, parse_time

if TYPE_CHECKING:
    from fathom.report.model import Report

EXIT_OK, EXIT_ERROR = 0, 2
FORMATS = ("html", "md", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom report`."""
    parser.add_argument(
        "--store", help="store URL (default: FATHOM_STORE, else chdb://./fathom-data)"
    )
    parser.add_argument(
        "--since", type=parse_duration, default=timedelta(days=7),
        help="the period to report on, e.g. 24h, 7d (default 7d); compared with the one before",
    )  # fmt: skip
    parser.add_argument(
        "--out", help="output file, '-' for stdout (default: report.html for html, else stdout); "
        "{date} in it becomes the report's end date, e.g. /reports/fathom-{date}.html",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=FORMATS, help="html, md or json (default: from --out's suffix, html)"
    )
    parser.add_argument(
        "--at", type=parse_time, default=None, help="report as of this ISO time (UTC if no zone)"
    )
    parser.add_argument(
        "--tenant", default=None, help="speed figures of this tenant's traffic only "
        "(the `tenant` column; '' = traffic no tenant named); default: every tenant",
    )  # fmt: skip
    parser.add_argument(
        "--min-samples", type=int, default=20,
        help="fewer samples than this in a period: the series is listed as not measured",
    )  # fmt: skip


def output_of(out: str | None, form: str | None) -> tuple[str, str]:
    """(format, destination) from --out and --format; '-' is stdout."""
    suffix = Path(out).suffix.lower() if out and out != "-" else ""
    form = form or {".md": "md", ".markdown": "md", ".json": "json"}.get(suffix, "html")
    return form, out or ("report.html" if form == "html" else "-")


def run(args: argparse.Namespace) -> int:
    """Entry point of `fathom report`."""
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"fathom report: [{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr)

    try:
        write_report(args, progress, sys.stdout, sys.stderr)
    except CommandError as exc:
        print(f"fathom report: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def write_report(
    args: argparse.Namespace, progress: Callable[[str], None], stdout: TextIO, stderr: TextIO
) -> None:
    """Build, render and write the report; then the summary, on stderr."""
    from fathom.report import render_html, render_json, render_markdown, summary_lines

    form, destination = output_of(args.out, args.format)
    now = args.at or datetime.now(UTC)
    destination = destination.replace("{date}", f"{now:%Y-%m-%d}")
    report = _build(args, now, progress)
    progress(f"rendering {form}")
    render = {"html": render_html, "md": render_markdown, "json": render_json}[form]
    text = render(report)
    if destination == "-":
        stdout.write(text)
        stdout.flush()
    else:
        # Whole or not at all: a server may be handing out the directory meanwhile.
        partial = Path(f"{destination}.partial")
        try:
            partial.write_text(text, encoding="utf-8")
            partial.replace(destination)
        except OSError as exc:
            raise CommandError(f"cannot write {destination}: {exc}") from exc
        progress(f"wrote {destination} ({len(text.encode()) / 1024:.0f} KiB)")
    print("\n".join(summary_lines(report)), file=stderr)


def _build(args: argparse.Namespace, now: datetime, progress: Callable[[str], None]) -> Report:
    from fathom.report.build import SchemaMissing, build_report_sync
    from fathom.report.model import ReportSettings
    from sidecar.store.client import StoreError

    settings = ReportSettings(min_samples=args.min_samples, tenant=args.tenant)
    store = open_store_setting(args.store)
    try:
        return build_report_sync(store, now, args.since, settings, progress)
    except SchemaMissing as exc:
        raise CommandError(str(exc)) from exc
    except StoreError as exc:
        raise CommandError(f"cannot read the store: {exc}") from exc
    finally:
        store.close()
