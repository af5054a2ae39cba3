"""Reference audit: is the fast deployment still the model that was validated?

The same prompts go to a reference deployment (BF16, the last validated release) and to a
candidate (a new quantization, speculative decoding), and three comparisons judge the pair:

- `audit-canary`: canaries with known answers, greedy on both sides; the exact McNemar test on
  the canaries one side passes and the other fails (one-sided: the candidate loses canaries);
- `audit-mmd`: k answers per prompt from the candidate and 2k from the reference, at the
  operator's temperature, embedded; MMD² with a permutation p-value. The reference's two
  halves against each other are the floor: the candidate diverges only when its MMD² is above
  the floor's, and when the floor is itself an alarm (the reference differs from itself: drift
  within the audit, answers that depend on the batch) the verdict is 'inconclusive';
- `audit-logprob`: where both servers score a given text (`probes.audit_logprobs`), each side's
  answer, sampled at temperature 1, is scored by both; the per-token log-likelihood gap with a
  sign-flip p-value, top-1 agreement beside it. The floor: how far a server's echo scores of a
  text stray from the logprobs it generated it with (batch shapes differ), doubled, and at
  least `min_gap`.

Each comparison says whether it ran, and why not (probes.audit_report).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from probes.audit_client import Caller
from probes.audit_logprobs import PromptScores, Scored, mean_abs_difference
from probes.audit_report import (
    PROBES,
    AuditPrompt,
    AuditReport,
    AuditSettings,
    Comparison,
    not_run,
)
from probes.audit_stats import McNemar, MmdResult, SignFlip, mcnemar, mmd_test, sign_flip_test
from probes.consistency import Reply
from probes.factuality import canary_request, score_canary
from probes.golden import Canary
from probes.scorer import Scorer

T = TypeVar("T")
U = TypeVar("U")
Progress = Callable[[str], None]
CHECK_PROMPT = "The quick brown fox"  # what each side scores to show it can score at all
MISALIGNED = 0.5  # nats per token: echo scores this far from generation logprobs are wrong


@dataclass(slots=True)
class Sides:
    """Both callers of an audit, its settings, its generator of seeds, where progress goes."""

    reference: Caller
    candidate: Caller
    settings: AuditSettings
    rng: np.random.Generator
    progress: Progress

    def seeds(self, count: int) -> list[int]:
        """Fresh request seeds."""
        return [int(s) for s in self.rng.integers(0, 2**31 - 1, size=count)]

    def permutation_rng(self, stream: int) -> np.random.Generator:
        """The generator of one test's permutations (reproducible from the audit's seed)."""
        return np.random.default_rng((self.settings.seed, stream))


async def run_audit(
    sides: Sides, prompts: Sequence[AuditPrompt], canaries: Sequence[Canary], scorer: Scorer
) -> AuditReport:
    """Run the comparisons the settings ask for, one after the other."""
    wanted = sides.settings.comparisons
    out: list[Comparison] = []
    if "canary" in wanted:
        out.append(await compare_canaries(sides, canaries, scorer))
    if "mmd" in wanted:
        out.append(await compare_mmd(sides, prompts, scorer))
    if "logprob" in wanted:
        out.append(await compare_logprobs(sides, prompts))
    ref, cand = sides.reference.endpoint, sides.candidate.endpoint
    return AuditReport(ref, cand, sides.settings.alpha, tuple(out))


async def each(
    items: Sequence[T], one: Callable[[T], Awaitable[U]], progress: Progress, what: str
) -> list[U]:
    """`one(item)` for every item concurrently (the callers bound what is in flight), with a
    progress line about every tenth."""
    done = 0
    step = max(1, len(items) // 10)

    async def counted(item: T) -> U:
        nonlocal done
        result = await one(item)
        done += 1
        if done % step == 0 or done == len(items):
            progress(f"{what}: {done}/{len(items)}")
        return result

    return list(await asyncio.gather(*(counted(item) for item in items)))


# ---------------------------------------------------------------------------- verdicts


def canary_verdict(test: McNemar, alpha: float) -> str:
    """'diverges' when the candidate loses significantly more canaries than it gains."""
    return "diverges" if test.p_value < alpha else "same"


def mmd_verdict(test: MmdResult, floor: MmdResult, alpha: float) -> str:
    """'diverges' when the candidate is significantly further from the reference than the
    reference from itself; 'inconclusive' when the reference also differs from itself."""
    measured = floor.prompts > 0  # else too few answers to split: no floor beyond 0
    above = test.p_value < alpha and test.mmd2 > max(floor.mmd2 if measured else 0.0, 0.0)
    if not above:
        return "same"
    return "inconclusive" if measured and floor.p_value < alpha else "diverges"


def logprob_verdict(test: SignFlip, floor: float, alpha: float) -> str:
    """'diverges' when the gap is significantly above 0 and above the scoring noise floor."""
    return "diverges" if test.p_value < alpha and test.mean > floor else "same"


# ---------------------------------------------------------------------------- canaries


async def compare_canaries(sides: Sides, canaries: Sequence[Canary], scorer: Scorer) -> Comparison:
    """Greedy canaries on both sides, scored, then the exact McNemar test on the pairs."""
    if not canaries:
        return not_run("canary", "no canaries to send")
    s = sides.settings

    async def one(canary: Canary) -> tuple[Reply, Reply]:
        ref, cand = sides.reference, sides.candidate
        return await asyncio.gather(
            ref.chat(canary_messages(canary, ref), 0.0, s.canary_max_tokens, None),
            cand.chat(canary_messages(canary, cand), 0.0, s.canary_max_tokens, None),
        )

    replies = await each(canaries, one, sides.progress, "canaries")
    paired = [(c, r, d) for c, (r, d) in zip(canaries, replies, strict=True)
              if not r.error and not d.error]  # fmt: skip
    if not paired:
        return not_run("canary", f"no canary was answered by both sides ({_errors(replies)})")
    scored = await asyncio.gather(*(
        score_canary(scorer, canary, reply.text)
        for canary, ref, cand in paired for reply in (ref, cand)
    ))  # fmt: skip
    passed = np.array([bool(r.passed) for r in scored]).reshape(-1, 2)
    test = mcnemar(passed[:, 0], passed[:, 1])
    lost = [c.id for (c, _, _), (a, b) in zip(paired, passed, strict=True) if a and not b]
    summary = (
        f"{test.lost} lost, {test.gained} gained of {test.n} canaries (passed: reference "
        f"{int(passed[:, 0].sum())}, candidate {int(passed[:, 1].sum())}); "
        f"exact McNemar p={test.p_value:.3g}"
    )
    detail = {"lost": test.lost, "gained": test.gained, "lost_ids": lost[:20],
              "reference_passed": int(passed[:, 0].sum()),
              "candidate_passed": int(passed[:, 1].sum()),
              "unanswered": len(canaries) - len(paired)}  # fmt: skip
    verdict = canary_verdict(test, s.alpha)
    return Comparison(PROBES["canary"], verdict, float(test.lost - test.gained), test.p_value,
                      test.n, summary, "mcnemar-exact/v1", detail)  # fmt: skip


def canary_messages(canary: Canary, side: Caller) -> list[dict[str, Any]]:
    """The messages a canary is sent as (the probe worker's: probes.factuality)."""
    messages: list[dict[str, Any]] = canary_request(canary, side.endpoint.model)["messages"]
    return messages


def _errors(pairs: Sequence[tuple[Reply, Reply]]) -> str:
    found = sorted({r.error for pair in pairs for r in pair if r.error})
    return "errors: " + ", ".join(found) if found else "no errors"


# ---------------------------------------------------------------------------- MMD


async def compare_mmd(sides: Sides, prompts: Sequence[AuditPrompt], scorer: Scorer) -> Comparison:
    """k answers from the candidate, 2k from the reference, per prompt; MMD² against the floor."""
    s = sides.settings
    if not prompts:
        return not_run("mmd", "no prompts to mirror")
    plan = [(p, sides.seeds(2 * s.k), sides.seeds(s.k)) for p in prompts]

    async def one(item: tuple[AuditPrompt, list[int], list[int]]) -> list[list[Reply]]:
        prompt, ref_seeds, cand_seeds = item
        asks = [(side, seed) for side, seeds in ((sides.reference, ref_seeds),
                (sides.candidate, cand_seeds)) for seed in seeds]  # fmt: skip
        replies = await asyncio.gather(*(
            side.chat(prompt.messages, s.temperature, s.max_tokens, seed) for side, seed in asks
        ))  # fmt: skip
        return [list(replies[: 2 * s.k]), list(replies[2 * s.k :])]

    answered = await each(plan, one, sides.progress, "mmd prompts")
    main, floor = [], []
    for ref, cand in answered:
        ref_texts = [r.text for r in ref if not r.error]
        cand_texts = [r.text for r in cand if not r.error]
        vectors = (await scorer.embed([*ref_texts, *cand_texts])).astype(np.float64)
        x, y = vectors[: len(ref_texts)], vectors[len(ref_texts) :]
        main.append((x, y))
        half = len(x) // 2
        floor.append((x[:half], x[half:]))
    # Off the loop: thousands of permutations per prompt take a moment.
    test, base = await asyncio.gather(
        asyncio.to_thread(mmd_test, main, s.permutations, sides.permutation_rng(1)),
        asyncio.to_thread(mmd_test, floor, s.permutations, sides.permutation_rng(2)),
    )
    if test.prompts == 0:
        return not_run("mmd", "no prompt got two answers from each side")
    verdict = mmd_verdict(test, base, s.alpha)
    summary = (
        f"MMD² {test.mmd2:.4f} against the reference's own floor {base.mmd2:.4f} "
        f"(floor p={base.p_value:.3g}); permutation p={test.p_value:.3g}, "
        f"{test.prompts} prompts x {s.k} answers"
    )
    if verdict == "inconclusive":
        summary += "; the reference differs from itself, so the floor is no floor"
    detail = {"floor_mmd2": base.mmd2, "floor_p_value": base.p_value, "k": s.k,
              "bandwidth": test.bandwidth, "temperature": s.temperature,
              "permutations": s.permutations}  # fmt: skip
    return Comparison(PROBES["mmd"], verdict, test.mmd2, test.p_value, test.prompts, summary,
                      f"mmd-rbf-perm/v1/{scorer.name}", detail)  # fmt: skip


# ---------------------------------------------------------------------------- logprobs


async def scoring_floor(sides: Sides) -> tuple[float, str]:
    """(the noise between a side's echo scores and its generation logprobs, '') or (NaN, why
    the logprob comparison cannot run)."""
    s = sides.settings
    pairs: list[tuple[Scored, Scored]] = []
    prompt = s.as_text(CHECK_PROMPT)
    for role, side in (("reference", sides.reference), ("candidate", sides.candidate)):
        text, generated, error = await side.complete(prompt, 0.0, 16, 0, s.top_logprobs)
        if error or generated is None:
            why = error or "no logprobs"
            return math.nan, f"the {role} returns no completion logprobs ({why})"
        echoed, error = await side.score(prompt, text, s.top_logprobs)
        if echoed is None:
            return math.nan, (
                f"the {role} cannot score a given text ({error}): scoring needs /v1/completions "
                "with echo and logprobs (vLLM, llama-cpp-python's server); llama.cpp's own "
                "server and OpenAI return logprobs of generated tokens only"
            )
        pairs.append((generated, echoed))
    noise = mean_abs_difference(pairs)
    if noise > MISALIGNED:
        return math.nan, (
            f"echo scores stray {noise:.2f} nats/token from the logprobs of the same tokens "
            "when generated: the server misaligns echoed logprobs (llama-cpp-python does when "
            "the prompt does not start with the model's BOS token: give a --template that "
            "does, such as the model's chat template)"
        )
    return (0.0 if math.isnan(noise) else noise), ""


async def compare_logprobs(sides: Sides, prompts: Sequence[AuditPrompt]) -> Comparison:
    """Each side's sampled answer scored by both sides; sign-flip test of the gaps."""
    s = sides.settings
    if not prompts:
        return not_run("logprob", "no prompts to mirror")
    noise, why = await scoring_floor(sides)
    if why:
        return not_run("logprob", why)
    # One unit per answer pair: under the null, each pair's two answers are exchangeable.
    units = []
    for prompt in prompts:
        for _ in range(s.logprob_pairs):
            ref_seed, cand_seed = sides.seeds(2)
            units.append((prompt, ref_seed, cand_seed))

    async def one(unit: tuple[AuditPrompt, int, int]) -> PromptScores | None:
        prompt, ref_seed, cand_seed = unit
        text = s.as_text(prompt.text)
        return await score_prompt(sides, text, ref_seed, cand_seed)

    scored = [p for p in await each(units, one, sides.progress, "logprob pairs") if p]
    if not scored:
        return not_run("logprob", "no prompt was answered and scored by both sides")
    d = np.array([p.divergence for p in scored])
    test = await asyncio.to_thread(sign_flip_test, d, s.permutations, sides.permutation_rng(3))
    floor = max(s.min_gap, 2.0 * noise)
    agree, positions = map(sum, zip(*(p.top1_agreement() for p in scored), strict=True))
    agreement = agree / positions if positions else math.nan
    verdict = logprob_verdict(test, floor, s.alpha)
    summary = (
        f"gap {test.mean:+.4f} nats/token (floor {floor:.4f}), top-1 agreement "
        f"{agreement:.1%} of {positions} tokens; sign-flip p={test.p_value:.3g}, "
        f"{test.n} answer pairs of {len(prompts)} prompts"
    )
    detail = {"floor": floor, "scoring_noise": noise, "top1_agreement": agreement,
              "tokens": positions, "pairs": test.n, "unscored": len(units) - len(scored),
              "temperature": s.logprob_temperature}  # fmt: skip
    return Comparison(PROBES["logprob"], verdict, test.mean, test.p_value, len(prompts), summary,
                      "logprob-gap-signflip/v1", detail)  # fmt: skip


async def score_prompt(
    sides: Sides, text: str, ref_seed: int, cand_seed: int
) -> PromptScores | None:
    """Both sides' answers to `text`, each scored by both sides; None if any step failed."""
    s = sides.settings
    ref, cand = sides.reference, sides.candidate
    (ref_answer, _, ref_error), (cand_answer, _, cand_error) = await asyncio.gather(
        ref.complete(text, s.logprob_temperature, s.max_tokens, ref_seed, None),
        cand.complete(text, s.logprob_temperature, s.max_tokens, cand_seed, None),
    )
    if ref_error or cand_error:
        return None
    scores = await asyncio.gather(
        cand.score(text, cand_answer, s.top_logprobs),
        ref.score(text, cand_answer, s.top_logprobs),
        ref.score(text, ref_answer, s.top_logprobs),
        cand.score(text, ref_answer, s.top_logprobs),
    )
    found = [scored for scored, _ in scores]
    if any(f is None for f in found):
        return None
    a, b, c, d = (f for f in found if f is not None)
    return PromptScores(a, b, c, d)
