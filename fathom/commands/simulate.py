"""`fathom simulate`: an OpenAI-compatible upstream with exact timing, faults and quality knobs.

Serves POST /v1/chat/completions, /v1/completions, /v1/responses, the Anthropic-style
/v1/messages (streamed or not, on one schedule), /v1/embeddings, GET /v1/models and
GET /health for one model (flags) or several (--config YAML):

    seed: 7
    models:                       # a list of {name: ..., knobs} or a mapping name -> knobs
      fast-q2:
        ttft_ms: 40               # arrival -> first content event
        itl_ms: 8                 # between content events
        tokens: 64                # length of filler answers (content events)
        jitter_ms: 2              # each event late by uniform(0, jitter_ms), seeded
        answers: golden.jsonl     # {prompt, answer | correct: [..], incorrect: [..]} per line
        accuracy: 0.6             # chance a known prompt is answered correctly
        consistency: 0.5          # chance an ask gets the prompt's canonical answer
        degeneration: 0.1         # chance of a repetition loop or an empty answer
        error_rate: 0.01          # injected faults, drawn per request from the seed
        error_status: 503
        reset_rate: 0.0
        error_event_rate: 0.0
        stall_rate: 0.0
        stall_first_rate: 0.0
        stall_s: 1.0

Flags set the knobs of the single model when there is no --config, and defaults for the
models of the file when there is. Per-request headers (x-sim-*) override knobs: see
`fathom/sim/plan.py`. Tests use `run_simulator_process` or `running_simulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvloop
import yaml

from fathom import spawn
from fathom.sim import plan
from fathom.sim.models import KNOB_HELP, KNOBS, ModelSpec, SimConfigError, load_config, make_spec
from fathom.sim.server import Simulator, start
from sidecar.config import ConfigError, parse_hostport

ProcessConfig = str | os.PathLike[str] | Mapping[str, Any] | Sequence[str] | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom simulate`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        (__doc__ or "").split("\n", 2)[2] + "\n" + (plan.__doc__ or "").split("\n\n", 1)[1]
    )
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (port 0: any)")
    parser.add_argument("--config", help="YAML file listing the models (format below)")
    parser.add_argument("--seed", type=int, default=None, help="seed of all randomness (0)")
    parser.add_argument("--model", default=None, help="name of the single model ('sim')")
    for knob, default in KNOBS.items():
        if knob != "name":
            flag = "--" + knob.replace("_", "-")
            help_text = f"{KNOB_HELP[knob]} ({default!r})"
            parser.add_argument(flag, type=type(default), default=None, help=help_text)


def models_from(args: argparse.Namespace) -> tuple[list[ModelSpec], int]:
    """The models and the seed that the flags (and --config) describe."""
    flags = {k: getattr(args, k) for k in KNOBS if k != "name" and getattr(args, k) is not None}
    if not args.config:
        return [make_spec({"name": args.model or "sim", **flags}, Path.cwd())], args.seed or 0
    if args.model:
        raise SimConfigError("--model names the single model of a run without --config")
    specs, seed = load_config(Path(args.config), flags)
    return specs, args.seed if args.seed is not None else seed or 0


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    try:
        specs, seed = models_from(args)
        host, port = parse_hostport(args.listen, "--listen")
    except (SimConfigError, ConfigError) as exc:
        print(f"fathom simulate: {exc}", file=sys.stderr)
        return 2
    return uvloop.run(_serve(Simulator(specs, seed), host, port))


async def _serve(sim: Simulator, host: str, port: int) -> int:
    runner, url = await start(sim, host, port)
    # Tests and benches read this first line to learn the port (see fathom.spawn).
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


@contextlib.asynccontextmanager
async def running_simulator(
    models: Sequence[ModelSpec] = (ModelSpec(),), seed: int = 0, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve the simulator in this event loop on a free port; yield its base URL (no /v1)."""
    runner, url = await start(Simulator(models, seed), host, 0)
    try:
        yield url
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def run_simulator_process(
    config: ProcessConfig = None, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> Iterator[str]:
    """Run `fathom simulate` as a child process on a free port; yield its base URL (no /v1).

    `config` is a YAML path, a mapping in the YAML format, extra command-line arguments
    (e.g. ["--model", "m", "--ttft-ms", "5"]) or None (one model 'sim', default knobs).
    The child is terminated and waited for on exit, killed if it does not stop in time.
    """
    with tempfile.TemporaryDirectory(prefix="fathom-sim-") as tmp:
        argv = spawn.fathom_command(
            "simulate", "--listen", "127.0.0.1:0", *_config_args(config, Path(tmp))
        )
        child = spawn.start(argv, ["server"], env, timeout)
        try:
            yield child.addresses["server"]
        finally:
            child.stop(signal.SIGTERM, timeout)


def _config_args(config: ProcessConfig, tmp: Path) -> list[str]:
    if config is None:
        return []
    if isinstance(config, (str, os.PathLike)):
        return ["--config", os.fspath(config)]
    if isinstance(config, Mapping):
        path = tmp / "simulate.yaml"
        path.write_text(yaml.safe_dump(_absolute_answers(config)))
        return ["--config", str(path)]
    return list(config)


def _absolute_answers(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with answers paths made absolute, as it is written to another directory."""
    models = config.get("models") or []
    items = models.items() if isinstance(models, Mapping) else enumerate(models)
    fixed: Any = {} if isinstance(models, Mapping) else [None] * len(models)
    for key, knobs in items:
        knobs = dict(knobs or {})
        if knobs.get("answers"):
            knobs["answers"] = str(Path(knobs["answers"]).resolve())
        fixed[key] = knobs
    return {**config, "models": fixed}
