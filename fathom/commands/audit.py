"""`fathom audit`: is the candidate deployment still the model of the reference?

Run before switching traffic to a new quantization: mirrors N prompts to both servers and
compares them three ways (probes.audit): paired canaries (exact McNemar), answer distributions
(MMD on embeddings, against the reference's own floor), token log-likelihoods where both
servers score a given text. Prints each comparison's statistic, p-value and verdict, and why a
comparison did not run. Exit status: 1 when the candidate diverges, 0 when it does not, 2 when
the audit cannot answer (a server unreachable, bad arguments, nothing compared).

Prompts: --prompts FILE, else the newest samples in --store, else the golden set's prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from fathom.commands.common import CommandError, open_store_setting

if TYPE_CHECKING:
    import aiohttp

    from probes.audit_client import Endpoint
    from probes.audit_report import AuditPrompt, AuditReport, AuditSettings
    from probes.golden import Canary

EXIT_SAME, EXIT_DIVERGES, EXIT_ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom audit`."""
    from probes.audit_report import COMPARISONS, AuditSettings

    d = AuditSettings()
    add = parser.add_argument
    add("--reference", required=True, help="base URL of the reference (the validated model)")
    add("--candidate", required=True, help="base URL of the candidate (the fast deployment)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts", type=Path, help="prompts file: JSON lines with 'prompt', "
                        "or plain text lines (default: the golden set's prompts)")  # fmt: skip
    source.add_argument("--store", help="mirror the newest sampled prompts of this store URL")
    add("-n", "--prompts-count", dest="n", type=int, default=20, help="prompts to mirror (20)")
    add("-k", type=int, default=d.k, help=f"answers per prompt from the candidate ({d.k}; "
        "twice as many from the reference)")  # fmt: skip
    add("--alpha", type=float, default=d.alpha, help=f"significance level ({d.alpha})")
    add("--canaries", type=int, default=40, help="canaries to send (40; 0: none)")
    add("--golden", type=Path, action="append", default=[],
        help="golden-set file (repeatable; default: the packaged set)")  # fmt: skip
    add("--model", default="", help="model at the reference (default: the one it serves)")
    add("--candidate-model", default="", help="model at the candidate (default: the same)")
    add("--reference-name", default="", help="deployment name of the reference (host:port)")
    add("--candidate-name", default="", help="deployment name of the candidate (host:port)")
    add("--only", default=",".join(COMPARISONS), help="comparisons to run (canary,mmd,logprob)")
    add("--temperature", type=float, default=d.temperature, help="of the MMD's answers")
    add("--max-tokens", type=int, default=d.max_tokens, help=f"per answer ({d.max_tokens})")
    add("--template", default=d.template, help="a prompt as text for the logprob comparison, "
        "'\\n' written as backslash-n (default '{prompt}\\n'; e.g. the model's chat "
        "template)")  # fmt: skip
    add("--logprob-pairs", type=int, default=d.logprob_pairs,
        help=f"answer pairs a prompt for the logprob comparison ({d.logprob_pairs})")  # fmt: skip
    add("--permutations", type=int, default=d.permutations, help="of the permutation tests")
    add("--seed", type=int, default=d.seed, help="seed of the request seeds and permutations")
    add("--concurrency", type=int, default=d.concurrency, help="requests in flight per side")
    add("--timeout", type=float, default=d.read_timeout_s, help="read timeout per request (s)")
    add("--record", action="store_true",
        help="write the results to fathom.quality (--store, else the `store` setting)")  # fmt: skip


