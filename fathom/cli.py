"""The `fathom` command: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> one-line help; fathom.commands.<name> provides `add_arguments(parser)` and `run(args)`.
COMMANDS: dict[str, str] = {
    "serve": "run the measuring proxy in front of an OpenAI-compatible upstream",
    "simulate": "run an OpenAI-compatible upstream simulator",
    "schema": "apply or render the ClickHouse schema",
    "demo": "fast-but-degraded vs slow-and-sound, measured and scored",
    "check": "report quality regressions per deployment; exit 1 if any",
    "grafana": "push Fathom's data source, dashboards and alerts to Grafana",
    "report": "write the quality-against-speed report (HTML, md, JSON)",
    "reports": "serve a directory of reports over HTTP, read-only",
    "probe": "run a probe worker: score sampled answers, send canaries",
    "detect": "run one round of regression detection and record it",
    "audit": "compare a candidate deployment with its reference; exit 1 if it diverges",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand modules are imported only for the one being run."""
    parser = argparse.ArgumentParser(prog="fathom", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fathom` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    module = importlib.import_module(f"fathom.commands.{known.command}")
    command_parser = argparse.ArgumentParser(
        prog=f"fathom {known.command}", description=COMMANDS[known.command]
    )
    command_parser.add_argument("--log-level", default=known.log_level, help=argparse.SUPPRESS)
    module.add_arguments(command_parser)
    index = argv.index(known.command)
    args = command_parser.parse_args(argv[:index] + argv[index + 1 :])
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(module.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
