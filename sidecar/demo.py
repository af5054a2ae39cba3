"""`fathom demo`: why speed alone misleads, in about two minutes on the embedded store.

Two deployments of one model run side by side behind Fathom, half the traffic each: one is
fast and degraded (think an aggressive 4-bit quantization), the other slower and sound. Fathom
measures both, samples answers, scores them with the probes, and writes `report.html`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import uvloop
import yaml
from yarl import URL

from sidecar import spawn
from sidecar.app import Service, running
from sidecar.config import Settings, validate
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom demo`."""
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send traffic")
    parser.add_argument("--concurrency", type=int, default=8, help="simultaneous clients")
    parser.add_argument("--dir", default="fathom-demo", help="working folder (store, spool)")
    parser.add_argument("--out", default="report.html", help="where to write the report")


def run(args: argparse.Namespace) -> int:
    """Simulators up, Fathom in front, traffic, probes, summary, report; exit 0 when written."""
    workdir = Path(args.dir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # each demo starts from an empty store
    workdir.mkdir(parents=True)
    canaries = Path(__file__).resolve().parent.parent / "probes" / "golden" / "default.jsonl"
    children = [_simulator(workdir, name, knobs, canaries) for name, knobs in DEPLOYMENTS.items()]
    try:
        settings = _settings(workdir, [c.addresses["server"] for c in children])
        lines, html = uvloop.run(_measure(settings, args.seconds, args.concurrency))
    finally:
        for child in children:
            child.stop()
    out = Path(args.out).resolve()
    out.write_text(html)
    print("\n".join(lines))
    print(f"\nreport written to {out}")
    return 0


async def _measure(settings: Settings, seconds: float, concurrency: int) -> tuple[list[str], str]:
    async with running(settings) as service:
        _say(f"Fathom in front of {', '.join(DEPLOYMENTS)} (model {MODEL})")
        await _traffic(service, seconds, concurrency)
        await _wait_for_probes(service, timeout_s=60.0)
        return await _report(service)


def _simulator(workdir: Path, name: str, knobs: dict[str, float], answers: Path) -> spawn.Child:
    config = workdir / f"{name}.yaml"
    model = {"name": MODEL, "answers": str(answers), **knobs}
    config.write_text(yaml.safe_dump({"seed": len(name), "models": [model]}))
    argv = spawn.fathom_command("simulate", "--listen", "127.0.0.1:0", "--config", str(config))
    return spawn.start(argv, ["server"])


def _settings(workdir: Path, urls: list[str]) -> Settings:
    upstreams = tuple(Upstream(URL(url), name) for url, name in zip(urls, DEPLOYMENTS, strict=True))
    return validate(
        Settings(
            upstream=urls[0],
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            store=f"chdb://{workdir / 'store'}",
            spool_dir=str(workdir / "spool"),
            sample_rate=0.3,
            routes=(Route(MODEL, upstreams),),
            # Probes sized for a one-minute demo: every sample re-asked, canaries often.
            probes=True,
            probe_requests_per_min=6000.0,
            probe_tokens_per_min=2_000_000.0,
            probe_concurrency=8,
            probe_idle_s=1.0,
            canary_interval_s=10.0,
            canaries_per_round=20,
            detect_interval_s=15.0,
        )
    )


async def _traffic(service: Service, seconds: float, concurrency: int) -> None:
    """Send chat requests for `seconds`, streamed and not, showing progress."""
    url = service.addresses["proxy"] + "/v1/chat/completions"
    deadline = time.monotonic() + seconds
    sent = [0, 0]  # ok, failed

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.monotonic() < deadline:
            prompt = PROMPTS[i % len(PROMPTS)]
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
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


async def _report(service: Service) -> tuple[list[str], str]:
    from sidecar.report import build_report, render_html, summary_lines

    assert service.store is not None
    now = datetime.now(UTC)
    report = await build_report(service.store, now, timedelta(hours=1))
    return summary_lines(report), render_html(report)


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)