def settings_from(args: argparse.Namespace) -> AuditSettings:
    """The audit's settings from the flags, checked."""
    from probes.audit_report import COMPARISONS, AuditSettings

    only = tuple(c.strip() for c in args.only.split(",") if c.strip())
    unknown = sorted(set(only) - set(COMPARISONS))
    if unknown or not only:
        raise CommandError(f"--only {args.only!r}: choose among {', '.join(COMPARISONS)}")
    checks = [(args.n >= 1, "-n must be >= 1"), (args.k >= 2, "-k must be >= 2"),
              (0 < args.alpha < 1, "--alpha must be in (0, 1)"),
              (args.canaries >= 0, "--canaries must be >= 0"),
              (args.permutations >= 100, "--permutations must be >= 100"),
              (args.logprob_pairs >= 1, "--logprob-pairs must be >= 1"),
              (args.concurrency >= 1, "--concurrency must be >= 1"),
              ("{prompt}" in args.template, "--template must contain {prompt}")]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise CommandError(message)
    return AuditSettings(
        k=args.k, alpha=args.alpha, temperature=args.temperature, max_tokens=args.max_tokens,
        template=args.template.replace("\\n", "\n"), logprob_pairs=args.logprob_pairs,
        permutations=args.permutations, seed=args.seed,
        concurrency=args.concurrency, read_timeout_s=args.timeout, comparisons=only,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Entry point of `fathom audit`."""
    from probes.audit_client import AuditError
    from probes.audit_prompts import PromptsError
    from probes.golden import GoldenError
    from probes.scorer import ScorerError
    from sidecar.config import ConfigError

    try:
        report = asyncio.run(_audit(args, settings_from(args)))
    except (CommandError, ConfigError, AuditError, PromptsError, GoldenError,
            ScorerError) as exc:  # fmt: skip
        print(f"fathom audit: {exc}", file=sys.stderr)
        return EXIT_ERROR
    render(report, sys.stdout)
    if not any(c.ran for c in report.comparisons):
        print("fathom audit: no comparison could run", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_DIVERGES if report.diverges else EXIT_SAME


def progress(line: str) -> None:
    """A progress line on stderr."""
    print(f"fathom audit: {line}", file=sys.stderr, flush=True)


async def _audit(args: argparse.Namespace, settings: AuditSettings) -> AuditReport:
    import aiohttp
    import numpy as np

    from probes.audit import Sides, run_audit
    from probes.audit_client import Caller
    from probes.scorer import load_scorer

    connector = aiohttp.TCPConnector(limit=4 * settings.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        ref, cand = await endpoints(session, args)
        progress(f"reference {ref.base} ({ref.model}), candidate {cand.base} ({cand.model})")
        golden = load_golden(args.golden)
        canaries = golden[: args.canaries] if "canary" in settings.comparisons else []
        prompts = await load_prompts(args, ref.model, golden)
        progress(f"{len(prompts)} prompts, {len(canaries)} canaries; comparisons: "
                 f"{', '.join(settings.comparisons)}")  # fmt: skip
        scorer = await asyncio.to_thread(load_scorer)
        ref_caller, cand_caller = (
            Caller(e, session, asyncio.Semaphore(settings.concurrency), settings.read_timeout_s)
            for e in (ref, cand)
        )
        rng = np.random.default_rng(settings.seed)
        sides = Sides(ref_caller, cand_caller, settings, rng, progress)
        try:
            report = await run_audit(sides, prompts, canaries, scorer)
        finally:
            await scorer.aclose()
    if args.record:
        await record(args, report)
    return report


async def endpoints(session: aiohttp.ClientSession, args: argparse.Namespace) -> list[Endpoint]:
    """Both sides, reachable, with the model each serves."""
    from probes.audit_client import Endpoint, base_url, served_models

    bases = [base_url(args.reference), base_url(args.candidate)]
    for role, base in zip(("reference", "candidate"), bases, strict=True):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CommandError(f"--{role} {base!r} is not an http(s) URL")
    served = await asyncio.gather(
        served_models(session, "reference", bases[0]), served_models(session, "candidate", bases[1])
    )
    model = pick_model("reference", bases[0], served[0], args.model)
    cand_model = pick_model("candidate", bases[1], served[1], args.candidate_model or model)
    names = [args.reference_name or urlsplit(bases[0]).netloc,
             args.candidate_name or urlsplit(bases[1]).netloc]  # fmt: skip
    if names[0] == names[1]:
        names = [f"{names[0]} (reference)", f"{names[1]} (candidate)"]
    return [Endpoint(names[0], bases[0], model), Endpoint(names[1], bases[1], cand_model)]


def pick_model(role: str, base: str, served: Sequence[str], wanted: str) -> str:
    """The model to ask a side for: the one wanted if it serves it, else the only one."""
    if wanted and (wanted in served or not served):
        return wanted
    if len(served) == 1 and not wanted:
        return served[0]
    if len(served) == 1 and role == "candidate":
        return served[0]  # the candidate names its model its own way
    flag = "--model" if role == "reference" else "--candidate-model"
    listed = ", ".join(served) or "none"
    why = f"does not serve {wanted!r}" if wanted else "serves several models"
    raise CommandError(f"the {role} at {base} {why} (it lists: {listed}): choose one with {flag}")


def load_golden(paths: Sequence[Path]) -> list[Canary]:
    """The golden set(s), in the order canary rounds take them (shuffled by id)."""
    from probes.golden import load_canaries
    from probes.rounds import canary_order

    return canary_order(load_canaries(paths, include_default=not paths))


async def load_prompts(
    args: argparse.Namespace, model: str, golden: Sequence[Canary]
) -> list[AuditPrompt]:
    """-n prompts: from --prompts, the samples in --store, or the golden set."""
    from probes.audit_prompts import golden_prompts, read_prompts, recent_prompts
    from sidecar.store.client import StoreError

    if args.prompts:
        return read_prompts(args.prompts)[: args.n]
    if not args.store:
        return golden_prompts(golden[: args.n])
    store = open_store_setting(args.store)
    try:
        prompts = await recent_prompts(store, model, args.n)
    except StoreError as exc:
        raise CommandError(f"cannot read samples from the store: {exc}") from exc
    finally:
        store.close()
    if not prompts:
        raise CommandError(f"the store holds no sampled prompts of model {model!r} to mirror")
    return prompts


async def record(args: argparse.Namespace, report: AuditReport) -> None:
    """Write the report's rows to fathom.quality."""
    from probes.audit_report import write_results
    from sidecar.store.client import StoreError

    store = open_store_setting(args.store)
    try:
        count = await write_results(store, report, datetime.now(UTC))
    except StoreError as exc:
        raise CommandError(
            f"cannot record the results (run `fathom schema apply`?): {exc}"
        ) from exc
    finally:
        store.close()
    progress(f"recorded {count} results in fathom.quality at {store.url.safe}")


def render(report: AuditReport, out: TextIO) -> None:
    """One block per comparison, then the verdict."""
    ref, cand = report.reference, report.candidate
    print(f"reference  {ref.name}  {ref.base}  model {ref.model}", file=out)
    print(f"candidate  {cand.name}  {cand.base}  model {cand.model}", file=out)
    print(f"alpha      {report.alpha:g}", file=out)
    rows = [("COMPARISON", "VERDICT", "STATISTIC", "P-VALUE", "N")]
    for c in report.comparisons:
        stat = f"{c.statistic:.4g}" if c.ran else "-"
        p = f"{c.p_value:.3g}" if c.ran else "-"
        rows.append((c.probe, c.verdict.upper() if c.diverges else c.verdict, stat, p, str(c.n)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(),
              file=out)  # fmt: skip
    for c in report.comparisons:
        print(f"{c.probe}: {c.summary}", file=out)
    hits = [c.probe for c in report.comparisons if c.diverges]
    if hits:
        print(f"verdict: the candidate DIVERGES from the reference ({', '.join(hits)})", file=out)
    elif any(c.ran for c in report.comparisons):
        print("verdict: no divergence found", file=out)
